"""The endpoint fleet (rlaif/endpoints.py) and the openai generation backend against small fake
OpenAI-compatible servers on loopback: spreading, bounded concurrency, retries and failover, refusals, reload,
and the records the backend builds from the servers' answers."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlaif.endpoints import EndpointError, Fleet
from rlaif.progress import SILENT


class Fake:
    """A fake server: counts requests and the most in flight at once; `fail` answers that many requests
    with HTTP 503 first; `refuse` answers every request with HTTP 400; `errors` maps a path to the (status, payload)
    it answers there; `models` are the ids GET /models lists."""

    def __init__(self, delay=0.0, fail=0, refuse=False, answer=None, errors=None, models=("served-model",)):
        self.delay, self.fail, self.refuse = delay, fail, refuse
        self.errors, self.models = errors or {}, models
        self.answer = answer or (lambda body: {"echo": body})
        self.requests, self.in_flight, self.most = [], 0, 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, code: int, payload: dict) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self._reply(200, {"data": [{"id": m} for m in fake.models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append((self.path, body))
                    fake.in_flight += 1
                    fake.most = max(fake.most, fake.in_flight)
                    failing = fake.fail > 0
                    fake.fail -= failing
                time.sleep(fake.delay)
                with fake.lock:  # before the reply: the client may send its next request at once
                    fake.in_flight -= 1
                if fake.refuse:
                    self._reply(400, {"error": "bad request: no such model"})
                elif self.path in fake.errors:
                    self._reply(*fake.errors[self.path])
                elif failing:
                    self._reply(503, {"error": "overloaded"})
                else:
                    self._reply(200, fake.answer(body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fakes():
    made = []

    def make(**kw):
        made.append(Fake(**kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _dead_url() -> str:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_requests_are_spread_bounded_and_returned_in_order(fakes):
    a, b = fakes(delay=0.05), fakes(delay=0.05)
    fleet = Fleet([a.url, b.url], concurrency=3)
    out = fleet.map(lambda i: fleet.post("/completions", {"i": i})["echo"]["i"], list(range(40)), SILENT)
    assert out == list(range(40))
    assert len(a.requests) + len(b.requests) == 40
    assert min(len(a.requests), len(b.requests)) >= 15  # a busy endpoint leaves the next request to the other
    assert max(a.most, b.most) <= 3  # never more than `concurrency` in flight per endpoint
    assert fleet.answered == {a.url: len(a.requests), b.url: len(b.requests)}


def test_a_dead_endpoint_fails_over_and_transient_errors_are_retried(fakes):
    live = fakes(fail=2)
    fleet = Fleet([_dead_url(), live.url], concurrency=2, retries=3, backoff=0.01)
    out = fleet.map(lambda i: fleet.post("/completions", {"i": i})["echo"]["i"], list(range(10)), SILENT)
    assert out == list(range(10))
    assert fleet.retried >= 3  # the dead endpoint's attempts and the two 503s, each retried
    assert fleet.answered[live.url] == 10


def test_retries_run_out_with_a_message_naming_the_endpoint():
    dead = _dead_url()
    fleet = Fleet([dead], retries=2, backoff=0.01)
    with pytest.raises(EndpointError, match=r"unreachable.*after 3 attempts") as e:
        fleet.post("/completions", {})
    assert dead in str(e.value)


def test_a_refusal_is_not_retried(fakes):
    bad = fakes(refuse=True)
    fleet = Fleet([bad.url], retries=3, backoff=0.01)
    with pytest.raises(EndpointError, match="HTTP 400.*no such model"):
        fleet.post("/completions", {})
    assert len(bad.requests) == 1


def test_model_name_and_reload_reach_every_endpoint(fakes):
    a, b = fakes(), fakes()
    fleet = Fleet([a.url, b.url])
    assert fleet.model_name() == "served-model" and fleet.model_name("mine") == "mine"
    fleet.reload("/shared/run/round_1/model")
    for f in (a, b):
        assert [p for p, _ in f.requests] == ["/collective_rpc", "/reset_prefix_cache"]  # at the server root
        assert f.requests[0][1] == {
            "method": "reload_weights",
            "kwargs": {"weights_path": "/shared/run/round_1/model"},
        }


def test_servers_that_cannot_reload_or_list_say_how_to_start_them(fakes):
    plain = fakes(errors={"/collective_rpc": (404, {"detail": "Not Found"})}, models=())
    fleet = Fleet([plain.url])
    with pytest.raises(EndpointError, match="VLLM_SERVER_DEV_MODE=1") as e:
        fleet.reload("/shared/m")
    assert plain.url.removesuffix("/v1") in str(e.value) and "/shared/m" in str(e.value)
    with pytest.raises(EndpointError, match="lists no models; name one"):
        fleet.model_name()
    no_lora = fakes(errors={"/v1/load_lora_adapter": (404, {"detail": "Not Found"})})
    with pytest.raises(EndpointError, match="--enable-lora"):
        Fleet([no_lora.url]).load_lora("round_1", "/shared/a")
    # an adapter the server already holds under that name is kept, not an error
    loaded = fakes(
        errors={
            "/v1/load_lora_adapter": (400, {"error": "The lora adapter 'round_1' has already been loaded."})
        }
    )
    Fleet([loaded.url]).load_lora("round_1", "/shared/a")
    assert [p for p, _ in loaded.requests] == ["/v1/load_lora_adapter"]
    other = fakes(errors={"/v1/load_lora_adapter": (400, {"error": "no such folder"})})
    with pytest.raises(EndpointError, match="no such folder"):
        Fleet([other.url]).load_lora("round_1", "/shared/a")


def test_a_failed_request_stops_the_map_and_says_why(fakes):
    bad = fakes(delay=0.02, errors={"/v1/completions": (400, {"error": "prompt too long"})})
    fleet = Fleet([bad.url], concurrency=1)
    with pytest.raises(EndpointError, match="prompt too long"):
        fleet.map(lambda i: fleet.post("/completions", {"i": i}), list(range(50)), SILENT)
    assert len(bad.requests) < 50  # the requests not yet started were cancelled


def _completion_server(fakes, tokenizer, eos: int):
    """A fake vLLM: answers each completions request with n choices whose tokens are "token_id:N" strings;
    the sampled ids follow from the request's seed, the second choice ends with EOS."""

    def answer(body):
        seed, n = body["seed"], body["n"]
        choices = []
        for j in range(n):
            ids = [5 + (seed + j) % 7, 6, 7] + ([eos] if j % 2 else [8])
            choices.append(
                {
                    "index": j,
                    "text": tokenizer.decode(ids, skip_special_tokens=True),
                    "finish_reason": "stop" if j % 2 else "length",
                    "logprobs": {
                        "tokens": [f"token_id:{t}" for t in ids],
                        "token_logprobs": [-0.5 - 0.1 * k for k in range(len(ids))],
                    },
                }
            )
        return {"choices": choices[::-1]}  # out of order: the backend sorts by index

    return fakes(answer=answer)


def test_openai_generator_builds_the_records_of_the_other_backends(fakes, tiny_model):
    from rlaif.config import GenerateConfig
    from rlaif.generate.openai_backend import OpenAIGenerator
    from rlaif.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    a, b = _completion_server(fakes, tok, tok.eos_token_id), _completion_server(fakes, tok, tok.eos_token_id)
    cfg = GenerateConfig(backend="openai", endpoints=[a.url, b.url], max_new_tokens=4)
    gen = OpenAIGenerator(Fleet(cfg.endpoints), "m", tiny_model, tok, cfg)
    prompts = ["How do I bake bread?", [{"role": "user", "content": "Say hello."}], "Is this safe?"]
    out = gen.generate(prompts, 2, seed=3, progress=SILENT)
    assert [len(g) for g in out] == [2, 2, 2]
    sent = sorted((body for f in (a, b) for _, body in f.requests), key=lambda x: x["seed"])
    # the vllm backend's seeds: one per prompt, from the round's seed and the prompt's index
    assert [x["seed"] for x in sent] == [3 * 1_000_003 + i for i in range(3)]
    assert all(x["logprobs"] == 0 and x["return_tokens_as_token_ids"] for x in sent)
    from rlaif.generate.hf import encode_prompts

    assert [x["prompt"] for x in sent] == encode_prompts(tok, prompts, cfg.max_prompt_tokens)[0]
    for i, (first, second) in enumerate(out):
        seed = 3 * 1_000_003 + i
        assert first.token_ids == (5 + seed % 7, 6, 7, 8) and not first.finished and first.tokens == 4
        assert second.token_ids == (5 + (seed + 1) % 7, 6, 7, tok.eos_token_id) and second.finished
        assert second.tokens == 3 and len(second.logprobs) == 4  # the EOS token's log-prob kept
        assert second.logprobs == pytest.approx((-0.5, -0.6, -0.7, -0.8))
        assert second.text == tok.decode([5 + (seed + 1) % 7, 6, 7], skip_special_tokens=True).strip()


def test_openai_generator_on_a_server_that_sends_text_tokenizes_it(fakes, tiny_model):
    """A server that is not vLLM sends token texts: the backend tokenizes the text, adds EOS where the server
    stopped, and drops log-probs that do not line up with those tokens."""
    from rlaif.config import GenerateConfig
    from rlaif.generate.openai_backend import OpenAIGenerator
    from rlaif.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    text = "Mix flour and water"

    def answer(body):
        def choice(j, reason, logprobs):
            return {"index": j, "text": text, "finish_reason": reason, "logprobs": logprobs}

        n = len(tok(text, add_special_tokens=False).input_ids)
        return {
            "choices": [
                choice(0, "stop", {"tokens": ["Mix", " flour"], "token_logprobs": [-0.1, -0.2]}),
                choice(1, "length", {"tokens": ["x"] * n, "token_logprobs": [-0.5] * n}),
            ]
        }

    server = fakes(answer=answer)
    cfg = GenerateConfig(backend="openai", endpoints=[server.url], max_new_tokens=8)
    gen = OpenAIGenerator(Fleet(cfg.endpoints), "m", tiny_model, tok, cfg)
    [(stopped, cut)] = gen.generate(["How do I bake bread?"], 2, seed=0, progress=SILENT)
    ids = tuple(tok(text, add_special_tokens=False).input_ids)
    assert stopped.token_ids == (*ids, tok.eos_token_id) and stopped.finished and stopped.text == text
    assert stopped.logprobs == ()  # two log-probs for more tokens: not this text's, dropped
    assert cut.token_ids == ids and not cut.finished and cut.logprobs == pytest.approx([-0.5] * len(ids))


def test_generate_config_checks_the_openai_keys():
    from rlaif.checks import ConfigError
    from rlaif.config import GenerateConfig

    with pytest.raises(ConfigError, match="generate.endpoints"):
        GenerateConfig(backend="openai")
    with pytest.raises(ConfigError, match="generate.sync"):
        GenerateConfig(sync="push")
    with pytest.raises(ConfigError, match="generate.concurrency"):
        GenerateConfig(concurrency=0)


def test_a_busy_live_endpoint_is_waited_for_never_skipped_for_a_dead_one(fakes):
    """The live server is slow (every request holds one of its 2 slots for 0.2 s) and 12 requests come at
    once on 4 threads: a request whose live server is full waits for a slot instead of going to the dead
    endpoint, where its one retry would run out (the stage failed that way on a loaded CI machine)."""
    live = fakes(delay=0.2)
    fleet = Fleet([_dead_url(), live.url], concurrency=2, retries=1, backoff=0.01)
    out = fleet.map(lambda i: fleet.post("/completions", {"i": i})["echo"]["i"], list(range(12)), SILENT)
    assert out == list(range(12))
    assert fleet.answered[live.url] == 12 and live.most <= 2


def test_with_every_endpoint_down_retries_run_out_on_each(fakes):
    a, b = _dead_url(), _dead_url()
    fleet = Fleet([a, b], concurrency=1, retries=2, backoff=0.01)
    with pytest.raises(EndpointError, match=r"unreachable.*after 3 attempts"):
        fleet.post("/completions", {})
