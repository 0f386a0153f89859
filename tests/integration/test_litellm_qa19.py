"""MnimiCache: retries of streamed misses, replicas assigned over, malformed and empty answers.

Real LiteLLM against the local sampling server, which fails the requests it is told to.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from mnimi_adapters import ProviderRequestError, ReplicationCacheMiss
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

API_KEY = "sk-test"
MODEL = "openai/mock-model"


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=19) as running:
        yield running


@pytest.fixture
def cache(server: SamplingServer, tmp_path: Path) -> Iterator[MnimiCache]:
    server.reset()
    with MnimiCache(str(tmp_path)) as installed:
        yield installed
    installed.close()
    server.reset()  # any fault a failed test left


def kwargs(server: SamplingServer, prompt: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "api_base": server.url,
        "api_key": API_KEY,
        **extra,
    }


def streamed(server: SamplingServer, prompt: str, is_async: bool, **extra: Any) -> str:
    """The text of a streamed call, read to its end."""
    call = kwargs(server, prompt, stream=True, **extra)
    if is_async:

        async def read() -> list[Any]:
            return [chunk async for chunk in await litellm.acompletion(**call)]

        chunks = asyncio.run(read())
    else:
        chunks = list(litellm.completion(**call))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def statuses(server: SamplingServer) -> list[int]:
    return [r.status for r in server.chat_requests()]


FAULTS = {
    "500": {"status": 500},
    "429": {"status": 429, "retry_after": 0.01},
    "timeout": {"kind": "timeout", "hang": 5.0},
}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_streamed_miss_is_retried_after_a_failure_before_its_first_chunk(
    server: SamplingServer, cache: MnimiCache, fault: str, is_async: bool
) -> None:
    """As LiteLLM alone retries it: the caller has seen nothing of the failed attempt."""
    server.fail_next(**FAULTS[fault])
    prompt = f"Stream retried {fault} {is_async}"
    answer = streamed(server, prompt, is_async, num_retries=2, timeout=1.0)
    assert answer
    assert len(server.chat_requests()) == 2
    assert statuses(server)[-1] == 200
    # Stored once, as an unstreamed retried miss is: the replay sends nothing.
    assert streamed(server, prompt, is_async) == answer
    assert len(server.chat_requests()) == 2


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_streamed_miss_retries_as_often_as_the_caller_says(
    server: SamplingServer, cache: MnimiCache, is_async: bool
) -> None:
    server.fail_next(500, count=10)
    with pytest.raises(litellm.InternalServerError):
        streamed(server, f"Stream gives up {is_async}", is_async, num_retries=1)
    assert statuses(server) == [500, 500]  # the first attempt and one retry
    server.reset()  # the faults left
    answer = streamed(server, f"Stream gives up {is_async}", is_async)
    assert answer and statuses(server) == [200]  # the failures stored nothing (law 8)


# ---------------------------------------------------------------------------------------
# A MnimiCache assigned over an installed replica
# ---------------------------------------------------------------------------------------


def answered(server: SamplingServer, prompt: str, how: str) -> str:
    """The text of a call made ``how``: sync, async, or through LiteLLM's own
    ``completion`` (bound before any cache was made: it reaches the cache through
    LiteLLM's cache handler, past the wrapped entry points)."""
    call = kwargs(server, prompt)
    if how == "async":
        response = asyncio.run(litellm.acompletion(**call))
    elif how == "unwrapped":
        response = litellm.main.completion(**call)
    else:
        response = litellm.completion(**call)
    return str(response.choices[0].message.content)


def _installed(path: Path) -> MnimiCache:
    return MnimiCache(str(path), replication=True).install()


def _assigned_and_used(path: Path) -> MnimiCache:
    # Assigned, the replica is installed at its first call (a hit here).
    replica = litellm.cache = MnimiCache(str(path), replication=True)
    answered_by_litellm = litellm.completion(model=MODEL, messages=[], mock_response="x")
    assert answered_by_litellm.choices[0].message.content == "x"
    assert replica._installed
    return replica


@pytest.mark.parametrize("how", ["sync", "async", "unwrapped"])
@pytest.mark.parametrize(
    "replicate", [_installed, _assigned_and_used], ids=["installed", "assigned"]
)
def test_a_replica_takes_litellm_cache_back_from_a_mnimi_cache_assigned_over_it(
    server: SamplingServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    how: str,
    replicate: Callable[[Path], MnimiCache],
) -> None:
    """A library's or a notebook cell's ``litellm.cache = MnimiCache(...)`` replaced an
    installed replica in silence, and the new cache sent what the replica lacked."""
    server.reset()
    with MnimiCache(str(tmp_path / "run")) as recorder:
        recorded = answered(server, "Recorded", "sync")
    recorder.close()
    server.reset()
    saved = litellm.cache
    replica = replicate(tmp_path / "run")
    other = MnimiCache(str(tmp_path / "other"))
    try:
        litellm.cache = other
        assert answered(server, "Recorded", how) == recorded
        assert litellm.cache is replica
        litellm.cache = other
        with pytest.raises(ReplicationCacheMiss):
            answered(server, "Never recorded", how)
        assert litellm.cache is replica and not other._installed
    finally:
        replica.uninstall()
        replica.close()
        other.close()
        litellm.cache = saved
    assert server.requests == []
    assert "litellm.cache goes back to it (it was set to MnimiCache)" in caplog.text


# ---------------------------------------------------------------------------------------
# Empty answers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_an_answer_without_choices_names_the_model_plainly_and_is_not_stored(
    server: SamplingServer, cache: MnimiCache, is_async: bool
) -> None:
    """Its message began with a private class's repr, ``_CacheProvider('openai/...', 1.0)``.

    Not retried, as an empty or filtered choice is not: it is the provider's answer, and
    it is never a sample (law 8).
    """
    server.fail_next(kind="empty")
    prompt = f"Empty {is_async}"
    with pytest.raises(ProviderRequestError) as caught:
        if is_async:
            asyncio.run(litellm.acompletion(**kwargs(server, prompt, num_retries=2)))
        else:
            litellm.completion(**kwargs(server, prompt, num_retries=2))
    assert str(caught.value).startswith(f"model {MODEL!r} answered with no choices")
    assert len(server.chat_requests()) == 1
    assert litellm.completion(**kwargs(server, prompt)).choices[0].message.content
    assert len(server.chat_requests()) == 2  # nothing was stored: drawn afresh
