"""Sequence log-probs of the response tokens for the preference losses (DPO family, KTO), with the LM head applied
only where the loss reads it (the RL stage's per-token log-probs and SFT's loss use the same check: rlaif/stages/rl.py,
rlaif/stages/sft.py).

A causal LM's forward applies its head (hidden size x vocabulary) at every position it keeps; the losses read the
response tokens alone. With the prompt of each row and the padding of a micro-batch, that is 1.3 (the demo's pairs)
to 3 (HH-RLHF's multi-turn prompts, bucketed) logits per response token, each a vocabulary-wide row kept for the
backward pass. So the decoder's final hidden states are taken, the response positions picked, and the head applied
to those rows alone: the same logits (the same per-row products: bitwise equal on the CPU for the embedded model),
less memory and compute.

That is the model's own logits only where its forward is "head of the last hidden state" and nothing after it
(Gemma 2 caps its logits, Cohere scales them): it is checked once per model object, on the first batch, against the
model's forward (without gradients, in eval mode), and a model whose logits differ, or that has no
`get_decoder` / `get_output_embeddings`, keeps the forward's logits. Sharded training (FSDP, whose root gathers the
head and the embeddings in its own forward) keeps the forward too.
"""

from __future__ import annotations

from rlaif.sharding import sharded_training

CHECKED = "_rlaif_head_alone"
"""The attribute that holds a model's check (True: the head alone gives its logits)."""


def response_logits(model, ids, attn, mask):
    """(logits at the tokens `mask` covers after the shift (N, V), those tokens (N,), their batch rows (N,)), the
    head applied there alone; for a model `head_alone` has passed."""
    m = mask[:, 1:].bool()
    hidden = model.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state
    return model.get_output_embeddings()(hidden[:, :-1][m]), ids[:, 1:][m], m.nonzero(as_tuple=True)[0]


def response_logps(model, ids, attn, mask, start: int):
    """Per row, the sum of log p(token | prefix) over the tokens where `mask` is 1 (the response). ids, attn, mask:
    (B, T), right-padded; `start`: the first position any row's mask covers (logits from there on suffice)."""
    from rlaif.losses import picked_logps, sequence_logps  # torch: imported where it is used

    if head_alone(model, ids, attn, start):
        return picked_logps(*response_logits(model, ids, attn, mask), ids.shape[0])
    keep = ids.shape[1] - start + 1
    logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits
    return sequence_logps(logits, ids[:, -keep:], mask[:, -keep:])


def head_alone(model, ids, attn, start: int) -> bool:
    """Does the head applied to the decoder's last hidden states give this model's logits? Checked once per model
    (on this batch), never under sharding."""
    if sharded_training():
        return False
    known = model.__dict__.get(CHECKED)
    if known is None:
        known = _check(model, ids, attn, start)
        model.__dict__[CHECKED] = known
    return known


def _check(model, ids, attn, start: int) -> bool:
    import torch

    if not (
        callable(getattr(model, "get_decoder", None))
        and callable(getattr(model, "get_output_embeddings", None))
    ):
        return False
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            keep = ids.shape[1] - start + 1
            full = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits
            head = model.get_output_embeddings()
            hidden = model.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state
            mine = head(hidden[:, -keep:]) if head is not None else None
            if mine is None or mine.shape != full.shape:
                return False
            # two matmul kernels may round a half-precision logit apart by an ulp; a cap or a scale after the
            # head moves the large logits by far more
            tol = max(1e-4, 2 * torch.finfo(full.dtype).eps)
            return torch.allclose(mine.float(), full.float(), rtol=tol, atol=tol)
    except Exception:  # noqa: BLE001 - any failure of the shortcut means: use the model's forward
        return False
    finally:
        model.train(was_training)
