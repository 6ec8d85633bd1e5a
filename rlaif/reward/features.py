"""What a head reads: the final hidden state of the response's last token and the mean over its tokens,
extracted in batches (and cached on disk by row, so an interrupted pass resumes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rlaif.data import temp_name
from rlaif.progress import SILENT, Progress
from rlaif.reward.format import encode


def body_of(model):
    """The transformer under a causal LM's output layer (its final hidden states are what the head reads)."""
    return getattr(model, model.base_model_prefix, model)


def features(model, rows: list[tuple[list[int], int]], pad_id: int, side: str = "right"):
    """(B, 2 * hidden) features of padded rows in one forward pass: the final hidden state at each row's last
    real token, and the mean over its response tokens. Padding (on either `side`) never enters either: real
    tokens get positions 0..n-1 and the attention mask hides the pads."""
    import torch

    device = next(model.parameters()).device
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    resp = torch.zeros((len(rows), width), dtype=torch.float32)
    last = torch.zeros(len(rows), dtype=torch.long)
    for r, (seq, start) in enumerate(rows):
        off = width - len(seq) if side == "left" else 0
        ids[r, off : off + len(seq)] = torch.tensor(seq)
        attn[r, off : off + len(seq)] = 1
        resp[r, off + start : off + len(seq)] = 1
        last[r] = off + len(seq) - 1
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    hidden = body_of(model)(
        input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=positions.to(device)
    ).last_hidden_state.float()
    at_last = hidden[torch.arange(len(rows)), last.to(device)]
    resp = resp.to(device)
    mean = (hidden * resp[..., None]).sum(1) / resp.sum(-1, keepdim=True)
    return torch.cat([at_last, mean], dim=-1)


def extract(
    model, tokenizer, rows: list[tuple[list[int], int]], batch_size: int = 8, progress: Progress = SILENT
):
    """Features of every row, in batches of similar length, in the rows' order (no gradients)."""
    import torch

    out = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    progress.stage("reward features", len(rows))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            f = features(model, [rows[i] for i in idx], tokenizer.pad_token_id).cpu()
            for k, i in enumerate(idx):
                out[i] = f[k]
            progress.advance(len(idx))
    return torch.stack(out) if out else torch.zeros(0)


# -- fitting a head on fixed features -------------------------------------------------------------------


def cached_features(
    model,
    tokenizer,
    rows,
    cache: Path | None,
    key: str,
    batch_size: int,
    progress: Progress,
    shard: int = 256,
):
    """Features of rows, each looked up in a cache kept per model (`key`) and keyed by the row's token ids:
    rows seen before, in any set and any order, cost nothing, and the rest are computed in shards of `shard`
    rows, each saved as it completes, so a killed extraction resumes where it stopped."""
    import torch
    from safetensors.torch import load_file, save_file

    if cache is None:
        return extract(model, tokenizer, rows, batch_size, progress)
    folder = Path(cache) / hashlib.sha256(key.encode()).hexdigest()[:16]
    known: dict[int, object] = {}
    for f in sorted(folder.glob("shard-*.safetensors")) if folder.is_dir() else ():
        try:
            got = load_file(str(f))
        except Exception:  # a damaged shard (a kill mid-write leaves only temp names): computed again
            continue
        known.update(zip(got["keys"].tolist(), got["features"], strict=True))
    keys = [row_key(ids, start) for ids, start in rows]
    missing = list({k: i for i, k in reversed(list(enumerate(keys))) if k not in known}.values())
    missing.sort(key=lambda i: len(rows[i][0]))
    if missing:
        progress.stage("reward features", len(missing))
        folder.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(missing), shard):
        idx = missing[s : s + shard]
        f = extract(model, tokenizer, [rows[i] for i in idx], batch_size)
        kt = torch.tensor([keys[i] for i in idx], dtype=torch.long)
        path = folder / f"shard-{hashlib.sha256(kt.numpy().tobytes()).hexdigest()[:16]}.safetensors"
        tmp = temp_name(path)
        save_file({"keys": kt, "features": f.contiguous()}, str(tmp))
        tmp.replace(path)
        known.update(zip(kt.tolist(), f, strict=True))
        progress.advance(len(idx))
    return torch.stack([known[k] for k in keys]) if keys else torch.zeros(0)


def row_key(ids: list[int], start: int) -> int:
    """A row's cache key: the first 8 bytes of the SHA-256 of its token ids and response start, as an int64."""
    digest = hashlib.sha256(json.dumps([ids, start]).encode()).digest()[:8]
    return int.from_bytes(digest, "little", signed=True)


def pair_rows(tokenizer, pairs: list[dict], max_length: int, conditioned: bool):
    """Encoded (chosen rows, rejected rows) of preference pairs ({"prompt", "chosen", "rejected"[, "principle_text"]})."""
    chosen, rejected = [], []
    for p in pairs:
        principle = p.get("principle_text") if conditioned else None
        chosen.append(encode(tokenizer, p["prompt"], p["chosen"], max_length, principle))
        rejected.append(encode(tokenizer, p["prompt"], p["rejected"], max_length, principle))
    return chosen, rejected
