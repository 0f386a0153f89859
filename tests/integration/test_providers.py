"""Provider models: real ``litellm.completion`` HTTP against the local sampling server.

Nothing here reaches the internet: requests go to a :class:`SamplingServer` on 127.0.0.1,
or are answered from hand-written vcrpy cassettes replayed with record mode ``none``.
"""

from __future__ import annotations

import os

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from pathlib import Path
from typing import Any

import litellm
import pytest
import vcr
from pydantic import SecretStr

from mnimi_adapters import (
    AI302,
    XMCP,
    CloseAI,
    FireworksAI,
    Independent,
    LiteLLMModel,
    OpenAICompatible,
    Persistent,
    ProviderError,
    Repeatable,
    ReplicationCacheMiss,
    Request,
)
from mnimi_adapters.core import request_key
from mnimi_adapters.providers import (
    LiteLLMRequest,
    ProviderRequestError,
    in_provider_call,
)
from mnimi_adapters.testing import SamplingServer

CASSETTES = Path(__file__).parent / "cassettes"
PROMPT = "Choose a number between 1 and 1000."
KEY_VARS = ("AI302_API_KEY", "CLOSEAI_API_KEY", "FIREWORKS_API_KEY", "XMCP_API_KEY")


@pytest.fixture(autouse=True)
def _quiet_and_keyless(monkeypatch: pytest.MonkeyPatch) -> None:
    # LiteLLM prints a "Give Feedback" banner to stdout for every exception it maps.
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=0) as running:
        yield running


def local(server: SamplingServer, **kwargs: Any) -> OpenAICompatible:
    """A model on the local server with fast retries."""
    kwargs.setdefault("retry_wait", 0.01)
    return OpenAICompatible("mock-model", 1.0, api_base=server.url, api_key="local", **kwargs)


def stored(layer: Persistent) -> int:
    """How many samples a persistent layer holds, over all keys."""
    store: Any = layer.store
    keys = list(store.keys())  # A DiskStore method, not a dict's.
    return sum(store.length(key) for key in keys)


class InFlight:
    """Watches the server log for requests being answered at the same time."""

    def __init__(self, server: SamplingServer) -> None:
        self.server = server
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        while not self._done.is_set():
            # status stays 0 until the server starts answering a request.
            pending = sum(1 for r in list(self.server.requests) if r.status == 0)
            self.peak = max(self.peak, pending)
            time.sleep(0.005)

    def __enter__(self) -> InFlight:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


class Relay:
    """A real HTTP hop on 127.0.0.1 in front of a :class:`SamplingServer`.

    It shows what the server cannot: the headers as sent, ``Authorization`` included (the
    server's log redacts it), and a provider that ignores ``n`` (the server honours it).

    Args:
        server: Where chat requests are forwarded.
        ignore_n: Drop ``n`` from each request, so the server answers one choice.
        after_first: Called once, after the server answered the first request and before
            the answer is relayed (to queue faults for the requests that follow).
    """

    def __init__(
        self,
        server: SamplingServer,
        ignore_n: bool = False,
        after_first: Callable[[], None] | None = None,
    ) -> None:
        self.server = server
        self.ignore_n = ignore_n
        self.after_first = after_first
        #: The headers of each request received, names in lower case.
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # No access log on the test's stderr.

            def do_POST(self) -> None:
                relay._forward(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def authorizations(self) -> list[str | None]:
        with self._lock:
            return [headers.get("authorization") for headers in self.headers]

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        with self._lock:
            self.headers.append({k.lower(): v for k, v in handler.headers.items()})
            first = len(self.headers) == 1
        if self.ignore_n:
            payload = json.loads(body)
            payload.pop("n", None)
            body = json.dumps(payload).encode()
        forward = urllib.request.Request(
            self.server.root_url + handler.path,
            data=body,
            method="POST",
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(forward, timeout=30) as response:
                status, answer = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, answer = error.code, error.read()
        if first and self.after_first is not None:
            self.after_first()
        try:
            handler.send_response(status)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(answer)))
            handler.end_headers()
            handler.wfile.write(answer)
        except OSError:
            pass  # The client gave up waiting (a timeout test): nobody to answer.


# -- import cost --------------------------------------------------------------------


def test_importing_providers_does_not_import_litellm() -> None:
    code = (
        "import sys, mnimi_adapters, mnimi_adapters.providers as p\n"
        "m = mnimi_adapters.AI302('gpt-4o', 1.0, max_batch=10)\n"
        "m.identity()\n"
        "assert 'litellm' not in sys.modules, 'litellm imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# -- batching and concurrency ---------------------------------------------------------


def test_batch_20_max_batch_10_makes_four_requests_of_ten(
    server: SamplingServer, tmp_path: Path
) -> None:
    model = local(server, max_batch=10)
    texts = list(islice(Persistent(model, tmp_path).sample(PROMPT, batch=20), 40))

    requests = server.chat_requests()
    assert [r.body.get("n") for r in requests] == [10, 10, 10, 10]
    assert len(set(texts)) == 40
    assert model.total_requests() == 4


def test_chunks_of_one_refill_are_in_flight_together(server: SamplingServer) -> None:
    server.latency = 0.3
    model = local(server, max_batch=10)

    with InFlight(server) as watch:
        next(model.sample(PROMPT, batch=20))

    assert watch.peak == 2
    assert [r.body.get("n") for r in server.chat_requests()] == [10, 10]


async def test_async_chunks_of_one_refill_are_in_flight_together(server: SamplingServer) -> None:
    server.latency = 0.3
    model = local(server, max_batch=10)

    with InFlight(server) as watch:
        texts = [text async for text in _take(model.asample(PROMPT, batch=20), 20)]

    assert watch.peak == 2
    assert len(set(texts)) == 20
    assert [r.body.get("n") for r in server.chat_requests()] == [10, 10]


def test_threads_sharing_an_independent_layer_get_distinct_samples(
    server: SamplingServer,
) -> None:
    model = local(server)
    shared = Independent(Repeatable(model))
    texts: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            text = next(shared.sample(PROMPT))
            with lock:
                texts.append(text)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(texts) == len(set(texts)) == 40
    assert len(server.chat_requests()) == 40


# -- n emulation ----------------------------------------------------------------------


def test_provider_rejecting_n_is_emulated_with_single_requests() -> None:
    with SamplingServer(seed=1, max_n=1) as server:
        model = local(server, max_batch=3)

        first = list(islice(model.sample(PROMPT, batch=3), 3))
        rejected, *singles = server.chat_requests()
        assert rejected.body["n"] == 3 and rejected.status == 400
        assert len(singles) == 3 and all("n" not in r.body for r in singles)

        server.reset()
        second = list(islice(model.sample(PROMPT, batch=3), 3))
        # Remembered: no second rejected attempt.
        assert [r.status for r in server.chat_requests()] == [200, 200, 200]
        assert len(set(first + second)) == 6
        assert model.total_requests() == 7


async def test_supports_n_false_never_sends_n_async() -> None:
    with SamplingServer(seed=2, max_n=1) as server:
        model = local(server, max_batch=4, supports_n=False)
        texts = [text async for text in _take(model.asample(PROMPT, batch=4), 4)]

        requests = server.chat_requests()
        assert len(requests) == 4 and all("n" not in r.body for r in requests)
        assert len(set(texts)) == 4


def test_provider_ignoring_n_is_topped_up_and_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    # Never forwarded to a third-party endpoint: OpenAICompatible sends a placeholder.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-must-not-leak")
    model = OpenAICompatible("tiny-llm", 1.0, "http://127.0.0.1:9/v1", max_batch=3)
    sent: list[Any] = []

    def capture(request: Any) -> Any:
        sent.append(request)
        return request

    with vcr.use_cassette(
        str(CASSETTES / "local_ignores_n.yaml"),
        record_mode="none",
        match_on=["method", "scheme", "host", "port", "path", "query", "body"],
        before_record_request=capture,
    ) as replay:
        samples = model.query(Request.of(PROMPT), 3)
        # The body matcher tells the n=3 request from the two single ones.
        assert replay.play_count == 3 and replay.all_played

    assert sorted(getattr(s, "text", s) for s in samples) == ["17", "23", "31"]
    # The hook also sees the cassette's own (header-less) requests, hence the None.
    auth = {r.headers.get("authorization") or r.headers.get("Authorization") for r in sent}
    assert auth - {None} == {"Bearer EMPTY"}
    assert model.total_requests() == 2  # The base counts 1 per query; 2 were extra.
    assert model._n_supported is False


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_ignored_n_keeps_the_paid_choice_when_the_top_up_fails(
    server: SamplingServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, use_async: bool
) -> None:
    def fail_the_top_up() -> None:
        server.fail_next(400, count=2)

    with Relay(server, ignore_n=True, after_first=fail_the_top_up) as relay:
        model = OpenAICompatible("mock-model", 1.0, relay.url, api_key="local", max_batch=3)
        layer = Persistent(model, tmp_path)
        with caplog.at_level(logging.WARNING, logger="mnimi_adapters.providers"):
            if use_async:
                (paid,) = asyncio.run(layer.adraw(PROMPT, 1, batch=3))
            else:
                paid = next(layer.samples(PROMPT, batch=3))

    # One choice for n=3, then both single requests of the top-up failed.
    assert [r.status for r in server.chat_requests()] == [200, 400, 400]
    assert paid.text.isdigit() and not paid.origin["cache_hit"]  # type: ignore[index]
    assert "got 1 of 3 choices" in caplog.text
    assert stored(layer) == 1  # Paid, so kept and stored.
    assert model.total_requests() == 3 and model.total_token_count() == (7, 1)
    assert model._n_supported is False


# -- retries and failures -------------------------------------------------------------


def test_retries_honour_retry_after_then_succeed(
    server: SamplingServer, caplog: pytest.LogCaptureFixture
) -> None:
    model = local(server, retry_wait=5.0)  # A backoff this long would blow the test's time.
    server.fail_next(429, retry_after=0.05)
    server.fail_next(500, retry_after=0.02)

    with caplog.at_level(logging.INFO, logger="mnimi_adapters.providers"):
        start = time.perf_counter()
        text = next(model.sample(PROMPT))
        elapsed = time.perf_counter() - start

    assert text.isdigit()
    assert [r.status for r in server.chat_requests()] == [429, 500, 200]
    assert "retry 1 of 4 in 0.05 s" in caplog.text
    assert "retry 2 of 4 in 0.02 s" in caplog.text
    assert elapsed < 5.0
    assert model.total_requests() == 3


def test_retries_back_off_on_5xx_and_timeouts(server: SamplingServer) -> None:
    model = local(server, timeout=0.3, max_retries=3)
    server.fail_next(503)
    server.fail_next(kind="timeout", hang=5.0)
    server.fail_next(502)

    assert next(model.sample(PROMPT)).isdigit()
    assert len(server.chat_requests()) == 4


def test_retries_run_out(server: SamplingServer, tmp_path: Path) -> None:
    model = local(server, max_retries=2)
    layer = Persistent(model, tmp_path)
    server.fail_next(500, count=3)

    with pytest.raises(ProviderRequestError) as caught:
        next(layer.sample(PROMPT))

    assert caught.value.status_code == 500
    assert caught.value.attempts == 3 and caught.value.retryable
    assert "after 3 attempts" in str(caught.value)
    assert len(server.chat_requests()) == 3
    assert stored(layer) == 0


def test_client_error_raises_at_once_with_the_providers_message(
    server: SamplingServer, tmp_path: Path
) -> None:
    layer = Persistent(local(server), tmp_path)
    server.fail_next(400)

    with pytest.raises(ProviderError, match="Injected fault: HTTP 400") as caught:
        next(layer.sample(PROMPT))

    assert isinstance(caught.value, ProviderRequestError)
    assert caught.value.status_code == 400 and caught.value.attempts == 1
    assert len(server.chat_requests()) == 1
    assert stored(layer) == 0


@pytest.mark.parametrize("kind", ["malformed", "empty"])
def test_malformed_and_empty_answers_are_clear_errors_and_not_stored(
    server: SamplingServer, tmp_path: Path, kind: str
) -> None:
    layer = Persistent(local(server, max_retries=0), tmp_path)
    server.fail_next(kind=kind)

    expected = "malformed response body" if kind == "malformed" else "no choices"
    with pytest.raises(ProviderError, match=expected):
        next(layer.sample(PROMPT))

    assert len(server.chat_requests()) == 1
    assert stored(layer) == 0
    assert next(layer.sample(PROMPT)).isdigit()
    assert stored(layer) == 1


def test_a_malformed_body_is_retried_as_litellm_retries_it(
    server: SamplingServer, tmp_path: Path
) -> None:
    """A 200 whose body is not JSON was garbled on the way: retried, and never stored."""
    layer = Persistent(local(server, max_retries=2), tmp_path)
    server.fail_next(kind="malformed")
    assert next(layer.sample(PROMPT)).isdigit()
    assert [r.status for r in server.chat_requests()] == [200, 200]
    server.fail_next(kind="malformed", count=3)
    with pytest.raises(ProviderRequestError, match="malformed response body after 3 attempts"):
        layer.draw(PROMPT, 2)  # the second sample needs a request
    assert stored(layer) == 1


def test_failed_chunk_keeps_the_paid_samples_of_the_others(server: SamplingServer) -> None:
    model = local(server, max_batch=2)
    server.fail_next(400)

    texts = next(model.samples(PROMPT, batch=4))

    assert texts.text.isdigit()
    assert sorted(r.status for r in server.chat_requests()) == [200, 400]


def test_a_connection_failure_is_no_http_status() -> None:
    # LiteLLM gives it the status 500: reported as "HTTP 500", it sent users looking for
    # a provider outage where nothing answered at all.
    from support import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    model = OpenAICompatible("tiny-llm", 1.0, url, api_key="k", max_retries=0)
    with pytest.raises(ProviderRequestError) as raised:
        model.query(Request.of(PROMPT), 1)
    assert raised.value.status_code is None and raised.value.retryable
    assert "no answer: a connection failure or a timeout" in str(raised.value)
    assert "HTTP 500" not in str(raised.value)


def test_retry_after_forms() -> None:
    import email.utils

    import httpx

    from mnimi_adapters.providers import _retry_after

    def status_error(headers: dict[str, str]) -> httpx.HTTPStatusError:
        request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
        response = httpx.Response(429, headers=headers, request=request)
        return httpx.HTTPStatusError("429", request=request, response=response)

    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert _retry_after(status_error({"retry-after": "2"})) == 2.0
    assert _retry_after(status_error({"retry-after": "2", "retry-after-ms": "1500"})) == 1.5
    assert 25 < (_retry_after(status_error({"Retry-After": later})) or 0) <= 30
    assert _retry_after(status_error({"retry-after": "soon"})) is None
    assert _retry_after(status_error({})) is None


# -- cache keys -----------------------------------------------------------------------


def test_alias_shares_a_cache_across_endpoints(tmp_path: Path) -> None:
    with SamplingServer(seed=3) as one, SamplingServer(seed=4) as two:
        first = OpenAICompatible("llama3", 1.0, one.url, api_key="k", alias="llama-3")
        second = OpenAICompatible("llama3-instruct", 1.0, two.url, api_key="k", alias="llama-3")

        a = list(islice(Persistent(first, tmp_path).sample(PROMPT), 2))
        b = list(islice(Persistent(second, tmp_path).sample(PROMPT), 2))

        assert a == b
        assert len(one.chat_requests()) == 2 and len(two.chat_requests()) == 0


def test_generic_endpoints_without_alias_never_share(tmp_path: Path) -> None:
    with SamplingServer(seed=5) as one, SamplingServer(seed=6) as two:
        first = OpenAICompatible("llama3", 1.0, one.url, api_key="k")
        second = OpenAICompatible("llama3", 1.0, two.url, api_key="k")
        request = Request.of(PROMPT)
        assert request_key(first.identity(), request) != request_key(second.identity(), request)

        next(Persistent(first, tmp_path).sample(PROMPT))
        next(Persistent(second, tmp_path).sample(PROMPT))

        assert len(one.chat_requests()) == 1 and len(two.chat_requests()) == 1


def test_identities() -> None:
    assert AI302("gpt-4o", 1.0, api_base="http://127.0.0.1:9/v1").identity() == {
        "model": "gpt-4o",
        "params": {"temperature": 1.0},
    }
    generic = LiteLLMModel("openai/llama3", 0.5, api_base="http://h/v1/", api_key="secret")
    assert generic.identity() == {
        "model": "openai/llama3",
        "params": {"temperature": 0.5},
        "endpoint": "http://h/v1",
    }
    aliased = LiteLLMModel("openai/llama3", 0.5, alias="l3", api_base="http://h/v1", timeout=3)
    assert aliased.identity() == {"model": "l3", "params": {"temperature": 0.5}}
    with_params = CloseAI("gpt-4o", 1.0, max_tokens=5, metadata={"run": 1}, seed=7)
    assert with_params.identity()["params"] == {"temperature": 1.0, "max_tokens": 5, "seed": 7}
    assert "secret" not in repr(generic) and "secret" not in json.dumps(generic.identity())
    with pytest.raises(TypeError, match="max_batch"):
        LiteLLMModel("openai/x", 1.0, n=3)


def test_litellm_options_never_split_keys_as_in_mnimi_cache(
    server: SamplingServer, tmp_path: Path
) -> None:
    from mnimi_adapters.litellm import MnimiCache

    logged: list[object] = []
    options: dict[str, Any] = {
        "ssl_verify": False,
        "tags": ["nightly"],
        "stream_timeout": 30,
        "litellm_trace_id": "trace-1",
        "region_name": "eu-west-1",
        "mock_timeout": False,
        "logger_fn": logged.append,  # Not JSON: it must not even reach the key.
        "input_cost_per_token": 1e-6,
    }
    plain = LiteLLMModel("openai/mock-model", 1.0, api_base=server.url, api_key="local")
    optioned = LiteLLMModel(
        "openai/mock-model", 1.0, api_base=server.url, api_key="local", **options
    )
    assert optioned.identity() == plain.identity()
    messages = [{"role": "user", "content": PROMPT}]
    per_call = LiteLLMRequest(tuple(messages), options)
    assert same_key(plain, Request.of(PROMPT), per_call)
    # The key MnimiCache gives the same litellm.completion call.
    cache = MnimiCache(str(tmp_path / "litellm"))
    call = {"model": "openai/mock-model", "api_base": server.url, "messages": messages}
    assert cache.get_cache_key(**call, **options) == request_key(plain.identity(), per_call)
    assert cache.get_cache_key(**call) == request_key(plain.identity(), per_call)

    # Sent with the options, replayed without them.
    first = next(Persistent(optioned, tmp_path / "cache").sample(PROMPT))
    assert next(Persistent(plain, tmp_path / "cache").sample(PROMPT)) == first
    assert len(server.chat_requests()) == 1 and logged
    # A mocked answer is keyed: it must never replay as the model's own.
    mocked = LiteLLMModel("openai/mock-model", 1.0, mock_response="42")
    assert mocked.identity() != LiteLLMModel("openai/mock-model", 1.0).identity()


def test_sampling_params_pass_through_and_are_part_of_the_key(server: SamplingServer) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "pick",
                "parameters": {"type": "object", "properties": {"value": {"type": "integer"}}},
            },
        }
    ]
    tooled = local(server, tools=tools, tool_choice="required", max_tokens=20)
    plain = local(server, max_tokens=20)

    call = next(tooled.samples(PROMPT))
    assert call.text == "" and call.finish_reason == "tool_calls"
    (tool_call,) = call.message["tool_calls"]
    assert tool_call["function"]["name"] == "pick"
    assert isinstance(json.loads(tool_call["function"]["arguments"]), dict)
    body = server.chat_requests()[-1].body
    assert body["tools"] == tools and body["max_tokens"] == 20

    json_request = Request(
        ({"role": "user", "content": PROMPT},),
        {"response_format": {"type": "json_object"}, "max_tokens": 3, "stream": True, "n": 9},
    )
    (answer,) = plain.query(json_request, 1)
    assert isinstance(answer, object) and "answer" in json.loads(getattr(answer, "text", ""))
    body = server.chat_requests()[-1].body
    assert body["response_format"] == {"type": "json_object"} and body["max_tokens"] == 3
    assert "stream" not in body and "n" not in body  # Transport decided by the layer.

    keys = {
        request_key(tooled.identity(), Request.of(PROMPT)),
        request_key(plain.identity(), Request.of(PROMPT)),
        request_key(plain.identity(), json_request),
        request_key(local(server, max_tokens=21).identity(), Request.of(PROMPT)),
    }
    assert len(keys) == 4


# -- credentials ----------------------------------------------------------------------


def test_api_key_is_read_at_the_first_request(
    server: SamplingServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    explicit = AI302("gpt-4o", 1.0, api_base=server.url, api_key="sk-explicit")
    assert next(explicit.sample(PROMPT)).isdigit()  # An explicit key needs no variable.
    server.reset()

    model = AI302("gpt-4o", 1.0, api_base=server.url, retry_wait=0.01)  # No key yet: fine.

    with pytest.raises(ProviderError, match="AI302_API_KEY"):
        next(model.sample(PROMPT))
    assert server.chat_requests() == []

    secret = "sk-302-very-secret-value"
    monkeypatch.setenv("AI302_API_KEY", secret)
    assert next(model.sample(PROMPT)).isdigit()
    assert server.chat_requests()[-1].headers["authorization"] == "***"

    server.fail_next(503)  # Logged as a retry...
    server.fail_next(401)  # ...then raised at once.
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderError) as caught:
        next(model.sample(PROMPT))
    assert caught.value.status_code == 401 and "retry 1 of 4" in caplog.text
    assert secret not in str(caught.value)
    assert secret not in caplog.text
    assert secret not in repr(model) and secret not in json.dumps(model.identity())


def test_openai_route_with_an_api_base_never_sends_openai_api_key(
    server: SamplingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-must-not-leak")
    with Relay(server) as relay:
        model = LiteLLMModel("openai/mock-model", 1.0, api_base=relay.url)
        assert model._resolve_key() == "EMPTY"
        assert next(model.sample(PROMPT)).isdigit()
        # Asked for by name, the variable is sent.
        wanted = LiteLLMModel(
            "openai/mock-model", 1.0, api_base=relay.url, api_key_env="OPENAI_API_KEY"
        )
        assert next(wanted.sample(PROMPT)).isdigit()

    assert relay.authorizations == ["Bearer EMPTY", "Bearer sk-openai-must-not-leak"]
    # OpenAI itself (no api_base): LiteLLM reads OPENAI_API_KEY, as it should.
    assert LiteLLMModel("openai/gpt-4o", 1.0)._resolve_key() is None


def test_per_call_transport_settings_win_over_the_models(server: SamplingServer) -> None:
    with Relay(server) as relay:
        model = OpenAICompatible(
            "mock-model", 1.0, relay.url, api_key="sk-model", max_retries=4, retry_wait=0.01
        )
        caller = LiteLLMRequest(
            ({"role": "user", "content": PROMPT},),
            {"api_key": SecretStr("sk-caller"), "max_retries": 0, "timeout": 0.3},
            max_batch=2,
        )
        assert "sk-caller" not in repr(caller)
        # The caller's timeout and max_retries=0: one attempt, given up within the timeout.
        server.fail_next(kind="timeout", hang=5.0)
        start = time.perf_counter()
        with pytest.raises(ProviderRequestError) as caught:
            model.refill(caller, 1)
        assert caught.value.attempts == 1 and time.perf_counter() - start < 4
        # The caller's max_batch: 4 samples in two requests of 2, sync and async.
        assert len(model.refill(caller, 4)) == 4
        assert len(asyncio.run(model.arefill(caller, 4))) == 4
        assert len(model.refill(Request.of(PROMPT), 1)) == 1  # The model's own settings.

    assert relay.authorizations == ["Bearer sk-caller"] * 5 + ["Bearer sk-model"]
    assert [r.body.get("n") for r in server.chat_requests()[1:]] == [2, 2, 2, 2, None]
    assert same_key(model, caller, Request.of(PROMPT))


def same_key(model: LiteLLMModel, *requests: Request) -> bool:
    return len({request_key(model.identity(), request) for request in requests}) == 1


def test_replication_needs_no_key_and_makes_no_request(
    server: SamplingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AI302_API_KEY", "sk-fill")
    filling = Persistent(AI302("gpt-4o", 1.0, api_base=server.url, max_batch=3), tmp_path)
    cached = list(islice(filling.sample(PROMPT, batch=3), 3))
    filling.close()
    monkeypatch.delenv("AI302_API_KEY")

    # The provider's real address, no key and no server: any call would fail loudly.
    model = AI302("gpt-4o", 1.0, max_batch=3)
    replay = Persistent(model, tmp_path, replication=True)

    assert list(islice(replay.sample(PROMPT, batch=3), 3)) == cached
    with pytest.raises(ReplicationCacheMiss) as caught:
        list(islice(replay.sample(PROMPT, batch=3), 4))
    assert caught.value.cached == 3 and caught.value.index == 3
    with pytest.raises(ReplicationCacheMiss):
        next(replay.sample("Another prompt"))
    assert model.total_requests() == 0
    assert len(server.chat_requests()) == 1


# -- samples and accounts -------------------------------------------------------------


def test_samples_carry_usage_shares_and_accounts_add_up(server: SamplingServer) -> None:
    model = local(server, max_batch=10)
    samples = list(islice(model.samples(PROMPT, batch=20), 40))

    # The server counts words: 7 prompt tokens per request, 1 token per number.
    assert model.total_token_count() == (4 * 7, 40)
    assert sum(s.prompt_tokens for s in samples) == 28
    assert sum(s.completion_tokens for s in samples) == 40
    assert model.total_query_time() > 0
    assert model.total_requests() == 4
    first = samples[0]
    assert first.model == "mock-model" and first.finish_reason == "stop"
    assert first.message == {"role": "assistant", "content": first.text}
    assert len({s.response_id for s in samples}) == 4
    assert len({s.draw_id for s in samples}) == 40


def test_provider_calls_are_marked_in_worker_threads_and_tasks(server: SamplingServer) -> None:
    model = local(server, max_batch=2)
    seen: list[bool] = []

    def logger_fn(_: object) -> None:  # LiteLLM calls it just before sending.
        seen.append(in_provider_call())

    request = Request(({"role": "user", "content": PROMPT},), {"logger_fn": logger_fn})
    model.refill(request, 4)  # Two chunks, two worker threads.
    asyncio.run(model.arefill(request, 4))  # Two chunks, two tasks.

    # Called before and after each of the 4 requests, always inside the marked call.
    assert len(seen) >= 4 and all(seen)
    assert not in_provider_call()


# -- named providers, replayed from cassettes -------------------------------------------


@pytest.mark.parametrize(
    ("factory", "cassette", "url", "sent_model", "texts"),
    [
        (
            lambda: AI302("gpt-4o", 1.0, max_batch=2),
            "ai302_gpt4o_n2.yaml",
            "https://api.302.ai/v1/chat/completions",
            "gpt-4o",
            ["92", "747"],
        ),
        (
            lambda: CloseAI("gpt-4o", 1.0, max_batch=2),
            "closeai_gpt4o_n2.yaml",
            "https://api.openai-proxy.org/v1/chat/completions",
            "gpt-4o",
            ["131", "561"],
        ),
        (
            lambda: FireworksAI(
                "accounts/fireworks/models/llama-v3p1-8b-instruct",
                1.0,
                alias="llama-3.1-8b",
                max_batch=2,
            ),
            "fireworks_llama31_8b_n2.yaml",
            "https://api.fireworks.ai/inference/v1/chat/completions",
            "accounts/fireworks/models/llama-v3p1-8b-instruct",
            ["427", "I choose 318."],
        ),
        (
            lambda: XMCP("ali/qwen2.5-7b-instruct", 1.0, alias="qwen2.5-7b", max_batch=2),
            "xmcp_qwen25_7b_n2.yaml",
            "https://llm.xmcp.ltd/chat/completions",
            "ali/qwen2.5-7b-instruct",
            ["666", "42"],
        ),
    ],
    ids=["AI302", "CloseAI", "FireworksAI", "XMCP"],
)
def test_named_provider_request_and_answer(
    monkeypatch: pytest.MonkeyPatch,
    factory: Callable[[], LiteLLMModel],
    cassette: str,
    url: str,
    sent_model: str,
    texts: list[str],
) -> None:
    model = factory()
    monkeypatch.setenv(model.api_key_env or "", "dummy-key-for-cassette")
    sent: list[Any] = []

    def capture(request: Any) -> Any:
        sent.append(request)
        return request

    with vcr.use_cassette(
        str(CASSETTES / cassette),
        record_mode="none",
        filter_headers=["authorization"],
        match_on=["method", "scheme", "host", "port", "path", "query", "body"],
        before_record_request=capture,
    ) as replay:
        samples = list(islice(model.samples(PROMPT, batch=2), 2))
        assert replay.all_played

    assert sent and sent[-1].method == "POST" and sent[-1].uri == url
    body = json.loads(sent[-1].body)
    assert body["model"] == sent_model and body["n"] == 2 and body["temperature"] == 1.0
    assert "authorization" not in {name.lower() for name in sent[-1].headers}
    assert [s.text for s in samples] == texts
    assert all(s.finish_reason == "stop" and s.response_id for s in samples)
    prompt_tokens, completion_tokens = model.total_token_count()
    assert prompt_tokens > 0 and completion_tokens > 0
    assert model.total_requests() == 1


def test_priced_models_get_a_cost_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI302_API_KEY", "dummy-key-for-cassette")
    model = AI302("gpt-4o", 1.0, max_batch=2)
    with vcr.use_cassette(
        str(CASSETTES / "ai302_gpt4o_n2.yaml"),
        record_mode="none",
        filter_headers=["authorization"],
    ):
        first = next(model.samples(PROMPT, batch=2))
    assert first.cost is not None and first.cost > 0
    assert model.total_cost() == pytest.approx(2 * first.cost)


async def _take(iterator: AsyncIterator[str], count: int) -> AsyncIterator[str]:
    taken = 0
    async for item in iterator:
        yield item
        taken += 1
        if taken == count:
            return


def test_a_model_litellm_has_no_price_for_prints_nothing(
    server: SamplingServer, capfd: pytest.CaptureFixture[str]
) -> None:
    # LiteLLM's cost lookup prints a "Provider List" banner for a model it cannot place;
    # a plain litellm.completion prints nothing, and neither may the provider layer.
    model = local(server, alias="unpriced-for-banner-test")
    samples = [s for _ in range(2) for s in islice(model.samples(PROMPT, batch=2), 2)]
    assert len(samples) == 4 and all(s.cost is None for s in samples)
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "Provider List" not in captured.err
