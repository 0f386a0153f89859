"""A replication MnimiCache answers every LiteLLM call, whatever switches the caller passes.

Real ``litellm.completion``, ``acompletion`` and ``Router`` calls against the local sampling
server: a call is served from the store or raises ``ReplicationCacheMiss``, and the server's
log shows that nothing was sent (law 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from mnimi_adapters import MnimiError, ReplicationCacheMiss, StoreError
from mnimi_adapters.core.stores import open_store
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

API_KEY = "sk-test"
MODEL = "openai/mock-model"
GROUP = "chat"

#: The per-call switches that make LiteLLM skip its cache.
SWITCHES: dict[str, dict[str, Any]] = {
    "caching=False": {"caching": False},
    "no-cache": {"cache": {"no-cache": True}},
    "no-cache, no-store": {"cache": {"no-cache": True, "no-store": True}},
}


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=5) as running:
        yield running


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def call(server: SamplingServer, prompt: str, **kwargs: Any) -> Any:
    return litellm.completion(
        model=MODEL, messages=messages(prompt), api_base=server.url, api_key=API_KEY, **kwargs
    )


async def acall(server: SamplingServer, prompt: str, **kwargs: Any) -> Any:
    return await litellm.acompletion(
        model=MODEL, messages=messages(prompt), api_base=server.url, api_key=API_KEY, **kwargs
    )


def router(server: SamplingServer, **options: Any) -> litellm.Router:
    deployment = {"model": MODEL, "api_base": server.url, "api_key": API_KEY}
    # A Router retries any failure, a replication miss too, after a pause: not in a test.
    return litellm.Router(
        model_list=[{"model_name": GROUP, "litellm_params": deployment}], num_retries=0, **options
    )


def text(response: Any) -> str:
    return str(response.choices[0].message.content)


def sent(server: SamplingServer) -> int:
    return len(server.chat_requests())


def key_of(cache: MnimiCache, server: SamplingServer, prompt: str) -> str:
    return cache.get_cache_key(
        model=MODEL, messages=messages(prompt), api_base=server.url, api_key=API_KEY
    )


def record(server: SamplingServer, path: Path, prompt: str) -> str:
    with MnimiCache(str(path)) as recorder:
        recorded = text(call(server, prompt))
    recorder.close()
    return recorded


@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
def test_switched_off_calls_are_answered_from_the_store(
    server: SamplingServer, tmp_path: Path, switches: dict[str, Any]
) -> None:
    recorded = record(server, tmp_path, "Recorded")
    server.reset()
    with MnimiCache(str(tmp_path), replication=True) as replica:
        assert text(call(server, "Recorded", **switches)) == recorded
        assert text(asyncio.run(acall(server, "Recorded", **switches))) == recorded
        with pytest.raises(ReplicationCacheMiss) as raised:
            call(server, "Never recorded", **switches)
        assert raised.value.key == key_of(replica, server, "Never recorded")
        assert raised.value.key in str(raised.value)
        with pytest.raises(ReplicationCacheMiss) as araised:
            asyncio.run(acall(server, "Never recorded", **switches))
        assert araised.value.key == raised.value.key
    replica.close()
    assert sent(server) == 0


@pytest.mark.parametrize("cache_responses", [False, True])
def test_a_router_sends_nothing_whatever_its_settings(
    server: SamplingServer, tmp_path: Path, cache_responses: bool
) -> None:
    server.reset()
    with MnimiCache(str(tmp_path)) as recorder:
        # A Router that lets the cache see its calls records them, keyed by model group.
        recorded = text(router(server, cache_responses=True).completion(GROUP, messages("Hi")))
    recorder.close()
    server.reset()
    replaying = router(server, cache_responses=cache_responses)
    with MnimiCache(str(tmp_path), replication=True) as replica:
        assert text(replaying.completion(GROUP, messages("Hi"))) == recorded
        assert text(asyncio.run(replaying.acompletion(GROUP, messages("Hi")))) == recorded
        for send in (
            lambda: replaying.completion(GROUP, messages("Bye")),
            lambda: asyncio.run(replaying.acompletion(GROUP, messages("Bye"))),
        ):
            with pytest.raises(ReplicationCacheMiss) as raised:
                send()
            assert raised.value.key in str(raised.value)
            assert "Bye" in str(raised.value)
    replica.close()
    assert sent(server) == 0


def test_outside_replication_the_switches_keep_their_meaning(
    server: SamplingServer, tmp_path: Path
) -> None:
    server.reset()
    with MnimiCache(str(tmp_path)) as cache:
        for switches in SWITCHES.values():
            call(server, "Uncached", **switches)
        asyncio.run(acall(server, "Uncached", caching=False))
        assert sent(server) == len(SWITCHES) + 1
        router(server).completion(GROUP, messages("Uncached"))
        assert sent(server) == len(SWITCHES) + 2
    cache.close()
    # Nothing was stored, not even an empty store: a replica has none of those calls.
    with (
        MnimiCache(str(tmp_path), replication=True) as replica,
        pytest.raises(StoreError, match="no cache at"),
    ):
        call(server, "Uncached")
    replica.close()


def test_the_cache_survives_litellm_cache_being_reset(
    server: SamplingServer, tmp_path: Path
) -> None:
    recorded = record(server, tmp_path, "Recorded")
    server.reset()
    saved = litellm.cache
    try:
        with MnimiCache(str(tmp_path), replication=True) as replica:
            # What DSPy does on its first LiteLLM call in a process.
            litellm.cache = None
            assert text(call(server, "Recorded", caching=False)) == recorded
            assert litellm.cache is replica
        replica.close()
    finally:
        litellm.cache = saved
    assert sent(server) == 0


def test_the_newest_installed_cache_decides(server: SamplingServer, tmp_path: Path) -> None:
    recorded = record(server, tmp_path, "Recorded")
    server.reset()
    replica = MnimiCache(str(tmp_path), replication=True)
    ordinary = MnimiCache(str(tmp_path / "other"))
    with replica:
        with ordinary:
            call(server, "Recorded", caching=False)
            assert sent(server) == 1  # the ordinary cache lets the switch through
        assert text(call(server, "Recorded", caching=False)) == recorded
    replica.close()
    ordinary.close()
    assert sent(server) == 1


def test_the_responses_api_is_answered_from_the_store_not_sent(
    server: SamplingServer, tmp_path: Path
) -> None:
    server.reset()
    options = {"model": MODEL, "input": "Hi", "api_base": server.url, "api_key": API_KEY}
    open_store(tmp_path).close()  # an empty store: a replica of a run that made no call
    with MnimiCache(str(tmp_path), replication=True) as replica:
        with pytest.raises(ReplicationCacheMiss):
            litellm.responses(**options, caching=False)
        with pytest.raises(ReplicationCacheMiss):
            asyncio.run(litellm.aresponses(**options))
        with pytest.raises(ReplicationCacheMiss):
            litellm.responses(**options, stream=True)
    replica.close()
    assert server.requests == []


def test_a_replica_of_a_path_without_a_cache_says_so_and_creates_nothing(
    server: SamplingServer, tmp_path: Path
) -> None:
    server.reset()
    typo = tmp_path / "typo"
    with (
        MnimiCache(str(typo), replication=True) as replica,
        pytest.raises(StoreError, match="no cache at"),
    ):
        call(server, "Anything")
    replica.close()
    assert not typo.exists()
    assert server.requests == []


def test_litellm_calls_the_cache_does_not_answer_are_refused_by_a_replica(
    server: SamplingServer, tmp_path: Path
) -> None:
    server.reset()
    endpoint = {"api_base": server.url, "api_key": API_KEY}
    # Outside replication they are sent as they are (whatever the local server answers).
    with MnimiCache(str(tmp_path)) as cache, contextlib.suppress(Exception):
        litellm.embedding(model="openai/embedder", input=["hi"], **endpoint)
    cache.close()
    assert len(server.requests) == 1
    open_store(tmp_path).close()
    server.reset()
    with MnimiCache(str(tmp_path), replication=True) as replica:
        with pytest.raises(MnimiError, match=r"litellm\.embedding is not cached"):
            litellm.embedding(model="openai/embedder", input=["hi"], **endpoint)
        with pytest.raises(MnimiError, match=r"litellm\.aembedding is not cached"):
            asyncio.run(litellm.aembedding(model="openai/embedder", input=["hi"], **endpoint))
        with pytest.raises(MnimiError, match="not cached"):
            litellm.image_generation(model="openai/dall-e-3", prompt="a cat", **endpoint)
        with pytest.raises(MnimiError, match="not cached"):
            litellm.moderation(input="hi", **endpoint)
    replica.close()
    assert server.requests == []
