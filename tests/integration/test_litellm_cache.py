"""MnimiCache: real ``litellm.completion`` / ``acompletion`` against the local sampling server.

Nothing of LiteLLM is mocked: every call goes through LiteLLM's client wrapper and caching
handler, and every miss is an HTTP request to 127.0.0.1, counted in the server's log.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm.caching.caching import Cache
from litellm_support import SuccessCounter, listening

from mnimi_adapters import (
    LiteLLMModel,
    MnimiError,
    Persistent,
    ReplicationCacheMiss,
    independent,
    no_cache,
    repeatable,
)
from mnimi_adapters.core.stores import open_store
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

API_KEY = "sk-test"
MODEL = "openai/mock-model"


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=11) as running:
        yield running


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "llm_cache"


@pytest.fixture
def cache(server: SamplingServer, cache_dir: Path) -> Iterator[MnimiCache]:
    server.reset()
    with MnimiCache(str(cache_dir)) as installed:
        yield installed
    installed.close()


def call(server: SamplingServer, prompt: str = "Say something", **kwargs: Any) -> Any:
    """One ``litellm.completion`` to the local server."""
    kwargs.setdefault("messages", [{"role": "user", "content": prompt}])
    return litellm.completion(model=MODEL, api_base=server.url, api_key=API_KEY, **kwargs)


async def acall(server: SamplingServer, prompt: str = "Say something", **kwargs: Any) -> Any:
    kwargs.setdefault("messages", [{"role": "user", "content": prompt}])
    return await litellm.acompletion(model=MODEL, api_base=server.url, api_key=API_KEY, **kwargs)


def text(response: Any) -> str:
    return str(response.choices[0].message.content)


def texts(response: Any) -> list[str]:
    return [str(choice.message.content) for choice in response.choices]


def sent(server: SamplingServer) -> int:
    return len(server.chat_requests())


# -- the two laws ---------------------------------------------------------------------


def test_identical_calls_replay_the_first_sample(server: SamplingServer, cache: MnimiCache) -> None:
    first = call(server, "Choose a number between 1 and 1000.")
    second = call(server, "Choose a number between 1 and 1000.")
    assert text(first) == text(second)
    assert sent(server) == 1


def test_a_cache_assigned_to_litellm_cache_serves_as_an_installed_one(
    server: SamplingServer, cache_dir: Path
) -> None:
    # ``litellm.cache = MnimiCache(...)``, as LiteLLM's docs set a cache: a hit went through
    # LiteLLM's own cache handler, which imports the proxy's fastapi on some versions.
    server.reset()
    litellm.cache = MnimiCache(str(cache_dir))
    try:
        first = text(call(server, "Assigned"))
        assert text(call(server, "Assigned")) == first
        assert text(asyncio.run(acall(server, "Assigned"))) == first
        with independent():
            assert text(call(server, "Assigned")) == first
            assert text(call(server, "Assigned")) != first
    finally:
        litellm.cache = None
    assert len(server.chat_requests()) == 2
    call(server, "Assigned")  # no longer litellm.cache: LiteLLM's own call, sent
    assert len(server.chat_requests()) == 3


@pytest.mark.parametrize("setting", ["OPENAI_BASE_URL", "OPENAI_API_BASE", "litellm.api_base"])
def test_a_base_url_set_outside_the_call_is_keyed_as_a_given_one(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    # LiteLLM sends a call without api_base to litellm.api_base or the provider's variable:
    # two servers reached that way shared one sequence, so one answered for the other.
    prompt = [{"role": "user", "content": "Pick a number between 1 and 1000."}]
    answers, keys = [], []
    with SamplingServer(seed=1) as first, SamplingServer(seed=2) as second:
        for server in (first, second, first):
            if setting == "litellm.api_base":
                monkeypatch.setattr(litellm, "api_base", server.url)
            else:
                monkeypatch.setenv(setting, server.url)
            with MnimiCache(str(cache_dir)) as cache:
                response = litellm.completion(model=MODEL, messages=prompt, api_key="sk-test")
                answers.append(text(response))
                keys.append(cache.get_cache_key(model=MODEL, messages=prompt))
        assert len(first.chat_requests()) == 1 and len(second.chat_requests()) == 1
    assert answers[0] != answers[1] and answers[2] == answers[0]
    assert keys[0] != keys[1] and keys[2] == keys[0]


def test_independent_scope_continues_the_sequence(
    server: SamplingServer, cache: MnimiCache
) -> None:
    with independent():
        answers = [text(call(server, "Pick a word")) for _ in range(3)]
    assert len(set(answers)) == 3
    assert sent(server) == 3
    # Outside the scope the calls replay the sequence from its start.
    assert text(call(server, "Pick a word")) == answers[0]
    # A new independent block starts over: a whole run replays identically.
    with independent():
        assert [text(call(server, "Pick a word")) for _ in range(3)] == answers
    assert sent(server) == 3


def test_retry_pattern_repeatable_inside_independent(
    server: SamplingServer, cache: MnimiCache
) -> None:
    attempts = []
    with independent():
        for _ in range(3):
            with repeatable():
                # Within one attempt the same request gets the same answer ...
                answer = text(call(server, "Write a function"))
                assert text(call(server, "Write a function")) == answer
                attempts.append(answer)
    # ... and every attempt gets a fresh one.
    assert len(set(attempts)) == 3
    assert sent(server) == 3


def test_no_cache_scope_goes_to_the_provider_and_stores_nothing(
    server: SamplingServer, cache: MnimiCache
) -> None:
    with no_cache():
        answers = [text(call(server, "Uncached")) for _ in range(2)]
    assert len(set(answers)) == 2
    assert sent(server) == 2
    # Nothing was stored: the first cached call has to draw its own sample.
    cached = text(call(server, "Uncached"))
    assert cached not in answers
    assert sent(server) == 3


def test_per_call_override_in_metadata(server: SamplingServer, cache: MnimiCache) -> None:
    first = text(call(server, "Override"))
    # "independent": successive calls continue a cursor the cache keeps (from sample 0,
    # like a new Independent over a persistent layer).
    fresh = [text(call(server, "Override", metadata={"mnimi": "independent"})) for _ in range(3)]
    assert fresh[0] == first
    assert len(set(fresh)) == 3
    assert sent(server) == 3
    # "repeatable": sample 0, whatever scope is open.
    with independent():
        assert text(call(server, "Override")) == first
        assert text(call(server, "Override", metadata={"mnimi": "repeatable"})) == first
        # Inside an independent scope, "independent" continues the scope's cursor.
        assert text(call(server, "Override", metadata={"mnimi": "independent"})) == fresh[1]
    # "no_cache": straight to the provider.
    assert text(call(server, "Override", metadata={"mnimi": "no_cache"})) not in fresh
    assert sent(server) == 4
    with pytest.raises(ValueError, match="mnimi"):
        call(server, "Override", metadata={"mnimi": "sometimes"})


# -- n ----------------------------------------------------------------------------------


def test_n_is_answered_from_the_sequence(server: SamplingServer, cache: MnimiCache) -> None:
    five = call(server, "Five then three", n=5)
    assert len(set(texts(five))) == 5
    assert sent(server) == 1
    three = call(server, "Five then three", n=3)
    assert texts(three) == texts(five)[:3]
    assert sent(server) == 1


def test_only_the_missing_samples_are_requested(server: SamplingServer, cache: MnimiCache) -> None:
    three = call(server, "Three then five", n=3)
    five = call(server, "Three then five", n=5)
    assert texts(five)[:3] == texts(three)
    assert len(set(texts(five))) == 5
    bodies = [r.body for r in server.chat_requests()]
    assert [body.get("n") for body in bodies] == [3, 2]


def test_n_inside_an_independent_scope_takes_fresh_samples(
    server: SamplingServer, cache: MnimiCache
) -> None:
    with independent():
        first = texts(call(server, "Batches", n=2))
        second = texts(call(server, "Batches", n=2))
    assert len(set(first + second)) == 4
    assert texts(call(server, "Batches", n=4)) == first + second


def test_usage_is_kept_on_a_hit(server: SamplingServer, cache: MnimiCache) -> None:
    miss = call(server, "Count my tokens", n=2)
    hit = call(server, "Count my tokens", n=2)
    assert miss.usage.completion_tokens > 0
    assert hit.usage.prompt_tokens == miss.usage.prompt_tokens
    assert hit.usage.completion_tokens == miss.usage.completion_tokens
    assert hit.usage.total_tokens == miss.usage.total_tokens


def test_hidden_params_flag_hits_and_price_them_at_zero(
    server: SamplingServer, cache: MnimiCache
) -> None:
    miss = call(server, "Hidden params")
    hit = call(server, "Hidden params")
    assert not miss._hidden_params.get("cache_hit")
    assert hit._hidden_params["cache_hit"] is True
    assert hit._hidden_params["response_cost"] == 0.0
    assert hit._hidden_params["mnimi"]["indices"] == [0]
    assert hit._hidden_params["cache_key"] == hit._hidden_params["mnimi"]["key"]


async def test_a_hit_nobody_logs_carries_what_litellms_replay_carries(
    server: SamplingServer, cache: MnimiCache
) -> None:
    """With no LiteLLM callback listening a hit is answered without LiteLLM's wrapper; with
    one, LiteLLM replays it. Either way the caller sees the same response and fields."""
    await acall(server, "Quiet hit")
    quiet = await acall(server, "Quiet hit", litellm_call_id="my-call")
    counter = SuccessCounter("Quiet hit")
    with listening(counter):
        logged = await acall(server, "Quiet hit", litellm_call_id="my-call")
        await counter.reported(call_id="my-call")
    # Only the logged call: the first call's miss may be reported late, to this callback too.
    assert counter.hits["my-call"] is True
    assert quiet.model_dump() == logged.model_dump()
    assert set(quiet._hidden_params) >= set(logged._hidden_params) - {
        "callback_duration_ms",
        "litellm_overhead_time_ms",
    }
    for name in ("cache_hit", "cache_key", "response_cost", "mnimi", "api_base"):
        assert quiet._hidden_params[name] == logged._hidden_params[name], name
    assert quiet._hidden_params["litellm_call_id"] == "my-call"
    assert quiet._response_ms >= 0
    assert sent(server) == 1


def test_litellms_call_rules_check_a_hit_too(server: SamplingServer, cache: MnimiCache) -> None:
    call(server, "My SSN is 000")
    saved = litellm.pre_call_rules
    litellm.pre_call_rules = [lambda text: "SSN" not in text]
    try:
        with pytest.raises(litellm.APIResponseValidationError):
            call(server, "My SSN is 000")
    finally:
        litellm.pre_call_rules = saved
    assert sent(server) == 1


def test_changing_a_hit_in_place_changes_no_later_hit(
    server: SamplingServer, cache: MnimiCache
) -> None:
    tools = [{"type": "function", "function": {"name": "pick", "parameters": {"type": "object"}}}]
    kwargs = {"tools": tools, "tool_choice": "required"}
    first = call(server, "Call a tool", **kwargs)
    hit = call(server, "Call a tool", **kwargs)
    hit.choices[0].message.tool_calls[0].function.arguments = "changed"
    hit.choices[0].message.tool_calls.append(hit.choices[0].message.tool_calls[0])
    again = call(server, "Call a tool", **kwargs)
    assert again.choices[0].message.tool_calls == first.choices[0].message.tool_calls
    assert sent(server) == 1


# -- streaming ----------------------------------------------------------------------


def test_streaming_miss_and_hit_join_to_the_stored_text(
    server: SamplingServer, cache: MnimiCache
) -> None:
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in call(server, "Stream me", stream=True)
        if chunk.choices
    )
    assert streamed
    assert sent(server) == 1
    assert text(call(server, "Stream me")) == streamed
    again = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in call(server, "Stream me", stream=True)
        if chunk.choices
    )
    assert again == streamed
    assert sent(server) == 1


def test_streaming_several_choices(server: SamplingServer, cache: MnimiCache) -> None:
    stored = texts(call(server, "Stream three", n=3))
    joined: dict[int, str] = {}
    for chunk in call(server, "Stream three", n=3, stream=True):
        for choice in chunk.choices:
            joined[choice.index] = joined.get(choice.index, "") + (choice.delta.content or "")
    assert [joined[i] for i in range(3)] == stored
    assert sent(server) == 1


async def test_async_streaming_hit(server: SamplingServer, cache: MnimiCache) -> None:
    stored = text(await acall(server, "Async stream"))
    stream = await acall(
        server, "Async stream", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == stored
    assert sent(server) == 1


async def test_async_text_completions_are_cached_as_sync_ones_are(
    server: SamplingServer, cache: MnimiCache
) -> None:
    # LiteLLM sends a chat model's text completions as chat completions: the same
    # sequence as the chat call of the prompt. Async ones skipped every cache before.
    options = {"model": "openai/gpt-4o-mini", "api_base": server.url, "api_key": API_KEY}
    first = (await litellm.atext_completion(prompt="Text", **options)).choices[0].text
    again = await litellm.atext_completion(prompt="Text", **options)
    assert again.choices[0].text == first
    assert again._hidden_params["cache_hit"] is True
    assert litellm.text_completion(prompt="Text", **options).choices[0].text == first
    stream = await litellm.atext_completion(prompt="Text", stream=True, **options)
    pieces = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert "".join(piece or "" for piece in pieces) == first
    with independent():
        fresh = [await litellm.atext_completion(prompt="Text", **options) for _ in range(2)]
    assert [answer.choices[0].text == first for answer in fresh] == [True, False]
    assert sent(server) == 2


# -- async and concurrency -------------------------------------------------------------


async def test_acompletion_replays(server: SamplingServer, cache: MnimiCache) -> None:
    first = text(await acall(server, "Async"))
    assert text(await acall(server, "Async")) == first
    assert text(call(server, "Async")) == first
    assert sent(server) == 1


async def test_concurrent_calls_in_one_independent_scope_get_distinct_samples(
    server: SamplingServer, cache: MnimiCache
) -> None:
    with independent():
        responses = await asyncio.gather(*(acall(server, "Concurrent") for _ in range(6)))
    answers = [text(r) for r in responses]
    assert len(set(answers)) == 6
    drawn = sum(r.body.get("n", 1) for r in server.chat_requests())
    assert drawn == 6
    # Each call gets a provider response as LiteLLM made it (its HTTP headers), whichever
    # call's refill drew it, and no response is handed to two calls: a miss costs one
    # LiteLLM call, not a second one to build the answer.
    assert all(r._hidden_params["additional_headers"] for r in responses)
    assert len({id(r) for r in responses}) == 6
    assert all(r._hidden_params["cache_hit"] is False for r in responses)
    # The sequence holds exactly those six samples.
    assert set(texts(call(server, "Concurrent", n=6))) == set(answers)
    assert sum(r.body.get("n", 1) for r in server.chat_requests()) == drawn


async def test_concurrent_calls_of_n_replay_the_same_samples_on_a_rerun(
    server: SamplingServer, cache: MnimiCache
) -> None:
    """Each call claims its n positions at once: a re-run, all hits, gives each call the
    samples it got, whatever order the first run's requests were answered in."""

    async def run() -> list[list[str]]:
        with independent():
            responses = await asyncio.gather(*(acall(server, "Pass@3", n=3) for _ in range(3)))
        return [texts(r) for r in responses]

    server.latency = 0.05
    try:
        first = await run()
    finally:
        server.latency = 0.0
    assert await run() == first and sent(server) == 3
    stored = texts(call(server, "Pass@3", n=9))
    assert [answer for answers in first for answer in answers] == stored


def test_threads_sharing_an_independent_scope_get_distinct_samples(
    server: SamplingServer, cache: MnimiCache
) -> None:
    with independent(), ThreadPoolExecutor(max_workers=4) as pool:
        # Each task runs in a copy of the caller's context, hence in its scope.
        futures = [
            pool.submit(contextvars.copy_context().run, call, server, "Threads") for _ in range(8)
        ]
        answers = [text(future.result()) for future in futures]
    assert len(set(answers)) == 8
    # Exactly 8 samples were drawn (a thread that claims a later position first may draw
    # two at once, for itself and the one before it).
    assert sum(r.body.get("n", 1) for r in server.chat_requests()) == 8


def test_batch_completion_inside_an_independent_scope_draws_distinct_samples(
    server: SamplingServer, cache: MnimiCache
) -> None:
    # batch_completion's threads do not inherit the caller's context: they borrow its scope.
    prompt = [{"role": "user", "content": "Batch"}]
    with independent():
        responses = litellm.batch_completion(
            model=MODEL, messages=[prompt] * 3, api_base=server.url, api_key=API_KEY
        )
    assert len({text(r) for r in responses}) == 3
    assert sum(r.body.get("n", 1) for r in server.chat_requests()) == 3


# -- replication ------------------------------------------------------------------------


def test_replication_miss_raises_without_a_request(server: SamplingServer, cache_dir: Path) -> None:
    server.reset()
    with MnimiCache(str(cache_dir)):
        recorded = text(call(server, "Recorded"))
    server.reset()
    with MnimiCache(str(cache_dir), replication=True) as replica:
        assert text(call(server, "Recorded")) == recorded
        with pytest.raises(ReplicationCacheMiss) as raised:
            call(server, "Never recorded")
        assert "Never recorded" in str(raised.value)
        with pytest.raises(ReplicationCacheMiss):
            call(server, "Recorded", n=2)
        with pytest.raises(ReplicationCacheMiss):
            asyncio.run(acall(server, "Never recorded"))
        with pytest.raises(MnimiError), no_cache():
            call(server, "Recorded")
    replica.close()
    assert sent(server) == 0


# -- keys -----------------------------------------------------------------------------


def test_more_than_four_messages_are_cached(server: SamplingServer, cache: MnimiCache) -> None:
    messages = [{"role": "system", "content": "Be brief."}]
    for turn in range(3):
        messages += [
            {"role": "user", "content": f"Question {turn}"},
            {"role": "assistant", "content": f"Answer {turn}"},
        ]
    messages.append({"role": "user", "content": "Last question"})
    assert len(messages) == 8
    first = call(server, messages=messages)
    assert text(call(server, messages=messages)) == text(first)
    assert sent(server) == 1


def test_kwarg_order_and_number_types_do_not_split_keys(
    server: SamplingServer, cache: MnimiCache
) -> None:
    messages = [{"role": "user", "content": "Order"}]
    first = litellm.completion(
        model=MODEL,
        messages=messages,
        temperature=1,
        max_tokens=50,
        api_base=server.url,
        api_key=API_KEY,
    )
    second = litellm.completion(
        api_key=API_KEY,
        api_base=server.url + "/",
        max_tokens=50.0,
        temperature=1.0,
        messages=messages,
        model=MODEL,
        user="someone",
        timeout=30,
    )
    assert text(first) == text(second)
    assert sent(server) == 1
    # A sampling parameter does split them.
    assert text(call(server, "Order", max_tokens=50, temperature=0.5)) != text(first)
    assert sent(server) == 2


def test_which_parameters_reach_the_key(cache: MnimiCache) -> None:
    base = {"model": MODEL, "messages": [{"role": "user", "content": "Key"}]}
    key = cache.get_cache_key(**base)
    # Transport, credentials and LiteLLM's bookkeeping never split a key ...
    for name, value in [
        ("api_key", "sk-other"),
        ("aws_secret_access_key", "secret"),
        ("vertex_credentials", '{"private_key": "x"}'),
        ("litellm_trace_id", "trace-1"),
        ("metadata", {"tags": ["a"]}),
        ("timeout", 5),
        ("num_retries", 3),
        ("n", 4),
        ("stream", True),
    ]:
        assert cache.get_cache_key(**base, **{name: value}) == key, name
    # ... while sampling and prompt-shaping parameters do.
    for name, value in [
        ("temperature", 0.2),
        ("top_k", 5),
        ("max_new_tokens", 10),
        ("extra_body", {"min_p": 0.1}),
        ("litellm_system_prompt", "Be terse."),
        ("response_format", {"type": "json_object"}),
    ]:
        assert cache.get_cache_key(**base, **{name: value}) != key, name


def test_api_base_separates_keys_unless_aliased(
    server: SamplingServer, cache_dir: Path, tmp_path: Path
) -> None:
    with SamplingServer(seed=99) as other:
        server.reset()
        with MnimiCache(str(cache_dir)):
            here = text(call(server, "Same name"))
            there = text(call(other, "Same name"))
        assert here != there
        assert sent(server) == 1
        assert sent(other) == 1
        with MnimiCache(str(tmp_path / "aliased"), alias={MODEL: "mock"}):
            shared = text(call(server, "Same name"))
            assert text(call(other, "Same name")) == shared
        assert sent(other) == 1


def test_keys_are_shared_with_the_core_api(server: SamplingServer, cache: MnimiCache) -> None:
    answer = text(call(server, "Shared"))
    model = LiteLLMModel(MODEL, 1.0, api_base=server.url, api_key=API_KEY)
    layer = Persistent(model, cache.path)
    assert next(layer.sample("Shared")) == answer
    layer.close()
    assert sent(server) == 1


def test_credentials_are_never_stored(server: SamplingServer, cache: MnimiCache) -> None:
    secret = "sk-test-do-not-store-0123456789"
    litellm.completion(
        model=MODEL,
        messages=[{"role": "user", "content": "Secret"}],
        api_base=server.url,
        api_key=secret,
        extra_headers={"X-Api-Key": secret},
        n=2,
    )
    call(server, "Also secret")
    # A credential in an object of provider fields is sent, and keyed as if not passed.
    nested = call(server, "Nested", extra_body={"session_token": secret})
    assert server.chat_requests()[-1].body["session_token"] == secret
    assert (
        nested._hidden_params["mnimi"]["key"]
        == call(server, "Nested")._hidden_params["mnimi"]["key"]
    )
    files = [p for p in Path(cache.path).rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data
        assert API_KEY.encode() not in data


# -- Router -----------------------------------------------------------------------------


def test_router_model_group(server: SamplingServer, cache: MnimiCache) -> None:
    router = litellm.Router(
        model_list=[
            {
                "model_name": "fast",
                "litellm_params": {"model": MODEL, "api_base": server.url, "api_key": API_KEY},
            }
        ],
        cache_responses=True,
    )
    messages = [{"role": "user", "content": "Through the router"}]
    first = router.completion(model="fast", messages=messages)
    second = router.completion(model="fast", messages=messages)
    assert text(first) == text(second)
    assert second._hidden_params["cache_hit"] is True
    with independent():
        fresh = asyncio.run(router.acompletion(model="fast", messages=messages))
        fresh2 = asyncio.run(router.acompletion(model="fast", messages=messages))
    assert text(fresh) == text(first)
    assert text(fresh2) != text(first)
    assert sent(server) == 2


def test_a_router_alias_shares_its_groups_sequences(
    server: SamplingServer, cache: MnimiCache
) -> None:
    deployment = {"model": MODEL, "api_base": server.url, "api_key": API_KEY}
    router = litellm.Router(
        model_list=[{"model_name": "fast", "litellm_params": deployment}],
        model_group_alias={"quick": "fast"},
        cache_responses=True,
    )
    messages = [{"role": "user", "content": "Through an alias"}]
    first = router.completion(model="fast", messages=messages)
    aliased = router.completion(model="quick", messages=messages)
    assert text(aliased) == text(first) and aliased._hidden_params["cache_hit"] is True
    assert aliased._hidden_params["mnimi"]["key"] == first._hidden_params["mnimi"]["key"]
    assert sent(server) == 1


def test_a_routers_default_params_are_keyed(server: SamplingServer, cache: MnimiCache) -> None:
    # They are the same for every deployment: a Router-wide temperature of 2.0 was served
    # the sample another Router had drawn at 0.0.
    deployment = {"model": MODEL, "api_base": server.url, "api_key": API_KEY}
    messages = [{"role": "user", "content": "Under a Router-wide temperature"}]
    answers = [
        litellm.Router(
            model_list=[{"model_name": "g", "litellm_params": deployment}],
            default_litellm_params={"temperature": temperature},
            cache_responses=True,
        ).completion(model="g", messages=messages)
        for temperature in (0.0, 2.0)
    ]
    assert [r.body["temperature"] for r in server.chat_requests()] == [0.0, 2.0]
    assert answers[0]._hidden_params["mnimi"]["key"] != answers[1]._hidden_params["mnimi"]["key"]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_groups_key_does_not_depend_on_the_deployments_settings(
    server: SamplingServer, cache: MnimiCache, is_async: bool
) -> None:
    """Deployments of one group that differ in provider settings (region, location,
    project, drop_params) or in a sampling parameter they set themselves share one
    sequence: whichever deployment the Router picks, the call replays the group's sample.
    What the caller passes is keyed."""
    settings = [
        {"aws_region_name": "us-east-1", "vertex_location": "us-central1", "drop_params": True},
        {"aws_region_name": "us-west-2", "vertex_project": "p2", "additional_drop_params": ["x"]},
    ]
    routers = []
    for index, extra in enumerate(settings):
        deployment = {"model": MODEL, "api_base": server.url, "api_key": API_KEY}
        deployment.update(extra, max_tokens=50 + index, api_type="open_ai")
        routers.append(
            litellm.Router(
                model_list=[{"model_name": "regions", "litellm_params": deployment}],
                cache_responses=True,
                num_retries=0,
            )
        )
    messages = [{"role": "user", "content": f"Which region? {is_async}"}]

    def ask(router: litellm.Router, **kwargs: Any) -> Any:
        if is_async:
            return asyncio.run(router.acompletion(model="regions", messages=messages, **kwargs))
        return router.completion(model="regions", messages=messages, **kwargs)

    first = ask(routers[0])
    assert server.chat_requests()[-1].body["max_tokens"] == 50  # the deployment's, sent
    other = ask(routers[1])
    assert text(other) == text(first) and other._hidden_params["cache_hit"] is True
    assert other._hidden_params["mnimi"]["key"] == first._hidden_params["mnimi"]["key"]
    assert sent(server) == 1
    # A sampling parameter the caller passes is keyed, over the deployment's.
    passed = ask(routers[1], max_tokens=7)
    assert passed._hidden_params["mnimi"]["key"] != first._hidden_params["mnimi"]["key"]
    assert server.chat_requests()[-1].body["max_tokens"] == 7 and sent(server) == 2
    assert text(ask(routers[0], max_tokens=7)) == text(passed) and sent(server) == 2


# -- errors and installation ------------------------------------------------------------


def test_provider_errors_are_litellm_errors_and_never_stored(
    server: SamplingServer, cache: MnimiCache
) -> None:
    server.fail_next(400)
    with pytest.raises(litellm.BadRequestError):
        call(server, "Fails once")
    answer = text(call(server, "Fails once"))
    assert text(call(server, "Fails once")) == answer
    assert sent(server) == 2


def test_install_and_uninstall_restore_the_previous_cache(cache_dir: Path) -> None:
    saved = litellm.cache
    callbacks = {
        name: list(getattr(litellm, name))
        for name in ("input_callback", "success_callback", "_async_success_callback")
    }
    try:
        outer = MnimiCache(str(cache_dir))
        # Constructing a MnimiCache changes no global state ...
        assert {name: list(getattr(litellm, name)) for name in callbacks} == callbacks
        assert litellm.cache is saved
        previous = Cache()  # ... unlike LiteLLM's, whose callbacks are restored below
        litellm.cache = previous
        with outer:
            assert litellm.cache is outer
            with MnimiCache(str(cache_dir)) as inner:
                assert litellm.cache is inner
            assert litellm.cache is outer
        assert litellm.cache is previous
        outer.install()
        outer.install()  # installing twice keeps the first "previous"
        outer.uninstall()
        assert litellm.cache is previous
    finally:
        litellm.cache = saved
        for name, value in callbacks.items():
            getattr(litellm, name)[:] = value


def wrapped_entry_points() -> list[str]:
    """LiteLLM's module functions a MnimiCache has wrapped."""
    functions = [(name, f) for name, f in list(vars(litellm).items()) if inspect.isfunction(f)]
    return [name for name, function in functions if getattr(function, "_mnimi_wrapped", False)]


def test_caches_uninstalled_in_any_order_leave_litellm_as_it_was(
    server: SamplingServer, cache_dir: Path
) -> None:
    saved = litellm.cache
    assert wrapped_entry_points() == []
    replica = MnimiCache(str(cache_dir / "replica"), replication=True)
    ordinary = MnimiCache(str(cache_dir))
    try:
        replica.install()
        ordinary.install()
        replica.uninstall()  # not the newest: the newest keeps answering
        assert litellm.cache is ordinary
        server.reset()
        assert text(call(server, "In any order")) == text(call(server, "In any order"))
        assert sent(server) == 1
        ordinary.uninstall()  # it had the replica as its previous cache: not any more
        assert litellm.cache is saved
        assert wrapped_entry_points() == []
        replica.install()
        replica.uninstall()
        assert litellm.cache is saved
        assert wrapped_entry_points() == []
        # A replica left installed would refuse this; LiteLLM sends it.
        call(server, "In any order")
        assert sent(server) == 2
    finally:
        litellm.cache = saved
        replica.close()
        ordinary.close()


def test_import_mnimi_adapters_does_not_import_litellm() -> None:
    code = "import sys, mnimi_adapters; assert 'litellm' not in sys.modules, 'litellm imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_hit_needs_no_proxy_modules(server: SamplingServer, cache: MnimiCache) -> None:
    call(server, "No proxy")
    call(server, "No proxy", stream=True)
    assert call(server, "No proxy")._hidden_params["cache_hit"] is True
    try:
        import fastapi  # noqa: F401
    except ImportError:
        assert "fastapi" not in sys.modules


def test_per_call_independent_wrappers_go_with_their_scope(
    server: SamplingServer, cache: MnimiCache
) -> None:
    import gc

    from mnimi_adapters.core import Independent

    def live() -> int:
        gc.collect()
        return sum(isinstance(o, Independent) for o in gc.get_objects())

    call(server, "Scoped", metadata={"mnimi": "independent"})
    before = live()
    for _ in range(20):
        with independent():
            call(server, "Scoped", metadata={"mnimi": "independent"})
    # Each block made a scope Independent plus a per-call one; none may outlive it.
    assert live() <= before + 2


def test_a_mocked_answer_is_never_replayed_as_the_models(
    server: SamplingServer, cache: MnimiCache
) -> None:
    assert text(call(server, "Mocked?", mock_response="MOCKED")) == "MOCKED"
    assert text(call(server, "Mocked?")) != "MOCKED"


def test_an_alias_that_is_not_a_mapping_is_refused_with_an_example(cache_dir: Path) -> None:
    with pytest.raises(TypeError, match="alias must be a mapping"):
        MnimiCache(str(cache_dir), alias="mock")  # type: ignore[arg-type]


class _WithLogprobs(litellm.CustomLLM):
    """A LiteLLM custom provider (its public extension point) answering as OpenAI does
    when asked for logprobs: token log probabilities and a system fingerprint."""

    calls = 0

    def completion(self, *args: Any, **kwargs: Any) -> litellm.ModelResponse:
        type(self).calls += 1
        token = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}
        return litellm.ModelResponse(
            id=f"chatcmpl-{self.calls}",
            model="fake-model",
            system_fingerprint="fp_abc123",
            choices=[
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Hi"},
                    "logprobs": {"content": [{**token, "top_logprobs": [token]}]},
                }
            ],
            usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        )


def test_a_hit_keeps_logprobs_and_the_system_fingerprint(
    cache: MnimiCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        litellm,
        "custom_provider_map",
        [{"provider": "withlogprobs", "custom_handler": _WithLogprobs()}],
    )
    kwargs = {
        "model": "withlogprobs/fake-model",
        "messages": [{"role": "user", "content": "Say hi"}],
        "logprobs": True,
        "top_logprobs": 1,
    }
    miss = litellm.completion(**kwargs)
    hit = litellm.completion(**kwargs)
    assert _WithLogprobs.calls == 1 and hit._hidden_params["cache_hit"] is True
    assert hit.system_fingerprint == miss.system_fingerprint == "fp_abc123"
    assert hit.choices[0].logprobs.content[0].token == "Hi"
    assert hit.choices[0].logprobs.content[0].logprob == miss.choices[0].logprobs.content[0].logprob


def test_a_hit_without_logprobs_has_them_none_as_its_miss_has(
    server: SamplingServer, cache: MnimiCache
) -> None:
    # LiteLLM's Choices drops a logprobs of None: `if r.choices[0].logprobs:` raised
    # AttributeError on the replay of an answer whose miss had it None.
    miss = call(server, "No logprobs")
    hit = call(server, "No logprobs")
    assert hit._hidden_params["cache_hit"] is True
    # LiteLLM 1.110 keeps a provider response's logprobs of None; 1.105 drops it there too.
    assert getattr(miss.choices[0], "logprobs", None) is None
    assert hit.choices[0].logprobs is None


def test_a_lone_stop_string_shares_the_key_of_its_list(
    server: SamplingServer, cache: MnimiCache
) -> None:
    first = call(server, "Stop", stop="END")
    again = call(server, "Stop", stop=["END"])
    assert again._hidden_params["cache_hit"] is True and text(again) == text(first)
    assert [r.body["stop"] for r in server.chat_requests()] == [["END"]]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_litellms_own_cache_stores_as_before_once_mnimi_skips_unstored_writes(
    server: SamplingServer, cache_dir: Path, is_async: bool
) -> None:
    """The patch that lets LiteLLM skip the write of a no-store call changes no outcome."""
    server.reset()
    with MnimiCache(str(cache_dir)):  # installs the patch, for good
        pass
    saved = litellm.cache
    litellm.cache = Cache()
    try:

        def ask(prompt: str, **kwargs: Any) -> str:
            if is_async:
                return text(asyncio.run(acall(server, prompt, **kwargs)))
            return text(call(server, prompt, **kwargs))

        stored = ask("Stored by LiteLLM")
        assert ask("Stored by LiteLLM") == stored and sent(server) == 1
        ask("Not stored", cache={"no-store": True})
        ask("Not stored")
        assert sent(server) == 3  # the no-store answer was not written: asked again
    finally:
        litellm.cache = saved


@pytest.mark.parametrize("entry", ["wrapped", "async", "litellms-handler"])
def test_a_no_store_call_is_sent_stores_nothing_and_takes_no_position(
    server: SamplingServer, cache: MnimiCache, entry: str
) -> None:
    """``cache={"no-store": True}`` alone: the call is sent and nothing is stored, so it
    is sent again on a re-run, and the calls around it in ``independent()`` get the same
    samples with or without it. ``litellms-handler``: a ``completion`` bound before the
    cache was installed reaches it through LiteLLM's cache handler, which reads the cache
    for a no-store call."""
    no_store = {"cache": {"no-store": True}}

    def ask(prompt: str, **kwargs: Any) -> str:
        kwargs.update(messages=[{"role": "user", "content": prompt}])
        kwargs.update(model=MODEL, api_base=server.url, api_key=API_KEY)
        if entry == "async":
            return text(asyncio.run(litellm.acompletion(**kwargs)))
        if entry == "litellms-handler":
            return text(litellm.main.completion(**kwargs))
        return text(litellm.completion(**kwargs))

    prompt = f"No store {entry}"
    with independent():
        first = ask(prompt)
        ask(prompt, **no_store)
        second = ask(prompt)
    assert sent(server) == 3
    with independent():  # a re-run: the same samples around a call sent again
        assert ask(prompt) == first
        ask(prompt, **no_store)
        assert ask(prompt) == second
    assert sent(server) == 4 and first != second
    ask(f"Never stored {entry}", **no_store)
    ask(f"Never stored {entry}", **no_store)
    assert sent(server) == 6
    ask(f"Never stored {entry}")  # a miss: nothing was stored for it
    assert sent(server) == 7


def mocked_ask(server: SamplingServer, prompt: str, is_async: bool) -> Any:
    """A call of ``prompt`` to the local server, sync or async, returning its text."""

    def ask(**kwargs: Any) -> str:
        if is_async:
            return text(asyncio.run(acall(server, prompt, **kwargs)))
        return text(call(server, prompt, **kwargs))

    return ask


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_mocked_exception_is_raised_as_litellm_raises_it(
    server: SamplingServer, cache: MnimiCache, cache_dir: Path, is_async: bool
) -> None:
    """``mock_response=<exception>`` is LiteLLM's way to test a failure: it was a
    TypeError with a cache installed (an exception is no value a key holds)."""
    ask = mocked_ask(server, f"Mocked failure {is_async}", is_async)

    def mocks() -> None:
        error = litellm.RateLimitError("mocked limit", llm_provider="openai", model="m")
        with pytest.raises(litellm.RateLimitError, match="mocked limit"):
            ask(mock_response=error, num_retries=0)
        with pytest.raises(litellm.RateLimitError):
            ask(mock_response="litellm.RateLimitError", num_retries=0)

    mocks()
    with MnimiCache(str(cache_dir), replication=True) as replica:
        mocks()
    replica.close()
    assert sent(server) == 0


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_mocked_answer_is_no_sample_stored_or_replayed(
    server: SamplingServer, cache: MnimiCache, cache_dir: Path, is_async: bool
) -> None:
    """A mocked answer is LiteLLM's, not the model's: it was stored as a sample, to be
    replayed, sliced and exported, and took a position in ``independent()``."""
    ask = mocked_ask(server, f"Mocked {is_async}", is_async)
    tool_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}

    def mocks() -> None:
        assert [ask(mock_response="MOCK") for _ in range(2)] == ["MOCK", "MOCK"]
        assert ask(mock_response="MOCK", n=2) == "MOCK"
        assert ask(mock_tool_calls=[tool_call]) != "MOCK"

    with independent():
        mocks()
        real = ask()  # position 0: the mocks took none
    assert sent(server) == 1 and ask() == real
    store = open_store(cache_dir, create=False)
    try:
        assert [summary.length for summary in store.summaries()] == [1]
    finally:
        store.close()
    with MnimiCache(str(cache_dir), replication=True) as replica:
        mocks()  # answered by LiteLLM's mock, which sends nothing
        assert ask() == real
    replica.close()
    assert sent(server) == 1


def test_ttl_and_s_maxage_have_no_effect_as_the_readme_says(
    server: SamplingServer, cache: MnimiCache
) -> None:
    """LiteLLM's cache controls that expire an entry are ignored (an expired sample would be
    drawn again, and a re-run would differ from the first run); the README says so, as a
    switch silently ignored surprised its users."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    litellm_section = readme.split("\n## LiteLLM\n", 1)[1].split("\n## ", 1)[0]
    for control in ('{"ttl": N}', '{"s-maxage": N}', "have no effect on a MnimiCache"):
        assert control in litellm_section
    first = call(server, "Expiring")
    time.sleep(1.1)
    for controls in ({"ttl": 1}, {"s-maxage": 1}, {"s-max-age": 0}, {"namespace": "other"}):
        again = call(server, "Expiring", cache=controls)
        assert text(again) == text(first) and again._hidden_params["cache_hit"] is True
    assert sent(server) == 1


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_num_retries_retries_a_miss_as_litellm_would(
    server: SamplingServer, cache: MnimiCache, is_async: bool
) -> None:
    """The cache answers before LiteLLM's own retry loop runs: it retries in its place."""
    server.fail_next(500, count=1)
    prompt = f"Retried {is_async}"
    if is_async:
        answer = text(asyncio.run(acall(server, prompt, num_retries=2)))
    else:
        answer = text(call(server, prompt, num_retries=2))
    assert [r.status for r in server.chat_requests()] == [500, 200]
    assert text(call(server, prompt)) == answer and sent(server) == 2  # stored, replayed
    server.fail_next(500, count=1)
    with pytest.raises(litellm.InternalServerError), independent():
        call(server, prompt, num_retries=0)  # position 0: the sample stored above
        call(server, prompt, num_retries=0)  # position 1: a miss, not retried


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_router_retries_a_miss_as_often_as_without_the_cache(
    server: SamplingServer, cache: MnimiCache, is_async: bool
) -> None:
    """A Router reads num_retries off the failure: it says the caller's, not the
    provider call's (which has LiteLLM's retries off), or the Router gave up at once."""
    router = litellm.Router(
        model_list=[
            {
                "model_name": "group",
                "litellm_params": {"model": MODEL, "api_base": server.url, "api_key": API_KEY},
            }
        ],
        num_retries=2,
        cache_responses=True,
        retry_after=0,
    )

    def ask(prompt: str) -> Any:
        messages = [{"role": "user", "content": prompt}]
        if is_async:
            return asyncio.run(router.acompletion(model="group", messages=messages))
        return router.completion(model="group", messages=messages)

    server.fail_next(500, count=1)
    answer = text(ask(f"Router retry {is_async}"))
    assert [r.status for r in server.chat_requests()] == [500, 200]
    assert text(ask(f"Router retry {is_async}")) == answer and sent(server) == 2
    server.reset()
    server.fail_next(500, count=10)
    with pytest.raises(litellm.InternalServerError):
        ask(f"Router gives up {is_async}")
    assert sent(server) == 3  # as without the cache: the first attempt and two retries
    server.reset()  # the faults left


def test_concurrent_misses_report_every_sample_they_paid_for(
    server: SamplingServer, cache_dir: Path
) -> None:
    # Four concurrent calls of 3 samples each: their refills landed in the order they
    # ended, so a call read samples another call's refill had stored, and reported them as
    # free hits; the run's reported cost fell short of what it paid.
    async def run() -> list[Any]:
        messages = [{"role": "user", "content": "Say something"}]
        with independent():
            calls = (
                litellm.acompletion(
                    model="openai/gpt-4o-mini",
                    messages=messages,
                    n=3,
                    api_base=server.url,
                    api_key=API_KEY,
                )
                for _ in range(4)
            )
            return list(await asyncio.gather(*calls))

    server.reset()
    with MnimiCache(str(cache_dir)) as cache:
        first = asyncio.run(run())
    cache.close()
    assert sent(server) == 4
    assert [r._hidden_params["mnimi"]["cache_hits"] for r in first] == [[False] * 3] * 4
    assert all(r._hidden_params["response_cost"] > 0 for r in first)
    with MnimiCache(str(cache_dir)) as cache:  # the re-run, as a new process has it
        again = asyncio.run(run())
    cache.close()
    assert sent(server) == 4
    assert [r._hidden_params["mnimi"]["cache_hits"] for r in again] == [[True] * 3] * 4
    assert [r._hidden_params["response_cost"] for r in again] == [0.0] * 4
    assert [texts(r) for r in again] == [texts(r) for r in first]


def lengths(location: Path) -> dict[str, int]:
    """Each stored sequence's length, by the request's last message."""
    store = open_store(location, create=False)
    try:
        return {summary.messages[-1]["content"]: summary.length for summary in store.summaries()}
    finally:
        store.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_slice_receives_what_the_run_used_and_replays_alone(
    server: SamplingServer, tmp_path: Path, is_async: bool
) -> None:
    """``slice_of=`` gives LiteLLM code what ``Persistent(Persistent(model, big), slice)``
    gives the core API (law 4): calls read through the big cache, drawing into it on a
    miss, and the slice receives the prefix of each sequence the run used, which a
    colleague replays with ``replication=True`` and no request."""
    server.reset()
    big, small = tmp_path / "big", tmp_path / "slice"

    def ask(prompt: str, **kwargs: Any) -> tuple[list[str], bool]:
        if is_async:
            answer = asyncio.run(acall(server, prompt, **kwargs))
        else:
            answer = call(server, prompt, **kwargs)
        return texts(answer), answer._hidden_params["cache_hit"]

    with MnimiCache(big) as full, independent():
        paper = [ask("Sliced A")[0][0] for _ in range(4)]
    full.close()
    assert sent(server) == 4
    with MnimiCache(small, slice_of=big) as sliced, independent():
        used = [ask("Sliced A") for _ in range(2)]
        fresh, fresh_hit = ask("Sliced B", n=2)  # drawn into the big cache and the slice
    sliced.close()
    # Served by the big cache: hits, though the slice stored them in this run.
    assert used == [([paper[0]], True), ([paper[1]], True)]
    assert len(set(fresh)) == 2 and fresh_hit is False and sent(server) == 5
    assert lengths(big) == {"Sliced A": 4, "Sliced B": 2}
    assert lengths(small) == {"Sliced A": 2, "Sliced B": 2}
    with MnimiCache(small, replication=True) as replica, independent():
        assert [ask("Sliced A")[0][0] for _ in range(2)] == paper[:2]
        assert ask("Sliced B", n=2) == (fresh, True)
        with pytest.raises(ReplicationCacheMiss):
            ask("Sliced A")  # the big cache's third sample was not used: not in the slice
    replica.close()
    assert sent(server) == 5


def test_a_slice_of_a_replicated_cache_sends_nothing_and_streams_into_the_slice(
    server: SamplingServer, tmp_path: Path
) -> None:
    """With ``replication=True`` the big cache is read in replication mode (a miss raises
    before any request) and the slice still receives what the run used; a live stream
    through a slice is stored in both caches."""
    server.reset()
    big, small, copy = tmp_path / "big", tmp_path / "slice", tmp_path / "copy"
    with MnimiCache(small, slice_of=big) as sliced:
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in call(server, "Streamed into a slice", stream=True)
        )
    sliced.close()
    assert sent(server) == 1 and streamed
    assert lengths(big) == lengths(small) == {"Streamed into a slice": 1}
    with MnimiCache(copy, slice_of=big, replication=True) as replica:
        assert text(call(server, "Streamed into a slice")) == streamed
        with pytest.raises(ReplicationCacheMiss), independent():
            call(server, "Streamed into a slice")
            call(server, "Streamed into a slice")
    replica.close()
    assert sent(server) == 1 and lengths(copy) == {"Streamed into a slice": 1}


def test_slice_of_and_path_are_checked_when_made(tmp_path: Path) -> None:
    """A slice kept in the cache it slices, an empty location (``Path("")`` is the current
    directory) and a location of another type are refused at once, and ``repr`` names
    the bigger cache without a Redis password."""
    with pytest.raises(ValueError, match="slice_of names the cache the slice is kept in"):
        MnimiCache(tmp_path / "big", slice_of=f"{tmp_path}/./big")
    for empty in ("", "  "):
        with pytest.raises(MnimiError, match="is empty"):
            MnimiCache(empty)
        with pytest.raises(MnimiError, match="is empty"):
            MnimiCache(tmp_path / "slice", slice_of=empty)
    with pytest.raises(TypeError, match="slice_of must be a directory or a Redis URL"):
        MnimiCache(tmp_path / "slice", slice_of=1)  # type: ignore[arg-type]
    shown = repr(MnimiCache(tmp_path / "slice", slice_of="redis://user:secret@127.0.0.1:1/0"))
    assert "slice_of='redis://user:***@127.0.0.1:1/0" in shown and "secret" not in shown
