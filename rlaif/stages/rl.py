"""The rl stage: policy-gradient RL on the round's rollouts, maximising reward - beta KL(pi || pi_ref) (Ziegler
et al., arXiv:1909.08593), on the shared trainer loop. A run picks it instead of DPO:

    [round]
    stages = ["generate", "rl", "merge"]

- Rollouts are the generate stage's k samples per prompt (`generate.samples_per_prompt`), their exact token
  ids included, so vLLM serves RL on a GPU with no new code path. Their log-probs under the round's starting
  model are recomputed here with the training model (adapter off) rather than taken from the generator:
  the two agree to about 1e-5 on the transformers backend, but vLLM's kernels (bf16 on a GPU) differ more, and
  the importance ratios must start at exactly 1.
- Rewards: the constitution's judge scored pointwise (`rl.reward = "judge"`: the log-odds of a principle's
  check, drawn per prompt, seeded: direct RLAIF), a Bradley-Terry reward model (`"reward_model"`), or a weighted
  sum (`"mix"`); minus an optional length penalty per token, and `rl.missing_eos_penalty` for a rollout cut by
  the length limit before it finished (TRL's); whitened over the round and optionally clipped.
- Algorithms (`rl.algorithm`): `rloo` (leave-one-out baseline over a prompt's k samples, arXiv:2402.14740),
  `grpo` (group-normalised advantages, arXiv:2402.03300), both with PPO's clipped ratio over the inner epochs
  (`rl.epochs`); `ppo` (Schulman et al., arXiv:1707.06347) with a value head on the policy's final hidden
  states as critic and GAE over the response tokens.
- The KL (`rl.kl`): `"reward"`, a per-token k1 penalty -beta (log pi - log pi_ref) in the reward (PPO style),
  or `"loss"`, beta times the k3 estimate as a loss term (GRPO style); beta fixed, or adapted towards
  `rl.target_kl` (Ziegler et al.'s controller). The reference is the round's starting model: the policy with
  its LoRA adapter switched off, no second copy in memory. The KL reached is logged per step and per round.

Reward hacking shows in the figures: mean reward, mean response length, the reward-length correlation and
the KL, per round (`rlaif report`).

Writes adapter/ and rl_log.jsonl (one record per optimizer step); the merge stage folds the adapter in.

    rlaif run runs/rl --rounds 2
"""

from __future__ import annotations

import json
import random
import time

from rlaif.checks import ConfigError
from rlaif.config.rl import RLConfig
from rlaif.data import SCHEMA_VERSION, read_jsonl, write_jsonl
from rlaif.judge import build_judge
from rlaif.launch import is_main
from rlaif.layout import portable
from rlaif.logprobs import head_alone
from rlaif.privacy import stage_privacy
from rlaif.reward.fit import pearson
from rlaif.reward.format import resolve_reward_model
from rlaif.reward.model import RewardModel
from rlaif.rlhb import BehaviourPredictor, Discriminator
from rlaif.stages.dpo import check_lora_target
from rlaif.stages.judge import applicable_kinds, judge_model
from rlaif.trainer import train
from rlaif.verdicts import sigmoid

PRODUCES_MODEL = False
LOWER_ON_OOM = "rl.batch_size (raise rl.grad_accum to keep the effective batch), rl.max_length or rl.lora_r"


def outputs(figures: dict) -> list[str]:
    return ["rl_log.jsonl", "adapter"] if figures.get("steps") else ["rl_log.jsonl"]


def validate(run) -> None:

    cfg = run.config.rl
    check_lora_target(run.initial, cfg.lora_target, "rl.lora_target")
    if run.config.privacy.active and cfg.reward in ("reward_model", "mix"):
        folder = resolve_reward_model(cfg.reward_model)
        inside = str(folder.resolve()).startswith(str(run.dir.resolve()) + "/")
        spec = json.loads((folder / "reward.json").read_text()) if (folder / "reward.json").is_file() else {}
        if inside and "privacy" not in spec.get("figures", {}):
            raise ConfigError(
                "rl.reward_model",
                f"{folder} was trained in this run on its private data without differential privacy: every RL "
                "gradient would depend on all of that data. Train it with privacy.epsilon set (the reward_model "
                "stage), or use one trained on public data",
            )
    if run.config.privacy.active and cfg.target_kl:
        raise ConfigError(
            "rl.target_kl",
            "adapts beta to the KL measured over every rollout, which would carry all the prompts into each step "
            "under differential privacy: use a fixed rl.beta (rl.target_kl = 0)",
        )
    if cfg.reward in ("discriminator", "behaviour"):
        for k in (1, 2):
            names = run.config.round.stages_for(k)
            if "rl" in names and (
                "discriminator" not in names or names.index("discriminator") > names.index("rl")
            ):
                raise ConfigError(
                    "rl.reward",
                    f'"{cfg.reward}" reads the round\'s discriminator stage: put "discriminator" before "rl" in '
                    'round.stages, e.g. ["generate", "discriminator", "rl", "merge"]',
                )
        want = "predictor" if cfg.reward == "behaviour" else "adversarial"
        if run.config.rlhb.mode != want:
            raise ConfigError("rlhb.mode", f'rl.reward = "{cfg.reward}" needs rlhb.mode = "{want}"')
    if cfg.reward in ("reward_model", "mix"):
        resolve_reward_model(cfg.reward_model, "rl.reward_model")


# -- rewards --------------------------------------------------------------------------------------------


def rewards(round_, rollouts: list[dict]) -> list[float]:
    """The raw reward of each rollout: the judge's pointwise log-odds under the principle drawn for its prompt,
    the reward model's score, or their weighted sum."""

    cfg = round_.config.rl
    if cfg.reward in ("discriminator", "behaviour"):  # RLHB / RLHB-C (rlaif/rlhb.py)
        queries = {p["id"]: p.get("query", p["prompt"]) for p in round_.run.prompts}
        if cfg.reward == "behaviour":
            predictor = BehaviourPredictor(round_.dir / "predictor", round_.pool)
            return predictor.rewards(
                [(queries[x["prompt_id"]], x["text"]) for x in rollouts], round_.progress
            )
        desired = round_.config.rlhb.desired
        d = Discriminator(round_.dir / "discriminator", round_.pool)
        return d.logits([(queries[x["prompt_id"]], x["text"], desired) for x in rollouts], round_.progress)
    total = [0.0] * len(rollouts)
    if cfg.reward in ("judge", "mix"):
        judge = build_judge(judge_model(round_), round_.config.judge, round_.run.constitution, round_.pool)
        c = round_.run.constitution
        prompts = list(dict.fromkeys(x["prompt_id"] for x in rollouts))
        first = {x["prompt_id"]: x["prompt"] for x in reversed(rollouts)}
        kind = dict(
            zip(
                prompts,
                (k for _, k in applicable_kinds(round_, [first[p] for p in prompts], prompts)),
                strict=True,
            )
        )
        items, safety = [], []
        for x in rollouts:
            rng = random.Random(f"{round_.seed}:rl:{round_.k}:{x['prompt_id']}")
            (principle,) = c.sample_k(rng, 1, kind[x["prompt_id"]])
            items.append((f"User: {x['prompt']}", x["text"], principle))
            if cfg.safety_gate and principle.kind != "harmlessness":
                (guard,) = c.sample_k(
                    random.Random(f"{round_.seed}:rl-gate:{round_.k}:{x['prompt_id']}"), 1, "harmlessness"
                )
                safety.append((len(items) - 1, (items[-1][0], x["text"], guard)))
        scores = judge.scores(items, round_.progress)
        if safety:
            for (i, _), s in zip(
                safety, judge.scores([it for _, it in safety], round_.progress), strict=True
            ):
                if sigmoid(s) < cfg.safety_gate:  # unsafe: the safety reward replaces the helpfulness one
                    scores[i] = s
        w = cfg.judge_weight if cfg.reward == "mix" else 1.0
        total = [t + w * s for t, s in zip(total, scores, strict=True)]
    if cfg.reward in ("reward_model", "mix"):
        rm = RewardModel(cfg.reward_model, round_.pool)
        w = cfg.rm_weight if cfg.reward == "mix" else 1.0
        got = rm.rewards([(x["prompt"], x["text"], None) for x in rollouts], round_.progress)
        total = [t + w * s for t, s in zip(total, got, strict=True)]
    return total


def shape(
    raw: list[float],
    tokens: list[int],
    cfg: RLConfig,
    whiten: bool = True,
    finished: list[bool] | None = None,
) -> list[float]:
    """Length penalty, the penalty for a rollout that did not finish (`finished`, one flag per rollout; None:
    all finished), whitening over the round, clipping (pure)."""
    import torch

    from rlaif.losses import whiten as whiten_

    x = torch.tensor(raw, dtype=torch.float64) - cfg.length_penalty * torch.tensor(
        tokens, dtype=torch.float64
    )
    if finished is not None and cfg.missing_eos_penalty:
        x = x - cfg.missing_eos_penalty * (~torch.tensor(finished, dtype=torch.bool)).to(torch.float64)
    if cfg.whiten_rewards and whiten:
        x = whiten_(x)
    if cfg.reward_clip:
        x = x.clamp(-cfg.reward_clip, cfg.reward_clip)
    return x.tolist()


# -- the task on the trainer loop -----------------------------------------------------------------------


def response_logps(model, rows: list[tuple[list[int], int]], pad_id: int, hidden: bool = False):
    """Per-token log-probs of each row's response (a list of (T_i,) tensors), in one forward pass over
    right-padded rows; with `hidden`, also the final hidden states at the positions that predict them. The LM head
    runs at those positions alone where it gives the model's logits (rlaif/logprobs.py)."""
    import torch

    device = next(model.parameters()).device
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for k, (seq, _) in enumerate(rows):
        ids[k, : len(seq)] = torch.tensor(seq)
        attn[k, : len(seq)] = 1
    ids, attn = ids.to(device), attn.to(device)
    if head_alone(model, ids, attn, min(start for _, start in rows)):  # the head at the response tokens only
        last = model.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state
        head = model.get_output_embeddings()

        def logits_at(k, pos):
            return head(last[k, pos])
    else:
        out = model(input_ids=ids, attention_mask=attn, output_hidden_states=hidden)
        last = out.hidden_states[-1] if hidden else None

        def logits_at(k, pos):
            return out.logits[k, pos]

    logp, states = [], []
    for k, (seq, start) in enumerate(rows):
        pos = torch.arange(start - 1, len(seq) - 1, device=device)  # position t predicts token t + 1
        lp = torch.log_softmax(logits_at(k, pos).float(), dim=-1)
        logp.append(lp.gather(-1, ids[k, start : len(seq)][:, None]).squeeze(-1))
        if hidden:
            states.append(last[k, pos])
    return (logp, states) if hidden else logp


class RLTask:
    """Policy-gradient RL as a trainer task: one example per rollout, advantages fixed when the round's
    rollouts are prepared, the clipped surrogate per token averaged per response."""

    count_key = "responses"
    stat_keys = ("pg_loss", "kl", "advantage", "ratio", "value_loss")
    diverge_keys = "rl.learning_rate (lower), rl.beta or rl.max_grad_norm"
    modules_to_save = None

    def __init__(
        self,
        tokenizer,
        config: RLConfig,
        groups: list[list[int]],
        shaped: list[float],
        off_policy: list[bool] | None = None,
    ):
        self.tok, self.config, self.groups, self.shaped = tokenizer, config, groups, shaped
        self.off_policy = off_policy or [False] * len(shaped)  # per rollout: a guided response, not sampled
        self.beta = config.beta
        self.step_kl: list[float] = []

    def encode(self, x: dict):
        messages = [{"role": "user", "content": x["prompt"]}]
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = self.tok(text, add_special_tokens=False).input_ids
        response = list(x["token_ids"])[: self.config.max_length - 1]
        prompt = prompt[-(self.config.max_length - len(response)) :]
        return (prompt + response, len(prompt))

    def rows(self, e) -> list[int]:
        return [len(e[0])]

    @staticmethod
    def unit_key(x: dict) -> str:
        """Under differential privacy a prompt's rollouts are one unit: they share RLOO's / GRPO's baseline."""
        return x["prompt_id"]

    def attach(self, model) -> None:
        pass

    def setup(self, model) -> None:
        import torch

        if self.config.algorithm == "ppo":  # the critic: zero at the start, trained beside the adapter
            head = torch.nn.Linear(model.config.hidden_size, 1).to(next(model.parameters()).device)
            with torch.no_grad():
                head.weight.zero_()
                head.bias.zero_()
            model.get_base_model().value_head = head

    def prepare(self, model, data, progress) -> None:
        """The reference log-probs of every rollout (the adapter off: the round's starting model, which also sampled
        them, so they are PPO's "old" policy too), the critic's starting values, and the advantages."""
        import torch

        from rlaif.losses import grpo_advantages, rloo_advantages

        progress.stage("rollout log-probs", len(data))
        self.ref_logps, self.ref_values = [], []
        with torch.no_grad(), model.disable_adapter():  # not inference_mode: FSDP reuses its buffers
            for s in range(0, len(data), self.config.batch_size):
                batch = data[s : s + self.config.batch_size]
                self.ref_logps.extend(lp.cpu() for lp in response_logps(model, batch, self.tok.pad_token_id))
                progress.advance(len(batch))
        # the critic starts at zero: the starting values are 0
        self.ref_values = [torch.zeros_like(lp) for lp in self.ref_logps]
        self.advantage = [0.0] * len(data)
        if self.config.algorithm in ("rloo", "grpo"):
            fn = rloo_advantages if self.config.algorithm == "rloo" else grpo_advantages
            for group in self.groups:
                if len(group) < 2:
                    continue
                adv = fn(torch.tensor([[self.shaped[i] for i in group]], dtype=torch.float64))[0]
                for i, a in zip(group, adv.tolist(), strict=True):
                    self.advantage[i] = a

    def loss(self, model, data, idx):
        import torch

        from rlaif.losses import (
            clipped_policy_loss,
            clipped_value_loss,
            gae,
            kl_from_old_samples,
            kl_k1,
            kl_k3,
            likelihood_off_policy_loss,
            shaped_off_policy_loss,
        )

        c = self.config
        ppo = c.algorithm == "ppo"
        rows = [data[i] for i in idx]
        if ppo:
            logps, states = response_logps(model, rows, self.tok.pad_token_id, hidden=True)
        else:
            logps = response_logps(model, rows, self.tok.pad_token_id)
        losses, stats = [], dict.fromkeys(self.stat_keys, 0.0)
        for n, i in enumerate(idx):
            logp = logps[n]
            ref = self.ref_logps[i].to(logp.device)
            k1 = kl_k1(logp.detach(), ref)
            if ppo:
                values = model.get_base_model().value_head(states[n].to(torch.float32)).squeeze(-1)
                token_rewards = torch.zeros_like(k1)
                token_rewards[-1] = self.shaped[i]
                if c.kl == "reward":
                    token_rewards = token_rewards - self.beta * k1
                adv, ret = gae(token_rewards.cpu(), self.ref_values[i], c.gamma, c.gae_lambda)
                adv = adv.to(logp.device)
                value_loss = clipped_value_loss(
                    values, self.ref_values[i].to(logp.device), ret.to(logp.device), c.clip
                )
                value_loss = value_loss.mean()
            else:
                a = self.advantage[i] - (self.beta * k1.sum().item() if c.kl == "reward" else 0.0)
                adv = torch.full_like(logp, a)
                value_loss = torch.zeros((), device=logp.device)
            off = self.off_policy[i]
            if off:  # a guided response: no ratio to clip, and no KL term (its tokens are not the policy's)
                adv = torch.full_like(logp, self.advantage[i])
                if c.off_policy == "shaped":
                    pg = shaped_off_policy_loss(logp, adv, c.off_policy_gamma).mean()
                else:
                    pg = likelihood_off_policy_loss(logp, adv).mean()
            else:
                pg = clipped_policy_loss(logp, ref, adv, c.clip).mean()
            total = pg + c.vf_coef * value_loss
            if c.kl == "loss" and not off:
                total = total + self.beta * kl_k3(logp, ref).mean()
            losses.append(total)
            stats["pg_loss"] += pg.item()
            # the response's KL to the reference (nats), estimated on these rollouts: what the controller tracks
            kl = kl_from_old_samples(logp.detach(), ref).sum().item()
            stats["kl"] += kl
            stats["advantage"] += adv.mean().item()
            stats["ratio"] += torch.exp(logp.detach() - ref).mean().item()
            stats["value_loss"] += value_loss.item()
            if not off:  # the controller tracks the KL on the policy's own samples
                self.step_kl.append(kl)
        return torch.stack(losses), stats

    def after_step(self, model, step: int) -> None:
        from rlaif.losses import adaptive_beta

        if self.config.target_kl and self.step_kl:
            kl = sum(self.step_kl) / len(self.step_kl)
            self.beta = adaptive_beta(self.beta, kl, self.config.target_kl, 1, self.config.horizon)
        self.step_kl = []

    def finish(self, model) -> None:
        if self.config.algorithm == "ppo" and hasattr(model.get_base_model(), "value_head"):
            del model.get_base_model().value_head  # the critic is not part of the policy

    def summary(self, log: list[dict], epochs: int) -> dict:
        return {"kl_first": log[0]["kl"], "kl_last": log[-1]["kl"], "beta_last": self.beta}


# -- the stage ------------------------------------------------------------------------------------------


def guided_rollouts(round_, rollouts: list[dict]) -> list[bool]:
    """Which rollouts are guided responses (off-policy data, `rl.off_policy`); each such response's token
    ids made the whole reply the prompt alone would have to produce: its guidance's prefix, which the generator
    was given rather than sampled, before the continuation, and the EOS token after a response ended at a
    sentence (`sentences`), which the model did not sample. Its `tokens` (rl.length_penalty, the mean length) count
    the prefix too."""
    guided = [bool(x.get("guidance")) for x in rollouts]
    if not any(guided):
        return guided
    if round_.config.rl.off_policy == "refuse":
        raise ConfigError(
            "rl.off_policy",
            f"{round_.dir / 'responses.jsonl'} holds {sum(guided)} guided responses, which the policy did not "
            'sample: set rl.off_policy ("shaped" or "likelihood") to train on them as off-policy data, or '
            "generate without guidance",
        )
    if round_.config.rl.algorithm == "ppo":
        raise ConfigError(
            "rl.algorithm",
            f"{round_.dir / 'responses.jsonl'} holds {sum(guided)} guided responses: off-policy data for "
            '"rloo" or "grpo"; PPO\'s critic and GAE assume the policy sampled every rollout',
        )
    tok = round_.pool.tokenizer(round_.model)
    for x, g in zip(rollouts, guided, strict=True):
        # a response with no ids (an endpoint's) is re-tokenized from its text, the prefix included
        if not g or not x.get("token_ids"):
            continue
        ids = list(x["token_ids"])
        if x.get("prefix"):
            prefix = tok(x["prefix"], add_special_tokens=False).input_ids
            ids = prefix + ids
            # the reply's length (rl.length_penalty) has the prefix too
            x["tokens"] = x.get("tokens", 0) + len(prefix)
        if x["finished"] and (not ids or ids[-1] != tok.eos_token_id):
            ids.append(tok.eos_token_id)
        x["token_ids"] = ids
    return guided


def run(round_) -> dict:

    cfg = round_.config.rl
    t0 = time.perf_counter()
    rollouts = read_jsonl(round_.dir / "responses.jsonl")
    off_policy = guided_rollouts(round_, rollouts)
    for x in rollouts:
        if not x.get("token_ids"):  # written before responses carried their ids: the text, re-tokenized
            tok = round_.pool.tokenizer(round_.model)
            x["token_ids"] = tok(x["text"], add_special_tokens=False).input_ids + (
                [tok.eos_token_id] if x["finished"] else []
            )
    round_.progress.note(
        f"round {round_.k}: {cfg.algorithm} on {len(rollouts)} rollouts"
        + (f", {sum(off_policy)} of them guided (off-policy)" if any(off_policy) else "")
    )
    t_reward = time.perf_counter()
    raw = rewards(round_, rollouts)
    reward_seconds = time.perf_counter() - t_reward
    tokens = [x["tokens"] for x in rollouts]
    # on the DP path the round-wide whitening would mix every prompt into each reward: off (rlaif/privacy.py)
    finished = [bool(x["finished"]) for x in rollouts]
    shaped = shape(raw, tokens, cfg, whiten=not round_.config.privacy.active, finished=finished)
    by_prompt: dict[str, list[int]] = {}
    for i, x in enumerate(rollouts):
        by_prompt.setdefault(x["prompt_id"], []).append(i)
    figures = {
        "algorithm": cfg.algorithm,
        "rollouts": len(rollouts),
        **({"off_policy": sum(off_policy)} if any(off_policy) else {}),
        "reward_mean": sum(raw) / len(raw),
        "mean_tokens": sum(tokens) / len(tokens),
        "finished_share": sum(finished) / len(finished),
        "reward_length_correlation": pearson(raw, [float(t) for t in tokens]),
        "reference": portable(round_.model, round_.run.dir),
    }
    model, tok = round_.pool.take(round_.model, training=True)
    task = RLTask(tok, cfg, list(by_prompt.values()), shaped, off_policy)
    t_update = time.perf_counter()
    trained, metrics, log = train(
        model,
        task,
        rollouts,
        cfg,
        round_.seed * 1000 + round_.k,
        round_.dir,
        round_.progress,
        **stage_privacy(round_, "rl"),
    )
    figures.update(reward_seconds=reward_seconds, update_seconds=time.perf_counter() - t_update)
    round_.pool.put(str(round_.dir / "adapter"), trained, tok)  # for the merge stage
    if is_main():  # under the launcher, rank 0 alone writes
        write_jsonl(round_.dir / "rl_log.jsonl", ({"schema": SCHEMA_VERSION, **x} for x in log))
    return {**figures, **metrics, "seconds": time.perf_counter() - t0}
