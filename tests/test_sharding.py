"""Sharded training (rlaif/sharding.py, launch.shard = "fsdp"): two FSDP2 processes on the CPU (gloo) train exactly
as one replicated process, for DPO and for RL, and a sharded training killed mid-way resumes from its shards."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from rlaif.launch import close_process_group
from rlaif.models import load_model, load_tokenizer
from rlaif.recompute import CHECKPOINTING_ENV
from rlaif.sharding import SHARD_ENV
from tests.test_train import PAIRS, _cfg


def _dpo(model_path, out, checkpoint_every=0):
    from rlaif.stages.dpo import train_preferences

    tok = load_tokenizer(model_path)
    cfg = _cfg(beta=0.5, checkpoint_every=checkpoint_every)
    return train_preferences(load_model(model_path), tok, PAIRS * 3, cfg, 0, out)


def _rl(model_path, out):
    from rlaif.config.rl import RLConfig
    from rlaif.stages.rl import RLTask
    from rlaif.trainer import train

    tok = load_tokenizer(model_path)
    texts = [
        "Mix flour and water.",
        "I cannot help with that.",
        "Bake it.",
        "Response A",
        "Yes.",
        "No, sorry.",
    ]
    rollouts = []
    for i, t in enumerate(texts):
        ids = tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rollouts.append(
            {
                "prompt_id": f"p{i // 2}",
                "prompt": f"question {i // 2}?",
                "text": t,
                "token_ids": ids,
                "tokens": len(ids),
            }
        )
    cfg = RLConfig(
        epochs=2,
        batch_size=2,
        learning_rate=1e-2,
        max_length=64,
        lora_r=4,
        lora_alpha=8,
        checkpoint_every=0,
        warmup_ratio=0.0,
    )
    shaped = [1.0, -1.0, 0.5, -0.5, 0.2, -0.2]
    task = RLTask(tok, cfg, [[0, 1], [2, 3], [4, 5]], shaped)
    return train(load_model(model_path), task, rollouts, cfg, 0, out)


def _rm(model_path, out):
    from rlaif.reward.lora import RewardTask
    from rlaif.trainer import train

    tok = load_tokenizer(model_path)
    cfg = _cfg(learning_rate=1e-2, checkpoint_every=0)
    return train(load_model(model_path), RewardTask(tok, 64, centring=0.1), PAIRS * 3, cfg, 0, out)


def _kto(model_path, out):
    from rlaif.data import unpair
    from rlaif.kto import KTOTask
    from rlaif.trainer import train

    tok = load_tokenizer(model_path)
    # 3 examples a step in micro-batches of 1: z0's forwards are 2 on rank 0 and 1 (+ a filler) on rank 1
    cfg = _cfg(loss="kto", batch_size=1, grad_accum=3, beta=0.5)
    return train(load_model(model_path), KTOTask(tok, cfg), unpair(PAIRS * 3), cfg, 0, out)


TRAININGS = {"dpo": _dpo, "rl": _rl, "reward": _rm, "kto": _kto}


def _worker(rank, world, which, model_path, tmp, env=None):
    import torch.distributed as dist

    os.environ[SHARD_ENV] = "fsdp"
    os.environ.update(env or {})
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    _, _, log = TRAININGS[which](model_path, f"{tmp}/out")
    if rank == 0:
        with open(f"{tmp}/log.json", "w") as f:
            json.dump(log, f)
    close_process_group()  # after a failure the process exits with it: no barrier to wait at


@pytest.mark.parametrize(
    "which, env",
    [("dpo", {}), ("rl", {}), ("reward", {}), ("kto", {}), ("dpo", {CHECKPOINTING_ENV: "1"})],
    ids=["dpo", "rl", "reward", "kto", "dpo-activation-checkpointing"],
)
def test_two_sharded_processes_match_one(tiny_model, tmp_path, which, env):
    """Two FSDP processes train as one plain process does (with activation checkpointing on in the sharded ones,
    its layers recomputed in the backward pass: the same losses and the same adapter, saved under PEFT's names)."""
    _, metrics, log1 = TRAININGS[which](tiny_model, tmp_path / "single")
    torch.multiprocessing.spawn(_worker, args=(2, which, tiny_model, str(tmp_path), env), nprocs=2, join=True)
    log2 = json.loads((tmp_path / "log.json").read_text())
    assert len(log2) == len(log1) >= 4
    assert_same_training(log1, log2, tmp_path / "single", tmp_path / "out", 1e-5, 1e-4)


def assert_same_training(log1, log2, out1, out2, loss_tol: float, weight_tol: float) -> None:
    """Two trainings logged the same step losses and gradient norms and wrote the same adapter (the same names)."""
    from safetensors.torch import load_file

    for a, b in zip(log1, log2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=loss_tol)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=10 * loss_tol, abs=loss_tol / 10)
    # e.g. the adapter rank 0 gathered and wrote is the single process's (Adam at lr 1e-2 turns the reduction
    # order's last-bit differences into ~2e-5 in the weights after a few steps)
    one = load_file(str(out1 / "adapter" / "adapter_model.safetensors"))
    two = load_file(str(out2 / "adapter" / "adapter_model.safetensors"))
    assert one and one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], atol=weight_tol), (k, float((one[k] - two[k]).abs().max()))


def _killed_worker(rank, world, model_path, tmp, die):
    import torch.distributed as dist

    import rlaif.trainer as trainer

    os.environ[SHARD_ENV] = "fsdp"
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous{die}", rank=rank, world_size=world)
    if die:  # rank 1 dies right after the first sharded checkpoint is complete
        save = trainer._save_checkpoint_sharded

        def save_then_die(*args, **kwargs):
            save(*args, **kwargs)
            dist.barrier()
            if rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)

        trainer._save_checkpoint_sharded = save_then_die
    _, _, log = _dpo(model_path, f"{tmp}/out", checkpoint_every=2)
    if rank == 0:
        with open(f"{tmp}/log.json", "w") as f:
            json.dump(log, f)
    close_process_group()  # after a failure the process exits with it: no barrier to wait at


def test_a_killed_sharded_training_resumes_from_its_shards(tiny_model, tmp_path):
    _, _, whole = _dpo(tiny_model, tmp_path / "single", checkpoint_every=2)
    with pytest.raises(torch.multiprocessing.ProcessExitedException):  # rank 1 is killed: the group fails
        torch.multiprocessing.spawn(
            _killed_worker, args=(2, tiny_model, str(tmp_path), 1), nprocs=2, join=True
        )
    progress = json.loads((tmp_path / "out" / "checkpoint" / "progress.json").read_text())
    assert progress["step"] == 2 and progress["sharded"] == 2
    torch.multiprocessing.spawn(_killed_worker, args=(2, tiny_model, str(tmp_path), 0), nprocs=2, join=True)
    resumed = json.loads((tmp_path / "log.json").read_text())
    assert len(resumed) == len(whole)
    for a, b in zip(whole, resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)


def test_fsdp_refuses_what_it_does_not_compose_with(tiny_model, tmp_path, monkeypatch):
    from rlaif.data import DataError

    monkeypatch.setenv(SHARD_ENV, "fsdp")
    import rlaif.trainer as trainer

    monkeypatch.setattr(trainer, "distributed", lambda: (object(), 0, 2))
    from rlaif.config.dpo import DPOConfig
    from rlaif.data import unpair
    from rlaif.kto import KTOTask

    tok = load_tokenizer(tiny_model)
    cfg = DPOConfig(loss="kto", batch_size=2, max_length=64, tr_dpo_tau=2)  # TR-KTO: a moving reference
    with pytest.raises(DataError, match="does not compose yet"):
        trainer.train(load_model(tiny_model), KTOTask(tok, cfg), unpair(PAIRS), cfg, 0, tmp_path)


def test_a_model_taken_for_sharded_training_is_loaded_on_the_cpu(tiny_model, monkeypatch):
    """Under launch.shard = fsdp no process loads the whole model onto its GPU: the model to train comes from the
    CPU in the GPU's dtype, and fully_shard moves each process's shards (here the device is only named "cuda")."""
    import rlaif.pool as pool_module
    from rlaif.config import ModelConfig
    from rlaif.pool import ModelPool

    pool = ModelPool(ModelConfig(), "cuda")
    monkeypatch.setattr(pool_module, "sharded_training", lambda: True)
    model, _ = pool.take(tiny_model, training=True)
    p = next(model.parameters())
    assert p.device.type == "cpu" and p.dtype == torch.bfloat16
    if not torch.cuda.is_available():
        monkeypatch.setattr(pool_module, "sharded_training", lambda: False)
        with pytest.raises((AssertionError, RuntimeError)):  # not sharded: the pool's device (no GPU here)
            pool.take(tiny_model, training=True)
