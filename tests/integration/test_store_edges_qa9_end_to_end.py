"""Store edges end to end: a provider's unencodable answer, a linked database pruned by
the ``mnimi`` command, Redis values and URLs.

The provider is a local HTTP server answering OpenAI-style JSON whose content escapes a
lone surrogate; the Redis tests run against the session's server.
"""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from support import NumberModel, drop_namespace

from mnimi_adapters import OpenAICompatible
from mnimi_adapters.cli import main
from mnimi_adapters.core import DiskStore, Persistent, Sample, StoreError
from mnimi_adapters.core.stores import RedisStore

LONE = "caf\udcff"


class _Answers(http.server.BaseHTTPRequestHandler):
    """Chat completions whose content is the JSON escape of a lone surrogate."""

    calls: list[int]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.calls.append(1)
        content = f"caf\\udcff {len(self.calls)}"
        # Written as text: json.dumps of the str would refuse the lone surrogate.
        body = (
            f'{{"id":"r{len(self.calls)}","object":"chat.completion","created":1,"model":"m",'
            f'"choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},'
            '"finish_reason":"stop"}],'
            '"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[tuple[str, list[int]]]:
    """The base URL of a local OpenAI-compatible server, and the list of its requests."""
    calls: list[int] = []
    handler = type("Answers", (_Answers,), {"calls": calls})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", calls
    finally:
        server.shutdown()
        thread.join()


def test_a_provider_answer_with_a_lone_surrogate_is_paid_once(
    tmp_path: Path, provider: tuple[str, list[int]]
) -> None:
    url, calls = provider
    texts = []
    for _ in range(2):
        model = Persistent(
            OpenAICompatible("m", 1.0, url, api_key="sk-test", max_retries=0), tmp_path
        )
        texts.append(next(model.sample("hello")))
        model.close()
    assert texts == [f"{LONE} 1", f"{LONE} 1"]
    assert len(calls) == 1
    code, out, _ = run_cli("verify", tmp_path)
    assert code == 0, out


def run_cli(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_prune_refuses_a_directory_whose_database_is_a_link(tmp_path: Path) -> None:
    mine = tmp_path / "my_real_cache"
    model = Persistent(NumberModel(), mine)
    for prompt in range(5):
        next(model.sample(f"q{prompt}"))
    model.close()
    received = tmp_path / "received_dir"
    received.mkdir(mode=0o700)
    (received / "cache.db").symlink_to(mine / "cache.db")
    code, out, err = run_cli("prune", received, "--max-size", "0")
    assert code != 0, out
    assert f"{received / 'cache.db'} is a symbolic link" in err
    with DiskStore(mine, create=False) as store:
        assert sum(summary.length for summary in store.summaries()) == 5


# -- Redis ------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_keeps_lone_surrogates_losslessly(redis_url: str) -> None:
    sample = Sample(text=LONE, message={"role": "assistant", "content": "\ud800 ☕"})
    plain = Sample.of_text("café ☕")
    record = {"model": "m\udcff", "messages": [{"role": "user", "content": "é \udfff"}]}
    with RedisStore(redis_url) as store:
        assert len(store.append("k", [sample, plain], {**record, "params": {}})) == 2
    with RedisStore(redis_url) as store:
        assert store.get("k", 0) == sample
        assert store.read("k", 1) == plain
        assert store.info("k")["request"] == {**record, "params": {}}  # type: ignore[index]
        assert [(row.model, row.samples) for row in store.totals().models] == [("m\udcff", 2)]
        assert store.check().ok
        import redis

        client = redis.Redis.from_url(redis_url.partition("?")[0], socket_timeout=5)
        stored = client.hget(f"mnimi:{store.namespace}:s:k", "1")
        client.close()
        assert stored is not None and "café ☕" in stored.decode()  # ordinary text stays UTF-8


@pytest.mark.redis
@pytest.mark.parametrize("path", ["/abc", "/0/my-project", "/-1", "/1x"])
def test_a_redis_path_that_is_no_database_number_is_refused(redis_url: str, path: str) -> None:
    parts = urlsplit(redis_url)
    url = urlunsplit(parts._replace(path=path))
    with pytest.raises(StoreError) as refused:
        RedisStore(url)
    message = str(refused.value)
    assert message.startswith("invalid Redis URL")
    assert repr(path) in message
    # Nothing was written to database 0 in its place.
    with RedisStore(urlunsplit(parts._replace(path="/0")), create=False, check_format=False) as db0:
        assert list(db0.names()) == []


@pytest.mark.redis
def test_a_redis_database_number_in_the_path_still_selects_it(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    in_db1 = urlunsplit(parts._replace(path="/1"))
    try:
        for path in ("/1", "/1/", "/%31"):
            with RedisStore(urlunsplit(parts._replace(path=path))) as store:
                store.append(path, [Sample.of_text("x")], {"model": "m", "messages": []})
        with RedisStore(in_db1, create=False) as store:
            assert sorted(store.keys()) == ["/%31", "/1", "/1/"]
    finally:
        drop_namespace(in_db1)
    code, _, err = run_cli("stats", urlunsplit(parts._replace(path="/abc")))
    assert code != 0
    assert "invalid Redis URL" in err
