"""Rounds of constitutional self-alignment: generate -> judge -> preferences -> DPO (LoRA) -> merge.

Round k (k >= 1) starts from round k-1's merged model (round 0 is the initial model), which is its
generator, its reference and, by default, its judge. Each round writes `runs/<name>/round_<k>/`:

    responses.jsonl     one record per sampled response
    judgements.jsonl    one record per prompt: its best- and worst-ranked responses (or each disjoint pair),
                        the verdict (kept or dropped, with the reason) and the ranking of all its responses
    preferences.jsonl   the kept pairs as prompt/chosen/rejected (this round's fresh, online pairs)
    train_pairs.jsonl   what training saw: the fresh pairs plus replayed and offline ones, each with its source
    adapter/ model/     the LoRA adapter and the merged model (safetensors)
    train_log.jsonl     one record per optimizer step
    stages.json         per-stage figures and times, written as each stage completes
    metrics.json        written last: its presence marks the round complete

Every file is written atomically, and a stage whose output exists is not run again, so a killed run resumes
where it stopped, without duplicated or lost records.

    rlaif run runs/demo --rounds 2
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import platform
import random
import shutil
import time
from importlib import metadata
from pathlib import Path

from rlaif.config import RunConfig, load_config, to_dict
from rlaif.data import SCHEMA_VERSION, load_preferences, load_prompts, read_jsonl, write_json, write_jsonl
from rlaif.generate.vllm_backend import resolve_backend
from rlaif.models import load_model, load_tokenizer, model_hash, pick_device, resolve_model, save_model
from rlaif.principles import load_constitution
from rlaif.progress import SILENT, Progress


def round_dir(run_dir: Path, k: int) -> Path:
    return Path(run_dir) / f"round_{k}"


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def completed_rounds(run_dir: Path) -> list[int]:
    ks = []
    for d in Path(run_dir).glob("round_*"):
        suffix = d.name.removeprefix("round_")
        if suffix.isdigit() and (d / "metrics.json").is_file():
            ks.append(int(suffix))
    return sorted(ks)


def select_prompts(prompts: list[dict], per_round: int, seed: int, k: int) -> list[dict]:
    """The round's prompts: all of them, or a seeded sample that differs from round to round."""
    if per_round == 0 or per_round >= len(prompts):
        return prompts
    chosen = random.Random(f"{seed}:prompts:{k}").sample(range(len(prompts)), per_round)
    return [prompts[i] for i in sorted(chosen)]


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("rlaif", "torch", "transformers", "peft", "jsonlines", "rich"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def best_vs_worst(group: list[dict], items: list[dict], verdicts: list) -> tuple[dict, object, list[dict]]:
    """From every judged pair of one prompt's responses: the Bradley-Terry ranking, and the judged pair of
    the best- and worst-ranked responses as (item, verdict) with x = best. Equal scores give no pair
    (reason "tie"); a direct verdict that contradicts the ranking gives none either ("rank-disagrees")."""
    from rlaif.judge import bradley_terry

    n = len(group)
    scores = bradley_terry(
        n, [(it["pair"][0], it["pair"][1], v.p_x) for it, v in zip(items, verdicts, strict=True)]
    )
    wins = [0.0] * n
    for it, v in zip(items, verdicts, strict=True):
        i, j = it["pair"]
        wins[i] += v.p_x > 0.5
        wins[j] += v.p_x < 0.5
    ranking = [
        {"sample": group[i]["sample"], "score": round(scores[i], 6), "wins": wins[i]} for i in range(n)
    ]
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    best, worst = order[0], order[-1]
    q = next(q for q, it in enumerate(items) if set(it["pair"]) == {best, worst})
    it, v = dict(items[q]), verdicts[q]
    if it["pair"] != (best, worst):  # orient the pair so that x is the best-ranked response
        it.update(x=it["y"], y=it["x"], finished=it["finished"][::-1], samples=it["samples"][::-1])
        it["pair"] = (best, worst)
        v = v.swapped()
    if scores[best] - scores[worst] < 1e-6:
        v = dataclasses.replace(v, winner=None, reason="tie")
    elif v.kept and v.winner != "x":
        v = dataclasses.replace(v, winner=None, reason="rank-disagrees")
    return it, v, ranking


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on (disk full, out of memory); the message says what to change."""


_MEMORY_KEYS = {
    "generate": "generate.batch_size, generate.max_new_tokens or vllm.gpu_memory_utilization",
    "judge": "judge.batch_size or judge.max_length",
    "train": "train.batch_size (raise train.grad_accum to keep the effective batch), train.max_length or train.lora_r",
}


@contextlib.contextmanager
def stage_errors(stage: str, rdir: Path):
    """Turn disk-full and out-of-memory failures into a message naming the stage and what to change. Files
    already written stay whole (atomic writes), so rerunning the same command resumes."""
    import errno

    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise StageError(
            f"{stage}: the disk is full while writing under {rdir} ({e}). Free space or move the run folder, "
            "then run the same command again: completed files are kept and the stage resumes."
        ) from None
    except MemoryError:
        raise StageError(
            f"{stage}: out of memory. Lower {_MEMORY_KEYS[stage]} (--set key=value), then run the same command "
            "again: completed stages are kept."
        ) from None
    except RuntimeError as e:
        # torch.OutOfMemoryError (CUDA) and CPU allocator failures are RuntimeErrors naming memory
        text = str(e).lower()
        if (
            "out of memory" not in text
            and "can't allocate memory" not in text
            and "not enough memory" not in text
        ):
            raise
        raise StageError(
            f"{stage}: out of memory ({str(e).splitlines()[0][:200]}). Lower {_MEMORY_KEYS[stage]} "
            "(--set key=value), then run the same command again: completed stages are kept."
        ) from None


class RoundRunner:
    """Runs the rounds of one run folder. Loads a model only when a stage that needs it has to run."""

    def __init__(self, run_dir: str | Path, config: RunConfig, progress: Progress = SILENT):
        self.run_dir = Path(run_dir).resolve()
        self.config = config
        self.progress = progress
        self.constitution = load_constitution(config.judge.constitution)
        prompts_path = Path(config.data.prompts)
        if not prompts_path.is_absolute():
            prompts_path = self.run_dir / prompts_path
        self.prompts = load_prompts(prompts_path)
        self.prompts_path = prompts_path
        self.initial_model = resolve_model(config.model.policy, notify=progress.note)
        self.device = pick_device(config.model.device)
        self.generate_backend = resolve_backend(config.generate.backend, self.device)
        self.judge_backend = config.judge.backend
        if self.judge_backend != "openai":
            self.judge_backend = resolve_backend(config.judge.backend, self.device)
        self._model = None  # (path, model, tokenizer) of the loaded round model
        self._engine = None  # a VLLMEngine, alive only during the generate and judge stages
        self._offline: list[dict] | None = None

    # -- models -------------------------------------------------------------------------------------

    def parent_of(self, k: int) -> str:
        if k == 1:
            return self.initial_model
        prev = read_json(round_dir(self.run_dir, k - 1) / "metrics.json")
        if prev is None:
            raise RuntimeError(f"round {k - 1} is not complete; run it first")
        return prev["model"]["path"]

    def tokenizer(self, path: str):
        if self._model is not None and self._model[0] == path:
            return self._model[2]
        return load_tokenizer(path, self.config.model.trust_remote_code)

    def engine(self, path: str):
        from rlaif.generate.vllm_backend import VLLMEngine

        if self._engine is None or self._engine.model_path != path:
            self.close_engine()
            self.progress.note(f"starting a vLLM engine for {path}")
            self._engine = VLLMEngine(path, self.config.vllm, self.config.model, self.config.seed)
        return self._engine

    def close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def policy(self, path: str):
        if self._model is None or self._model[0] != path:
            self._model = None
            self.progress.note(f"loading {path}")
            mc = self.config.model
            tok = load_tokenizer(path, mc.trust_remote_code)
            model = load_model(path, self.device, mc.dtype, mc.trust_remote_code)
            self._model = (path, model, tok)
        return self._model[1], self._model[2]

    # -- stages -------------------------------------------------------------------------------------

    def generate(self, k: int, parent: str, out: Path) -> dict:
        from rlaif.generate.hf import TransformersGenerator
        from rlaif.generate.vllm_backend import VLLMGenerator

        cfg = self.config
        prompts = select_prompts(self.prompts, cfg.data.prompts_per_round, cfg.seed, k)
        if self.generate_backend == "vllm":
            gen = VLLMGenerator(self.engine(parent), self.tokenizer(parent), cfg.generate)
        else:
            model, tok = self.policy(parent)
            gen = TransformersGenerator(parent, cfg.generate, cfg.model, model=model, tokenizer=tok)
        t0 = time.perf_counter()
        samples = gen.generate(
            [p["prompt"] for p in prompts],
            cfg.generate.samples_per_prompt,
            cfg.seed * 1000 + k,
            self.progress,
        )
        seconds = time.perf_counter() - t0
        records = [
            {
                "schema": SCHEMA_VERSION,
                "round": k,
                "prompt_id": p["id"],
                "prompt": p["prompt"],
                "sample": j,
                "text": s.text,
                "tokens": s.tokens,
                "finished": s.finished,
                "logprobs": list(s.logprobs),
                "generator": parent,
            }
            for p, group in zip(prompts, samples, strict=True)
            for j, s in enumerate(group)
        ]
        write_jsonl(out, records)
        tokens = sum(r["tokens"] for r in records)
        return {
            "responses": len(records),
            "prompts": len(prompts),
            "tokens": tokens,
            "tokens_per_s": tokens / seconds,
            "truncated_prompts": gen.truncated_prompts,
            "finished_share": sum(r["finished"] for r in records) / len(records),
            "mean_tokens": tokens / len(records),
            "backend": self.generate_backend,
            "seconds": seconds,
        }

    def judge(self, k: int, parent: str, responses: list[dict], out: Path) -> dict:
        from rlaif.judge import Judge, OpenAIScorer, TransformersScorer, VLLMScorer

        cfg = self.config
        judge_path = (
            parent if cfg.model.judge == "policy" else resolve_model(cfg.model.judge, self.progress.note)
        )
        tok = self.tokenizer(judge_path)
        if self.judge_backend == "vllm":
            scorer = VLLMScorer(self.engine(judge_path), tok)
        elif self.judge_backend == "openai":
            scorer = OpenAIScorer(tok, self.constitution.template_for(cfg.judge.mode).options, cfg.judge)
            judge_path = f"{cfg.judge.base_url} {scorer.model}"
        else:
            if cfg.model.judge == "policy":
                model, tok = self.policy(parent)
            else:
                model = load_model(judge_path, self.device, cfg.model.dtype, cfg.model.trust_remote_code)
            scorer = TransformersScorer(model, tok, cfg.judge.batch_size)
        by_prompt: dict[str, list[dict]] = {}
        for r in responses:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
        items, groups = [], []
        for pid, group in by_prompt.items():
            group.sort(key=lambda r: r["sample"])
            # one principle draw per prompt: every comparison of its responses uses the same principle(s)
            rng = random.Random(f"{cfg.seed}:judge:{k}:{pid}")
            principles = self.constitution.sample_k(rng, cfg.judge.principles_per_pair)
            if cfg.judge.pairing == "rank":
                pairs = list(itertools.combinations(range(len(group)), 2))
            else:  # disjoint pairs: sample 0 vs 1, 2 vs 3, ...
                pairs = [(i, i + 1) for i in range(0, len(group) - 1, 2)]
            first = len(items)
            for i, j in pairs:
                a, b = group[i], group[j]
                items.append(
                    {
                        "prompt_id": pid,
                        "prompt": a["prompt"],
                        "conversation": f"User: {a['prompt']}",
                        "x": a["text"],
                        "y": b["text"],
                        "finished": [a["finished"], b["finished"]],
                        "samples": [a["sample"], b["sample"]],
                        "principles": principles,
                        "pair": (i, j),
                    }
                )
            groups.append((group, list(range(first, len(items)))))
        judge = Judge(scorer, tok, self.constitution, cfg.judge)
        t0 = time.perf_counter()
        verdicts = judge.judge(items, self.progress)
        seconds = time.perf_counter() - t0
        judge_count = len(items)
        rankings: dict[int, list[dict]] = {}
        if cfg.judge.pairing == "rank":
            ranked_items, ranked_verdicts = [], []
            for group, idx in groups:
                if not idx:
                    continue
                it, v, ranking = best_vs_worst(group, [items[q] for q in idx], [verdicts[q] for q in idx])
                rankings[len(ranked_items)] = ranking
                ranked_items.append(it)
                ranked_verdicts.append(v)
            items, verdicts = ranked_items, ranked_verdicts
        # two identical samples teach DPO nothing (their log-ratios cancel): never a preference pair
        verdicts = [
            dataclasses.replace(v, winner=None, reason="identical") if it["x"] == it["y"] else v
            for it, v in zip(items, verdicts, strict=True)
        ]
        records = []
        for it, v in zip(items, verdicts, strict=True):
            records.append(
                {
                    "schema": SCHEMA_VERSION,
                    "round": k,
                    "prompt_id": it["prompt_id"],
                    "prompt": it["prompt"],
                    "x": it["x"],
                    "y": it["y"],
                    "samples": it["samples"],
                    "x_finished": it["finished"][0],
                    "y_finished": it["finished"][1],
                    "judge": judge_path,
                    "ranking": rankings.get(len(records)),
                    **v.to_dict(),
                }
            )
        write_jsonl(out, records)
        n = len(records)
        return {
            "pairs": n,
            "kept": sum(r["kept"] for r in records),
            "position_consistency": sum(r["consistent"] for r in records) / n if n else 0.0,
            "position_consistency_calibrated": sum(r["consistent_calibrated"] for r in records) / n
            if n
            else 0.0,
            "first_slot_rate": sum((r["p_first_xy"] > 0.5) + (r["p_first_yx"] > 0.5) for r in records)
            / (2 * n)
            if n
            else 0.0,
            "bias": records[0]["bias"] if records else 0.0,
            "dropped_inconsistent": sum(r["reason"] == "inconsistent" for r in records),
            "dropped_uncertain": sum(r["reason"] == "uncertain" for r in records),
            "dropped_identical": sum(r["reason"] == "identical" for r in records),
            "dropped_unparsed": sum(r["reason"] == "unparsed" for r in records),
            "dropped_tie": sum(r["reason"] in ("tie", "rank-disagrees") for r in records),
            "comparisons": judge_count,
            "mode": cfg.judge.mode,
            "truncated": judge.truncated,
            "model": judge_path,
            "backend": self.judge_backend,
            "seconds": seconds,
        }

    @staticmethod
    def preferences(k: int, parent: str, judgements: list[dict]) -> list[dict]:
        prefs = []
        for j in judgements:
            if not j["kept"]:
                continue
            x_wins = j["winner"] == "x"
            chosen, rejected = (j["x"], j["y"]) if x_wins else (j["y"], j["x"])
            chosen_finished, rejected_finished = (
                (j["x_finished"], j["y_finished"]) if x_wins else (j["y_finished"], j["x_finished"])
            )
            prefs.append(
                {
                    "schema": SCHEMA_VERSION,
                    "round": k,
                    "prompt_id": j["prompt_id"],
                    "prompt": j["prompt"],
                    "chosen": chosen,
                    "rejected": rejected,
                    "chosen_finished": chosen_finished,
                    "rejected_finished": rejected_finished,
                    "principle": j["principle"],
                    "p_chosen": j["p_x"] if x_wins else 1 - j["p_x"],
                    "p_first_xy": j["p_first_xy"],
                    "p_first_yx": j["p_first_yx"],
                    "chosen_is_x": x_wins,
                    "judge": j["judge"],
                    "generator": parent,
                }
            )
        return prefs

    def offline_pairs(self) -> list[dict]:
        if self._offline is None:
            self._offline = []
            for source in self.config.data.offline:
                self.progress.note(f"reading offline preferences from {source}")
                for p in load_preferences(source, self.run_dir, self.config.data.offline_split):
                    self._offline.append({**p, "source": f"offline:{source}"})
        return self._offline

    def training_mix(self, k: int, prefs: list[dict]) -> list[dict]:
        """This round's training set: its fresh pairs, plus replayed pairs of earlier rounds and imported offline
        pairs in the configured shares (online/offline hybrid). Draws are seeded per round."""
        dc = self.config.data
        rng = random.Random(f"{self.config.seed}:mix:{k}")
        mix = [{**p, "source": "online"} for p in prefs]
        n_replay = round(dc.replay_share * len(prefs))
        if n_replay:
            earlier = []
            for j in range(1, k):
                path = round_dir(self.run_dir, j) / "preferences.jsonl"
                if path.is_file():
                    earlier.extend({**p, "source": f"replay:round_{j}"} for p in read_jsonl(path))
            mix.extend(rng.sample(earlier, min(n_replay, len(earlier))))
        n_offline = max(round(dc.offline_share * len(prefs)), dc.offline_min)
        if n_offline and dc.offline:
            pool = self.offline_pairs()
            mix.extend(rng.sample(pool, min(n_offline, len(pool))))
        return mix

    def train(self, k: int, parent: str, prefs: list[dict], rdir: Path) -> dict:
        from rlaif.train import train_dpo

        mix = _count(p.get("source", "online").split(":")[0] for p in prefs)
        if not prefs:
            self.progress.note(f"round {k}: no preference pairs kept; the model stays {parent}")
            return {
                "steps": 0,
                "pairs": 0,
                "loss_first": None,
                "loss_last": None,
                "reward_accuracy": None,
                "mix": mix,
                "seconds": 0.0,
            }
        self.close_engine()  # the engine's process exits: its (GPU) memory is free before training
        model, tok = self.policy(parent)
        ref_model = None
        if self.config.train.reference == "initial" and parent != self.initial_model:
            self.progress.note(f"loading the initial model {self.initial_model} as the reference")
            mc = self.config.model
            ref_model = load_model(self.initial_model, self.device, mc.dtype, mc.trust_remote_code)
        t0 = time.perf_counter()
        merged, metrics, log = train_dpo(
            model, tok, prefs, self.config.train, self.config.seed * 1000 + k, rdir, self.progress, ref_model
        )
        del ref_model
        metrics["mix"] = mix
        metrics["reference"] = self.initial_model if self.config.train.reference == "initial" else parent
        self._model = None  # the loaded weights are now the merged ones, not `parent`
        write_jsonl(rdir / "train_log.jsonl", ({"schema": SCHEMA_VERSION, **r} for r in log))
        self.progress.note(f"saving the merged model to {rdir / 'model'}")
        save_model(merged, tok, rdir / "model")
        self._model = (str(rdir / "model"), merged, tok)
        metrics["seconds"] = time.perf_counter() - t0
        return metrics

    # -- the round ----------------------------------------------------------------------------------

    def run_round(self, k: int) -> dict:
        rdir = round_dir(self.run_dir, k)
        done = read_json(rdir / "metrics.json")
        if done is not None:
            return done
        rdir.mkdir(parents=True, exist_ok=True)
        # temp files of a killed writer are never complete (data.write_atomic renames only finished files)
        for stale in rdir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        parent = self.parent_of(k)
        stages = read_json(rdir / "stages.json") or {}

        def finish(stage: str, figures: dict) -> None:
            stages[stage] = figures
            write_json(rdir / "stages.json", stages)

        responses_path = rdir / "responses.jsonl"
        if "generate" not in stages or not responses_path.is_file():
            self.progress.note(f"round {k}: generating with {parent}")
            with stage_errors("generate", rdir):
                finish("generate", self.generate(k, parent, responses_path))
        responses = read_jsonl(responses_path)

        judgements_path = rdir / "judgements.jsonl"
        if "judge" not in stages or not judgements_path.is_file():
            self.progress.note(
                f"round {k}: judging {len(responses)} responses to {len({r['prompt_id'] for r in responses})} prompts"
            )
            with stage_errors("judge", rdir):
                finish("judge", self.judge(k, parent, responses, judgements_path))
        judgements = read_jsonl(judgements_path)

        prefs_path = rdir / "preferences.jsonl"
        if not prefs_path.is_file():
            write_jsonl(prefs_path, self.preferences(k, parent, judgements))
        prefs = read_jsonl(prefs_path)

        mix_path = rdir / "train_pairs.jsonl"
        if "train" not in stages and not mix_path.is_file():
            write_jsonl(mix_path, self.training_mix(k, prefs))
        if "train" not in stages:
            mix = read_jsonl(mix_path)
            self.progress.note(f"round {k}: DPO on {len(mix)} pairs")
            shutil.rmtree(rdir / "model", ignore_errors=True)
            with stage_errors("train", rdir):
                finish("train", self.train(k, parent, mix, rdir))
        model_path = str(rdir / "model") if stages["train"]["steps"] else parent

        metrics = {
            "schema": SCHEMA_VERSION,
            "round": k,
            "generate": stages["generate"],
            "judge": stages["judge"],
            "preferences": {"pairs": len(prefs), "by_principle": _count(p["principle"] for p in prefs)},
            "train": stages["train"],
            "model": {"path": model_path, "parent": parent, "hash": model_hash(model_path)},
            "time": {s: stages[s]["seconds"] for s in ("generate", "judge", "train")},
        }
        write_json(rdir / "metrics.json", metrics)
        return metrics

    def write_manifest(self, rounds: list[dict]) -> None:
        path = self.run_dir / "manifest.json"
        manifest = read_json(path) or {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        manifest.update(
            {
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "config": to_dict(self.config),
                "seed": self.config.seed,
                "prompts": str(self.prompts_path),
                "constitution": self.constitution.path,
                "principles": {p.id: p.path for p in self.constitution.principles},
                "versions": _versions(),
                "device": self.device,
                "initial_model": {"path": self.initial_model, "hash": model_hash(self.initial_model)},
                "rounds": {
                    str(m["round"]): {"model": m["model"]["path"], "hash": m["model"]["hash"]} for m in rounds
                },
            }
        )
        write_json(path, manifest)


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def run(
    run_dir: str | Path, rounds: int, overrides: list[str] = (), progress: Progress = SILENT
) -> list[dict]:
    """Run (or resume) rounds 1..`rounds` of the run in `run_dir`; returns each round's metrics."""
    config = load_config(run_dir, overrides)
    with RunLock(run_dir):
        runner = RoundRunner(run_dir, config, progress)
        runner.offline_pairs()  # bad offline data fails now, not after a round of generation and judging
        results = []
        try:
            for k in range(1, rounds + 1):
                results.append(runner.run_round(k))
                runner.write_manifest(results)
        finally:
            runner.close_engine()
    return results


class RunBusy(RuntimeError):
    """Another process is running this run folder."""


class RunLock:
    """One `rlaif run` per run folder: an exclusive flock on `<run>/.lock`. The kernel drops the lock when its
    process ends, however it ends, so a killed run never leaves the folder stuck; the file only holds the
    holder's pid for the message."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self.fd = None

    def __enter__(self):
        import fcntl
        import os

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise RunBusy(
                f"{self.path.parent}: already being run by pid {holder}; wait for it to finish or stop it "
                "(a killed run releases the folder at once)"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc):
        import os

        os.close(self.fd)  # closing the descriptor releases the flock
