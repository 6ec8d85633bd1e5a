"""Decoding-time realignment (DeRa, Liu et al., arXiv:2402.02992) and best-of-n sampling.

DeRa samples from a per-token mix of a reference and an aligned model with one tokenizer:

    h = lambda * h_aligned + (1 - lambda) * h_ref,     p = softmax(h / temperature)

lambda = 0 is the reference, 1 the aligned model, lambda > 1 extrapolates past it (a stronger alignment
than training gave, as a smaller DPO beta would), 0 < lambda < 1 interpolates: one trained model, a family
of alignment strengths chosen at decoding time on validation prompts.

Best-of-n (rejection sampling), the other decoding-time baseline, lives with the judge's ranking
(`rlaif.judge.ranking.best_of_n`).

    rlaif sample --run runs/demo --round 2 --realign 1.5 --prompts evals/harmful.jsonl
    rlaif sample --run runs/demo --round 0 --best-of 4 --prompts evals/benign.jsonl
"""

from __future__ import annotations

import torch

from rlaif.generate import Sample
from rlaif.generate.hf import encode_prompts, eos_ids, right_padded, token_logprobs
from rlaif.progress import SILENT, Progress


def mixed_logits(aligned: torch.Tensor, reference: torch.Tensor, lam: float) -> torch.Tensor:
    """DeRa's per-token logits: lam * aligned + (1 - lam) * reference (pure). lam = 0 and lam = 1 return the
    reference's and the aligned model's logits exactly (no arithmetic on them)."""
    if lam == 0:
        return reference
    if lam == 1:
        return aligned
    return lam * aligned + (1 - lam) * reference


def _filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1:
        return logits
    sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    # drop a token once the mass before it already reaches top_p (the first token always stays)
    drop = probs.cumsum(-1) - probs >= top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)


def realigned_generate(*args, **kwargs) -> list[Sample]:
    """One DeRa sample per prompt (see `realigned_tokens` for the arguments), decoded."""
    tokenizer = args[2] if len(args) > 2 else kwargs["tokenizer"]
    out = []
    for seq, finished in realigned_tokens(*args, **kwargs):
        kept = seq[:-1] if finished else seq
        text = tokenizer.decode(kept, skip_special_tokens=True).strip()
        out.append(Sample(text=text, tokens=len(kept), finished=finished))
    return out


def realigned_tokens(
    aligned,
    reference,
    tokenizer,
    prompts: list[str],
    lam: float,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    batch_size: int = 8,
    progress: Progress = SILENT,
) -> list[tuple[list[int], bool]]:
    """One DeRa sample per prompt as (token ids up to and including the stop token, finished). Both models
    decode in lockstep, each with its own KV cache; `reference`
    may be None when lam is 0 or 1 (only one model is then run). temperature 0 = greedy."""

    device = next(aligned.parameters()).device
    stop = torch.tensor(sorted(eos_ids(tokenizer, aligned)), device=device)
    encoded, _ = encode_prompts(tokenizer, prompts, 100_000)
    need_ref = lam != 1
    need_aligned = lam != 0
    if need_ref and reference is None:
        raise ValueError("DeRa with lambda != 1 needs a reference model")
    out: list[tuple[list[int], bool] | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    pad = tokenizer.pad_token_id
    progress.stage(f"sample (lambda {lam:g})", len(prompts))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in idx], device=device)
        mask = torch.tensor(
            [[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx], device=device
        )
        caches = {"aligned": None, "reference": None}
        models = {"aligned": aligned if need_aligned else None, "reference": reference if need_ref else None}
        step_ids = ids
        new = torch.empty((len(idx), 0), dtype=torch.long, device=device)
        done = torch.zeros(len(idx), dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
            logits = {}
            with torch.inference_mode():
                for name, model in models.items():
                    if model is None:
                        continue
                    o = model(
                        input_ids=step_ids,
                        attention_mask=mask,
                        position_ids=positions,
                        past_key_values=caches[name],
                        use_cache=True,
                        logits_to_keep=1,
                    )
                    caches[name] = o.past_key_values
                    logits[name] = o.logits[:, -1, :].float()
            h = mixed_logits(logits.get("aligned"), logits.get("reference"), lam)
            if temperature == 0:
                token = h.argmax(-1)
            else:
                probs = torch.softmax(_filter_top_p(h / temperature, top_p), dim=-1)
                token = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(device)
            token = torch.where(done, torch.full_like(token, pad), token)
            new = torch.cat([new, token[:, None]], dim=1)
            done |= torch.isin(token, stop)
            if bool(done.all()):
                break
            step_ids = token[:, None]
            mask = torch.cat([mask, torch.ones((len(idx), 1), dtype=mask.dtype, device=device)], dim=1)
        for row, i in enumerate(idx):
            seq = new[row].tolist()
            end = next((k for k, t in enumerate(seq) if t in set(stop.tolist())), None)
            out[i] = (seq if end is None else seq[: end + 1], end is not None)
        progress.advance(len(idx))
    return out


def mixed_token_logprobs(
    aligned, reference, lam: float, prompts, responses, pad: int, device, chunk: int = 8
):
    """Log-probs of each response token under DeRa's mixed distribution softmax(mixed_logits) (teacher-forced);
    lam = 1 reads the aligned model alone, lam = 0 the reference alone."""

    if lam == 1 or reference is None:
        return token_logprobs(aligned, prompts, responses, pad, device, chunk)
    if lam == 0:
        return token_logprobs(reference, prompts, responses, pad, device, chunk)
    out = []
    for c in range(0, len(prompts), chunk):
        ps, rs = prompts[c : c + chunk], responses[c : c + chunk]
        ids, mask = right_padded([p + r for p, r in zip(ps, rs, strict=True)], pad)
        with torch.inference_mode():
            h = [
                m(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                for m in (aligned, reference)
            ]
            logp = torch.log_softmax(mixed_logits(h[0], h[1], lam), dim=-1)
        for k, (p, r) in enumerate(zip(ps, rs, strict=True)):
            pos = torch.arange(len(p) - 1, len(p) - 1 + len(r))
            out.append(logp[k, pos, torch.tensor(r, device=logp.device)].tolist() if r else [])
    return out
