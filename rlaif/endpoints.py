"""Several OpenAI-compatible endpoints used as one (e.g. `vllm serve` on other machines): the generate and
judge stages' "openai" backends send their requests here.

Each request goes to the endpoint with the fewest requests in flight; at most `concurrency` are in flight per
endpoint. A request that fails for a reason that may pass (the endpoint unreachable, a timeout, HTTP 429 or
5xx) is retried `retries` times, each time on the least busy other endpoint first, after a growing pause; an
unreachable endpoint is left out of every request's choice for 10 s. A request the server refuses (HTTP 4xx)
fails at once with the server's message. Results come back in the
order of the inputs, whichever endpoint answered.

The round's model reaches vLLM servers by path: `reload(path)` asks every endpoint to load the weights of a
folder it can read (the run folder on a shared filesystem) through vLLM's development API (servers started
with VLLM_SERVER_DEV_MODE=1), then to drop its prefix cache, whose entries belong to the old weights.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

from rlaif.progress import SILENT, Progress


class EndpointError(RuntimeError):
    """A request no endpoint could answer; the message names the endpoint and the server's reply."""


class _Retry(Exception):
    pass


class Fleet:
    def __init__(
        self,
        urls: list[str],
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        retries: int = 3,
        timeout: float = 600.0,
        what: str = "endpoint",
        backoff: float = 0.5,
    ):
        if not urls:
            raise ValueError("a fleet needs at least one endpoint")
        self.urls = [u.rstrip("/") for u in urls]
        self.api_key = os.environ.get(api_key_env, "")
        self.concurrency, self.retries, self.timeout = concurrency, retries, timeout
        self.what, self.backoff = what, backoff
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)  # signalled when a request ends
        self._busy = dict.fromkeys(self.urls, 0)
        self._down: dict[str, float] = {}  # url -> until when an unreachable endpoint is avoided
        self.cooldown = 10.0
        self.answered = dict.fromkeys(self.urls, 0)
        """Requests each endpoint answered."""
        self.retried = 0
        """Attempts that failed and were tried again."""

    # -- one request ------------------------------------------------------------------------------------

    def _http(self, url: str, path: str, body: dict | None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            message = f"{self.what} {url}{path}: HTTP {e.code}: {e.read()[:500].decode(errors='replace')}"
            if e.code == 429 or e.code >= 500:
                raise _Retry(message) from None
            raise EndpointError(message) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            with self._lock:  # other requests avoid it for a while too
                self._down[url] = time.monotonic() + self.cooldown
            raise _Retry(f"{self.what} {url}{path} unreachable: {reason}") from None
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:  # some routes answer in plain text (vLLM's load_lora_adapter)
            return {"text": raw.decode(errors="replace")}

    def _pick(self, last_failed: str | None) -> str:
        """The least busy endpoint (ties: the first listed) with room for a request, among those that are up,
        preferring one other than the one that just failed. While any endpoint is up, a request waits for room
        on one rather than going to an endpoint known to be down (where it would only burn its retries);
        only when every endpoint is down is it sent to one of them anyway, so its retries decide."""
        with self._free:
            while True:
                now = time.monotonic()
                up = [u for u in self.urls if self._down.get(u, 0) <= now]
                room = [u for u in (up or self.urls) if self._busy[u] < self.concurrency]
                pool = [u for u in room if u != last_failed] or room
                if pool:
                    url = min(pool, key=lambda u: self._busy[u])
                    self._busy[url] += 1
                    return url
                # woken when a request ends; a down endpoint's cooldown ending changes the choice too
                downs = [t - now for t in self._down.values() if t > now]
                self._free.wait(timeout=min(downs) if downs else None)

    def _done(self, url: str, answered: bool) -> None:
        with self._free:
            self._busy[url] -= 1
            if answered:
                self.answered[url] += 1
            else:
                self.retried += 1
            self._free.notify_all()

    def post(self, path: str, body: dict, url: str | None = None) -> dict:
        """POST `body` to `path` on the least busy endpoint (or on `url`), retrying as the module says."""
        failed: str | None = None
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            target = url or self._pick(failed)
            if url is not None:
                with self._free:
                    self._busy[url] += 1
            try:
                result = self._http(target, path, body)
            except _Retry as e:
                self._done(target, False)
                failed, last = target, str(e)
                continue
            except BaseException:
                self._done(target, False)
                raise
            self._done(target, True)
            return result
        raise EndpointError(f"{last} (after {self.retries + 1} attempts)")

    def get(self, path: str, url: str) -> dict:
        try:
            return self._http(url, path, None)
        except _Retry as e:
            raise EndpointError(str(e)) from None

    # -- many requests -----------------------------------------------------------------------------------

    def map(self, call, items: list, progress: Progress = SILENT) -> list:
        """`call(item)` for every item, `concurrency` per endpoint at a time; results in the items' order."""
        out = [None] * len(items)
        with ThreadPoolExecutor(self.concurrency * len(self.urls)) as pool:
            futures = {pool.submit(call, item): i for i, item in enumerate(items)}
            try:
                for future in as_completed(futures):
                    out[futures[future]] = future.result()
                    progress.advance(1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return out

    def model_name(self, configured: str = "") -> str:
        """`configured`, or the first model the first endpoint lists."""
        if configured:
            return configured
        models = self.get("/models", self.urls[0]).get("data", [])
        if not models:
            raise EndpointError(f"{self.what} {self.urls[0]} lists no models; name one (api_model)")
        return models[0]["id"]

    def reload(self, path: str) -> float:
        """Every endpoint loads the weights in folder `path` (a path the servers can read) and drops its prefix
        cache; returns the seconds it took. Needs vLLM servers started with VLLM_SERVER_DEV_MODE=1."""
        t0 = time.perf_counter()

        def one(url: str) -> None:
            body = {"method": "reload_weights", "kwargs": {"weights_path": str(path)}}
            try:
                self._http(url, "/collective_rpc", body)
                self._http(url, "/reset_prefix_cache", {})
            except EndpointError as e:
                if "HTTP 404" in str(e):
                    raise EndpointError(
                        f"{self.what} {url} cannot load new weights (no /collective_rpc): start vLLM with "
                        "VLLM_SERVER_DEV_MODE=1, or set sync = 'none' and restart the servers on each round's "
                        f"model yourself ({path})"
                    ) from None
                raise
            except _Retry as e:
                raise EndpointError(f"{e}; while loading {path}") from None

        with ThreadPoolExecutor(len(self.urls)) as pool:
            list(pool.map(one, [_server_root(u) for u in self.urls]))
        return time.perf_counter() - t0

    def load_lora(self, name: str, path: str) -> float:
        """Every endpoint loads the LoRA adapter in folder `path` under `name` (vLLM's /v1/load_lora_adapter;
        servers started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True); one already loaded
        under that name is kept. Returns the seconds it took."""
        t0 = time.perf_counter()

        def one(url: str) -> None:
            try:
                self._http(url, "/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
            except EndpointError as e:
                if "already" in str(e).lower():
                    return
                if "HTTP 404" in str(e):
                    raise EndpointError(
                        f"{self.what} {url} cannot load LoRA adapters (no /v1/load_lora_adapter): start vLLM "
                        "with --enable-lora --max-lora-rank R and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
                    ) from None
                raise
            except _Retry as e:
                raise EndpointError(f"{e}; while loading the adapter {path}") from None

        with ThreadPoolExecutor(len(self.urls)) as pool:
            list(pool.map(one, self.urls))
        return time.perf_counter() - t0


def _server_root(url: str) -> str:
    """The server's root for its non-OpenAI routes: http://host:8000/v1 -> http://host:8000."""
    return url[: -len("/v1")] if url.endswith("/v1") else url
