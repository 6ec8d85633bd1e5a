"""Data-parallel training: two gloo processes on the CPU train exactly as one process does."""

import json
import math

import pytest
import torch

from rlaif.launch import close_process_group
from rlaif.models import load_model, load_tokenizer
from tests.test_train import PAIRS, _cfg, train_dpo


def _settings():  # the trainer settings both runs share: test_train's defaults, checkpoints every 2 steps
    return _cfg(beta=0.5, checkpoint_every=2)


def _worker(rank, world, model_path, tmp):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    tok = load_tokenizer(model_path)
    merged, metrics, log = train_dpo(load_model(model_path), tok, PAIRS * 3, _settings(), 0, f"{tmp}/out")
    if rank == 0:
        torch.save({k: v.clone() for k, v in merged.state_dict().items()}, f"{tmp}/weights.pt")
        with open(f"{tmp}/log.json", "w") as f:
            json.dump(log, f)
    close_process_group()  # after a failure the process exits with it: no barrier to wait at


def test_two_processes_match_one(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    single, _, log1 = train_dpo(load_model(tiny_model), tok, PAIRS * 3, _settings(), 0, tmp_path / "single")
    torch.multiprocessing.spawn(_worker, args=(2, tiny_model, str(tmp_path)), nprocs=2, join=True)
    log2 = json.loads((tmp_path / "log.json").read_text())
    assert (
        len(log2) == len(log1) == 10
    )  # 9 pairs, 2 per step (one per process; the odd tail leaves one idle), 2 epochs
    for a, b in zip(log1, log2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert log2[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    for name, t in single.state_dict().items():
        assert torch.allclose(weights[name], t, atol=1e-5), name
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()


def _train_kto(model_path, out):
    from rlaif.data import unpair
    from rlaif.kto import KTOTask
    from rlaif.trainer import train

    tok = load_tokenizer(model_path)
    cfg = _cfg(beta=0.5, loss="kto", grad_accum=2, checkpoint_every=0)
    return train(load_model(model_path), KTOTask(tok, cfg), unpair(PAIRS * 2), cfg, 0, out)


def _kto_worker(rank, world, model_path, tmp):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    _, _, log = _train_kto(model_path, f"{tmp}/out")
    if rank == 0:
        with open(f"{tmp}/log.json", "w") as f:
            json.dump(log, f)
    close_process_group()  # after a failure the process exits with it: no barrier to wait at


def test_kto_two_processes_match_one(tiny_model, tmp_path):
    """KTO's reference point z0 is a mean over the step's examples: each process computes its share and the sums
    are all-reduced, so two processes see the z0, losses and gradients of one."""
    _, _, log1 = _train_kto(tiny_model, tmp_path / "single")
    torch.multiprocessing.spawn(_kto_worker, args=(2, tiny_model, str(tmp_path)), nprocs=2, join=True)
    log2 = json.loads((tmp_path / "log.json").read_text())
    assert len(log2) == len(log1) >= 4
    assert any(a["kl"] > 0 for a in log1[1:])  # the reference point is active after the first step
    for a, b in zip(log1, log2, strict=True):
        assert b["kl"] == pytest.approx(a["kl"], abs=1e-5)
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
