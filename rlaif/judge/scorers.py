"""Judge scorer backends: answer-option log-probs (and greedy replies, for rationales) from a transformers
model, a vLLM engine, or an OpenAI-compatible completions endpoint. Each takes token-id prompts and returns
values in the caller's order; `rlaif.judge.build_judge` picks one.
"""

from __future__ import annotations

from rlaif.endpoints import Fleet
from rlaif.generate.hf import eos_ids
from rlaif.progress import Progress


class TransformersScorer:
    """Option log-probs from a transformers model: one batched forward per chunk, last position only."""

    def __init__(self, model, tokenizer, batch_size: int):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.pad = tokenizer.pad_token_id

    def generate(self, prompts: list[list[int]], max_new_tokens: int, progress: Progress) -> list[str]:
        """Greedy replies (rationale mode), batched with left padding, in the caller's order."""
        import torch

        stop = eos_ids(self.tokenizer, self.model)
        out: list[str | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.tensor([[self.pad] * (width - len(prompts[i])) + prompts[i] for i in idx])
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx])
            with torch.inference_mode():
                gen = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.pad,
                    eos_token_id=sorted(stop),
                )
            for row, i in enumerate(idx):
                seq = gen[row, width:].tolist()
                end = next((k for k, t in enumerate(seq) if t in stop), len(seq))
                out[i] = self.tokenizer.decode(seq[:end], skip_special_tokens=True)
            progress.advance(len(idx))
        return out

    def option_logprobs(self, prompts: list[list[int]], options: tuple[int, int], progress: Progress):
        import torch

        out: list[tuple[float, float] | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.tensor(
                [[self.pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device
            )
            mask = torch.tensor(
                [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=device
            )
            # left padding: give real tokens positions 0..n-1 so each row sees what it would see alone
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1
                ).logits
            logp = torch.log_softmax(logits[:, -1, :].float(), dim=-1)
            for row, i in enumerate(idx):
                out[i] = (logp[row, options[0]].item(), logp[row, options[1]].item())
            progress.advance(len(idx))
        return out


class VLLMScorer:
    """Option log-probs from a vLLM engine: one decoding step per prompt, the options read from the next
    token's top log-probs (raw, exact values); an option outside the top k is read from vLLM's prompt
    log-probs of prompt + option instead, so every value is exact."""

    def __init__(self, engine, tokenizer=None, chunk: int = 64):
        self.engine, self.tokenizer, self.chunk = engine, tokenizer, chunk

    def generate(self, prompts: list[list[int]], max_new_tokens: int, progress: Progress) -> list[str]:
        out = []
        for start in range(0, len(prompts), self.chunk):
            batch = prompts[start : start + self.chunk]
            outs = self.engine.request("generate", (batch, 1, 0.0, 1.0, max_new_tokens, [0] * len(batch)))
            out.extend(self.tokenizer.decode(group[0][0], skip_special_tokens=True) for group in outs)
            progress.advance(len(batch))
        return out

    def option_logprobs(self, prompts: list[list[int]], options: tuple[int, int], progress: Progress):
        out = []
        for start in range(0, len(prompts), self.chunk):
            batch = prompts[start : start + self.chunk]
            out.extend(self.engine.request("option_logprobs", (batch, options)))
            progress.advance(len(batch))
        return out


class OpenAIScorer:
    """Option log-probs from an OpenAI-compatible completions endpoint (`vllm serve`, or a provider).

    The prompt is rendered here with the judge model's chat template and sent as text with max_tokens=1 and
    the top log-probs of the next token; an option outside the top `top_logprobs` counts as log-prob -30
    (the option mass in the judgement shows when that happens)."""

    FLOOR = -30.0

    def __init__(self, tokenizer, config):

        self.tokenizer, self.config = tokenizer, config
        urls = list(dict.fromkeys([*([config.base_url] if config.base_url else []), *config.endpoints]))
        self.fleet = Fleet(
            urls, config.api_key_env, config.concurrency, config.retries, what="judge endpoint"
        )
        self.model = self.fleet.model_name(config.api_model)

    def _one(self, ids: list[int], texts: tuple[str, str]) -> tuple[float, float]:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        body = {
            "model": self.model,
            "prompt": text,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self.config.top_logprobs,
        }
        choice = self.fleet.post("/completions", body)["choices"][0]
        top = (choice.get("logprobs") or {}).get("top_logprobs") or [{}]
        first = top[0] or {}
        return tuple(max(first.get(o, self.FLOOR), self.FLOOR) for o in texts)

    def _reply(self, ids: list[int], max_tokens: int) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        body = {"model": self.model, "prompt": text, "max_tokens": max_tokens, "temperature": 0.0}
        return self.fleet.post("/completions", body)["choices"][0]["text"]

    def _each(self, call, prompts: list[list[int]], progress: Progress) -> list:
        """`call` on every prompt, spread over the endpoints; results in the prompts' order."""
        return self.fleet.map(call, prompts, progress)

    def generate(self, prompts: list[list[int]], max_new_tokens: int, progress: Progress) -> list[str]:
        return self._each(lambda ids: self._reply(ids, max_new_tokens), prompts, progress)

    def option_logprobs(self, prompts: list[list[int]], options: tuple[int, int], progress: Progress):
        # the endpoint keys its top log-probs by token text: the options' first tokens, decoded
        texts = tuple(self.tokenizer.decode([o]) for o in options)
        return self._each(lambda ids: self._one(ids, texts), prompts, progress)
