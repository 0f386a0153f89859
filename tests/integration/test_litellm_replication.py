"""A replication MnimiCache answers every LiteLLM call, whatever switches the caller passes.

Real ``litellm.completion``, ``acompletion`` and ``Router`` calls, and LiteLLM's other entry
points, sync and async, against the local sampling server: a call is served from the store
or raises ``ReplicationCacheMiss`` (or, for what the cache does not answer, ``MnimiError``),
and the server's log shows that nothing was sent (law 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from mnimi_adapters import MnimiError, ReplicationCacheMiss, StoreError, independent
from mnimi_adapters.core.stores import open_store
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

API_KEY = "sk-test"
MODEL = "openai/mock-model"
GROUP = "chat"
#: A model whose text completions LiteLLM sends as chat completions (it sends those of other
#: ``openai/`` models to ``/v1/completions``, which the local server does not serve).
TEXT_MODEL = "openai/gpt-4o-mini"

#: The per-call switches that make LiteLLM skip its cache.
SWITCHES: dict[str, dict[str, Any]] = {
    "caching=False": {"caching": False},
    "no-cache": {"cache": {"no-cache": True}},
    "no-store": {"cache": {"no-store": True}},
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


@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
def test_a_switched_off_call_takes_no_position_in_a_replica_either(
    server: SamplingServer, tmp_path: Path, switches: dict[str, Any]
) -> None:
    # Recorded in independent(), a switched-off call was sent and took no position; the
    # replica answered it from the store at the next position, so each later call read
    # the sample of the one before it, and the last missed.
    def run(replication: bool) -> list[str]:
        with MnimiCache(str(tmp_path), replication=replication) as cache, independent():
            answers = [text(call(server, "Pick", **extra)) for extra in ({}, switches, {}, {})]
            answers.append(text(asyncio.run(acall(server, "Pick", **switches))))
            answers.append(text(call(server, "Pick")))
        cache.close()
        return answers

    server.reset()
    recorded = run(replication=False)
    replayed = run(replication=True)
    unswitched = [0, 2, 3, 5]
    assert [replayed[i] for i in unswitched] == [recorded[i] for i in unswitched]
    assert sent(server) == 6  # the replica sent nothing


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


def _assign_litellm_cache() -> None:
    litellm.cache = litellm.Cache()


def _enable_litellm_cache() -> None:
    litellm.disable_cache()
    litellm.enable_cache()


@pytest.mark.parametrize(
    "replace",
    [_assign_litellm_cache, _enable_litellm_cache],
    ids=["litellm.cache = Cache()", "disable_cache(); enable_cache()"],
)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_replica_replaced_by_litellm_s_own_cache_still_answers(
    server: SamplingServer, tmp_path: Path, replace: Callable[[], None], is_async: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Code that sets up LiteLLM's own cache (a library's init, a notebook cell) replaced
    a replica in silence: LiteLLM's cache answered, and sent every call it lacked."""
    recorded = record(server, tmp_path, "Recorded")
    server.reset()
    saved = litellm.cache
    ask = (lambda p: asyncio.run(acall(server, p))) if is_async else (lambda p: call(server, p))
    try:
        with MnimiCache(str(tmp_path), replication=True) as replica:
            replace()
            assert text(ask("Recorded")) == recorded
            assert litellm.cache is replica
            replace()
            with pytest.raises(ReplicationCacheMiss):
                ask("Never recorded")
        replica.close()
    finally:
        litellm.cache = saved
    assert sent(server) == 0
    assert "litellm.cache goes back to it" in caplog.text


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


def test_a_cache_assigned_to_litellm_cache_refuses_as_an_installed_one(
    server: SamplingServer, tmp_path: Path
) -> None:
    # LiteLLM's own way to set a cache. Only install() wrapped LiteLLM's entry points, so
    # an assigned replica let caching=False, a default Router and embeddings send.
    recorded = record(server, tmp_path, "Recorded")
    server.reset()
    replica = litellm.cache = MnimiCache(str(tmp_path), replication=True)
    try:
        with pytest.raises(ReplicationCacheMiss):
            call(server, "Never recorded", caching=False)
        with pytest.raises(ReplicationCacheMiss):
            router(server).completion(GROUP, messages("Never recorded"))
        with pytest.raises(MnimiError, match="not cached"):
            litellm.embedding(model="openai/e", input=["hi"], api_base=server.url, api_key=API_KEY)
        assert text(call(server, "Recorded")) == recorded
        assert text(asyncio.run(acall(server, "Recorded", caching=False))) == recorded
        # Set to None behind its back (DSPy does, at its first call), a replica stays: the
        # calls that follow must not reach a provider.
        litellm.cache = None
        with pytest.raises(ReplicationCacheMiss):
            call(server, "Never recorded")
        assert litellm.cache is replica
    finally:
        replica.uninstall()
    assert sent(server) == 0
    assert not server.requests
    assert litellm.cache is None


def client_create(server: SamplingServer, prompt: str, **kwargs: Any) -> Any:
    """A chat completion through LiteLLM's OpenAI-style client, ``litellm.LiteLLM``."""
    client = litellm.LiteLLM(api_key=API_KEY)
    return client.chat.completions.create(
        model=MODEL, messages=messages(prompt), api_base=server.url, **kwargs
    )


async def aclient_create(server: SamplingServer, prompt: str, **kwargs: Any) -> Any:
    """The same through the client's async completions (made with ``acompletion=True``)."""
    chat = litellm.main.Chat({"api_key": API_KEY, "acompletion": True}, router_obj=None)
    return await chat.completions.create(
        model=MODEL, messages=messages(prompt), api_base=server.url, **kwargs
    )


@pytest.mark.parametrize("switches", [{}, *SWITCHES.values()], ids=["plain", *SWITCHES])
def test_litellms_client_class_is_answered_from_the_store_and_sends_nothing(
    server: SamplingServer, tmp_path: Path, switches: dict[str, Any]
) -> None:
    # Its ``create`` calls LiteLLM's ``completion`` as ``litellm.main`` imported it, with the
    # constructor's ``locals()`` (``self`` too): any cache failed after the request was sent.
    recorded = record(server, tmp_path, "Recorded")
    server.reset()
    with MnimiCache(str(tmp_path), replication=True):
        assert text(client_create(server, "Recorded", **switches)) == recorded
        assert text(asyncio.run(aclient_create(server, "Recorded", **switches))) == recorded
        with pytest.raises(ReplicationCacheMiss):
            client_create(server, "Never recorded", **switches)
        with pytest.raises(ReplicationCacheMiss):
            asyncio.run(aclient_create(server, "Never recorded", **switches))
    assert sent(server) == 0


def test_litellms_client_class_is_cached_outside_replication(
    server: SamplingServer, tmp_path: Path
) -> None:
    server.reset()
    with MnimiCache(str(tmp_path)), independent():
        first = [text(client_create(server, "Client")) for _ in range(2)]
        first.append(text(asyncio.run(aclient_create(server, "Client"))))
    assert sent(server) == 3
    assert len(set(first)) == 3
    with MnimiCache(str(tmp_path)), independent():
        again = [text(client_create(server, "Client")) for _ in range(2)]
        again.append(text(asyncio.run(aclient_create(server, "Client"))))
        # The caller's switch keeps its meaning outside replication: sent, not stored.
        client_create(server, "Client", caching=False)
    assert again == first
    assert sent(server) == 4


def test_listing_models_at_the_provider_is_refused_by_a_replica(
    server: SamplingServer, tmp_path: Path
) -> None:
    open_store(tmp_path).close()
    server.reset()
    endpoint = {"custom_llm_provider": "openai", "api_base": server.url, "api_key": API_KEY}
    with MnimiCache(str(tmp_path), replication=True):
        # LiteLLM's own list (no request) stays available.
        assert isinstance(litellm.get_valid_models(), list)
        with pytest.raises(MnimiError, match=r"litellm\.get_valid_models is not cached"):
            litellm.get_valid_models(check_provider_endpoint=True, **endpoint)
    assert server.requests == []


# -- every entry point, async ones especially ---------------------------------------------
#
# Each call below reaches the local server when nothing stops it (``api_base``); the ones
# marked were sent by a replication cache before it stopped them: LiteLLM's async text
# completion (the sync one flagged ``acompletion=True``, which skips every cache), the
# ``client``-made entry points LiteLLM's ``CallTypes`` does not name, the untyped senders,
# and the helpers that hand the caller's cache switches to LiteLLM's own ``completion``.

Endpoint = dict[str, Any]


async def _drained(stream: Awaitable[Any]) -> list[Any]:
    return [chunk async for chunk in await stream]


async def _tool(call: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.id, "content": "1"}


_TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]

ASYNC_CALLS: dict[str, Callable[[Endpoint], Awaitable[Any]]] = {
    "acompletion": lambda e: litellm.acompletion(model=MODEL, messages=messages("N"), **e),
    "aresponses": lambda e: litellm.aresponses(model=MODEL, input="N", caching=False, **e),
    # sent before:
    "atext_completion": lambda e: litellm.atext_completion(model=TEXT_MODEL, prompt="N", **e),
    "atext_completion stream": lambda e: _drained(
        litellm.atext_completion(model=TEXT_MODEL, prompt="N", stream=True, **e)
    ),
    "atext_completion caching=False": lambda e: litellm.atext_completion(
        model=TEXT_MODEL, prompt="N", caching=False, **e
    ),
    "aembedding": lambda e: litellm.aembedding(model="openai/embedder", input=["N"], **e),
    "aimage_generation": lambda e: litellm.aimage_generation(
        model="openai/dall-e-3", prompt="N", **e
    ),
    "amoderation": lambda e: litellm.amoderation(input="N", **e),
    # sent before:
    "aimage_variation": lambda e: litellm.aimage_variation(
        image=b"N", model="openai/dall-e-2", **e
    ),
    "alist_batches": lambda e: litellm.alist_batches(custom_llm_provider="openai", **e),
    "alist_evals": lambda e: litellm.alist_evals(custom_llm_provider="openai", **e),
    "avideo_status": lambda e: litellm.avideo_status(video_id="v", model="openai/sora-2", **e),
    "acount_tokens": lambda e: litellm.acount_tokens(model=TEXT_MODEL, messages=messages("N"), **e),
    "realtime_health_check": lambda e: litellm.realtime_health_check(
        model="gpt-4o-realtime", custom_llm_provider="openai", **e
    ),
    "acompletion_with_retries caching=False": lambda e: litellm.acompletion_with_retries(
        model=MODEL, messages=messages("N"), caching=False, num_retries=1, **e
    ),
    "aresponses_with_retries caching=False": lambda e: litellm.aresponses_with_retries(
        model=MODEL, input="N", caching=False, num_retries=1, **e
    ),
    # through litellm.acompletion, wrapped: answered (a miss) before and after
    "async_completion_with_fallbacks caching=False": lambda e: (
        litellm.async_completion_with_fallbacks(
            model=MODEL, messages=messages("N"), fallbacks=[MODEL], caching=False, **e
        )
    ),
    "arun_tool_loop caching=False": lambda e: litellm.arun_tool_loop(
        model=MODEL, messages=messages("N"), tools=_TOOLS, execute_tool=_tool, caching=False, **e
    ),
}

SYNC_CALLS: dict[str, Callable[[Endpoint], Any]] = {
    "text_completion": lambda e: litellm.text_completion(model=TEXT_MODEL, prompt="N", **e),
    # sent before:
    "text_completion caching=False": lambda e: litellm.text_completion(
        model=TEXT_MODEL, prompt="N", caching=False, **e
    ),
    "text_completion no-cache": lambda e: litellm.text_completion(
        model=TEXT_MODEL, prompt="N", cache={"no-cache": True}, **e
    ),
    "completion_with_retries caching=False": lambda e: litellm.completion_with_retries(
        model=MODEL, messages=messages("N"), caching=False, num_retries=1, **e
    ),
    "responses_with_retries caching=False": lambda e: litellm.responses_with_retries(
        model=MODEL, input="N", caching=False, num_retries=1, **e
    ),
    "image_variation": lambda e: litellm.image_variation(image=b"N", model="openai/dall-e-2", **e),
    "list_batches": lambda e: litellm.list_batches(custom_llm_provider="openai", **e),
    "list_evals": lambda e: litellm.list_evals(custom_llm_provider="openai", **e),
    "video_status": lambda e: litellm.video_status(video_id="v", model="openai/sora-2", **e),
}


@pytest.fixture
def replica(server: SamplingServer, tmp_path: Path) -> Iterator[MnimiCache]:
    """A replication cache over an empty store: a replica of a run that made no call."""
    open_store(tmp_path).close()
    server.reset()
    with MnimiCache(str(tmp_path), replication=True) as installed:
        yield installed
    installed.close()


def _needs_entry_point(case: str) -> None:
    """Skip a case whose LiteLLM function (its first word) this LiteLLM does not have."""
    function = case.split()[0]
    if not hasattr(litellm, function):
        pytest.skip(f"litellm {version('litellm')} has no {function}")


@pytest.mark.parametrize("name", ASYNC_CALLS)
def test_no_async_entry_point_sends_under_replication(
    server: SamplingServer, replica: MnimiCache, name: str
) -> None:
    _needs_entry_point(name)
    endpoint = {"api_base": server.url, "api_key": API_KEY}
    # A miss or a refusal, in LiteLLM's wrapping at most (a fallback loop re-raises it).
    with pytest.raises(Exception) as raised:
        asyncio.run(ASYNC_CALLS[name](endpoint))
    assert isinstance(raised.value, MnimiError) or "replication mode" in str(raised.value)
    assert server.requests == []


@pytest.mark.parametrize("name", SYNC_CALLS)
def test_no_sync_entry_point_sends_under_replication(
    server: SamplingServer, replica: MnimiCache, name: str
) -> None:
    _needs_entry_point(name)
    with pytest.raises(MnimiError):
        SYNC_CALLS[name]({"api_base": server.url, "api_key": API_KEY})
    assert server.requests == []


def test_text_completions_are_answered_from_the_store_sync_and_async(
    server: SamplingServer, tmp_path: Path
) -> None:
    options = {"model": TEXT_MODEL, "prompt": "Recorded", "api_base": server.url}
    server.reset()
    with MnimiCache(str(tmp_path)) as recorder:
        recorded = litellm.text_completion(**options, api_key=API_KEY).choices[0].text
    recorder.close()
    assert len(server.requests) == 1
    server.reset()
    with MnimiCache(str(tmp_path), replication=True) as replica:
        for switches in ({}, *SWITCHES.values()):
            answer = asyncio.run(litellm.atext_completion(**options, api_key=API_KEY, **switches))
            assert answer.choices[0].text == recorded
            assert litellm.text_completion(**options, **switches).choices[0].text == recorded
        chunks = asyncio.run(_drained(litellm.atext_completion(**options, stream=True)))
        assert "".join(c.choices[0].text or "" for c in chunks if c.choices) == recorded
    replica.close()
    assert server.requests == []
