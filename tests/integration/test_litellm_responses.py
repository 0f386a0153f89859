"""``litellm.responses``/``aresponses`` through MnimiCache's sequences.

Real LiteLLM against the local sampling server's ``/v1/responses``: repeatable by default,
fresh samples in ``independent()``, replication served from the store or refused before
anything is sent, and a hit's response the same as the miss's (laws 1, 2 and 5).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from mnimi_adapters import MnimiError, ReplicationCacheMiss, independent, no_cache
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.providers import _plain
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

API_KEY = "sk-responses-secret-4242"
MODEL = "openai/mock-model"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=11) as running:
        yield running


def sent(server: SamplingServer) -> int:
    return sum(1 for r in server.requests if r.path.endswith("/responses"))


def options(server: SamplingServer, prompt: str = "Pick between 1 and 1000", **extra: Any) -> Any:
    return {
        "model": MODEL,
        "input": prompt,
        "api_base": server.url,
        "api_key": API_KEY,
        **extra,
    }


def items(response: Any) -> list[Any]:
    return [_plain(item) for item in response.output]


def usage(response: Any) -> dict[str, int]:
    return {
        name: getattr(response.usage, name)
        for name in ("input_tokens", "output_tokens", "total_tokens")
    }


def test_a_rerun_replays_with_no_request(server: SamplingServer, tmp_path: Path) -> None:
    with MnimiCache(str(tmp_path)) as cache:
        first = litellm.responses(**options(server), instructions="Answer with a number.")
        again = litellm.responses(**options(server), instructions="Answer with a number.")
    cache.close()
    assert sent(server) == 1
    assert first._hidden_params["mnimi"]["cache_hits"] == [False]
    assert again._hidden_params["cache_hit"] is True
    assert again._hidden_params["response_cost"] == 0.0
    assert again._hidden_params["mnimi"]["indices"] == [0]
    assert again.output_text == first.output_text
    assert items(again) == items(first)
    assert usage(again) == usage(first)
    assert again.id == first.id
    assert again.instructions == "Answer with a number."

    with MnimiCache(str(tmp_path)) as rerun:
        replayed = litellm.responses(**options(server), instructions="Answer with a number.")
    rerun.close()
    assert sent(server) == 1
    assert items(replayed) == items(first)


def test_independent_continues_the_sequence(server: SamplingServer, tmp_path: Path) -> None:
    with MnimiCache(str(tmp_path)) as cache:
        with independent():
            texts = [litellm.responses(**options(server)).output_text for _ in range(3)]
        assert sent(server) == 3
        assert len(set(texts)) == 3
        with independent():  # a new scope starts at position 0 again (law 2)
            again = [litellm.responses(**options(server)).output_text for _ in range(4)]
        per_call = litellm.responses(**options(server, metadata={"mnimi": "independent"}))
    cache.close()
    assert again[:3] == texts
    assert len(set(again)) == 4
    assert sent(server) == 4
    assert per_call.output_text == texts[0]  # the per-call cursor starts at 0 too


async def test_async_calls_share_the_sequences(server: SamplingServer, tmp_path: Path) -> None:
    with MnimiCache(str(tmp_path)) as cache:
        first = await litellm.aresponses(**options(server))
        again = await litellm.aresponses(**options(server))
        synced = await asyncio.to_thread(litellm.responses, **options(server))
        with independent():
            fresh = [await litellm.aresponses(**options(server)) for _ in range(2)]
    cache.close()
    assert sent(server) == 2
    assert again.output_text == first.output_text == synced.output_text
    assert items(again) == items(first)
    assert fresh[0].output_text == first.output_text
    assert fresh[1].output_text != first.output_text


def test_a_function_call_replays_its_output_items(server: SamplingServer, tmp_path: Path) -> None:
    prompt = "What is the weather in 'Paris'?"
    with MnimiCache(str(tmp_path)) as cache:
        first = litellm.responses(**options(server, prompt, tools=[WEATHER]))
        again = litellm.responses(**options(server, prompt, tools=[WEATHER]))
        other = litellm.responses(**options(server, prompt))  # no tools: another request
    cache.close()
    assert sent(server) == 2
    assert items(first)[0]["type"] == "function_call"
    assert items(again) == items(first)
    assert usage(again) == usage(first)
    assert other.output_text


def test_keys_are_apart_from_chat_completions_and_follow_the_input(
    server: SamplingServer, tmp_path: Path
) -> None:
    prompt = "Pick between 1 and 1000000"
    with MnimiCache(str(tmp_path)) as cache:
        answer = litellm.responses(**options(server, prompt))
        chat = litellm.completion(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            api_base=server.url,
            api_key=API_KEY,
        )
        as_items = litellm.responses(
            **options(server, [{"type": "message", "role": "user", "content": prompt}])
        )
        positional = litellm.responses(prompt, MODEL, api_base=server.url, api_key="sk-other")
        warmer = litellm.responses(**options(server, prompt, temperature=0.5))
    cache.close()
    assert chat._hidden_params["mnimi"]["key"] != answer._hidden_params["mnimi"]["key"]
    assert as_items.output_text == positional.output_text == answer.output_text
    assert warmer.output_text != answer.output_text
    assert sent(server) == 2
    assert len(server.chat_requests()) == 1


def test_no_cache_passes_through_and_stores_nothing(server: SamplingServer, tmp_path: Path) -> None:
    with MnimiCache(str(tmp_path)) as cache:
        with no_cache():
            first = litellm.responses(**options(server))
        second = litellm.responses(**options(server, metadata={"mnimi": "no_cache"}))
        stored = litellm.responses(**options(server))
    cache.close()
    assert sent(server) == 3
    assert len({first.output_text, second.output_text, stored.output_text}) == 3
    assert stored._hidden_params["mnimi"]["indices"] == [0]


def test_replication_serves_the_store_and_sends_nothing_on_a_miss(
    server: SamplingServer, tmp_path: Path
) -> None:
    with MnimiCache(str(tmp_path)) as recording:
        recorded = litellm.responses(**options(server))
    recording.close()
    server.reset()
    with MnimiCache(str(tmp_path), replication=True) as replica:
        replayed = litellm.responses(**options(server), caching=False)
        areplayed = asyncio.run(litellm.aresponses(**options(server)))
        with pytest.raises(ReplicationCacheMiss) as missed:
            litellm.responses(**options(server, "Never recorded"))
        with pytest.raises(ReplicationCacheMiss):
            asyncio.run(litellm.aresponses(**options(server, "Never recorded")))
        with independent():
            litellm.responses(**options(server))
            with pytest.raises(ReplicationCacheMiss):  # the sequence holds one sample
                litellm.responses(**options(server))
    replica.close()
    assert server.requests == []
    assert replayed.output_text == areplayed.output_text == recorded.output_text
    assert items(replayed) == items(recorded)
    assert "m1-" in str(missed.value)
    assert "Never recorded" in str(missed.value)


def test_credentials_never_reach_the_store(server: SamplingServer, tmp_path: Path) -> None:
    with MnimiCache(str(tmp_path)) as cache:
        litellm.responses(
            **options(server, metadata={"trace": "t-1"}), extra_headers={"X-Token": "tok-9876543"}
        )
    cache.close()
    stored = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    assert API_KEY.encode() not in stored
    assert b"tok-9876543" not in stored
    assert b"output_text" in stored  # the output items are there, as JSON


def test_a_tools_credentials_are_sent_but_never_keyed_or_stored(
    server: SamplingServer, tmp_path: Path
) -> None:
    def mcp(token: str) -> list[dict[str, Any]]:
        return [
            {
                "type": "mcp",
                "server_label": "docs",
                "server_url": "https://mcp.example/sse",
                "authorization": f"tok-{token}",
                "headers": {"Authorization": f"Bearer hdr-{token}"},
            }
        ]

    with MnimiCache(str(tmp_path)) as cache:
        first = litellm.responses(**options(server), tools=mcp("11111111"))
        again = litellm.responses(**options(server), tools=mcp("22222222"))  # a rotated token
    cache.close()
    assert again.output_text == first.output_text and sent(server) == 1
    (request,) = [r for r in server.requests if r.path.endswith("/responses")]
    assert request.body["tools"][0]["authorization"] == "tok-11111111"  # sent as given
    stored = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    for secret in (b"tok-11111111", b"hdr-11111111", b"tok-22222222", b"hdr-22222222"):
        assert secret not in stored
    assert b"docs" in stored  # the rest of the tool is keyed and kept


def _streamed_text(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def test_a_stream_replays_the_sequence_as_events(server: SamplingServer, tmp_path: Path) -> None:
    with MnimiCache(str(tmp_path)) as cache:
        streamed = list(litellm.responses(**options(server), stream=True))  # a miss
        plain = litellm.responses(**options(server))  # the same sample, not streamed
        again = list(litellm.responses(**options(server), stream=True))  # a hit

        async def stream_async() -> list[Any]:
            return [
                event async for event in await litellm.aresponses(**options(server), stream=True)
            ]

        async_events = asyncio.run(stream_async())
    cache.close()
    assert sent(server) == 1
    assert streamed[0].type == "response.created" and streamed[-1].type == "response.completed"
    for events in (streamed, again, async_events):
        assert _streamed_text(events) == plain.output_text
        assert events[-1].response.output_text == plain.output_text
    with MnimiCache(str(tmp_path), replication=True) as replica:
        assert _streamed_text(list(litellm.responses(**options(server), stream=True))) == (
            plain.output_text
        )
    replica.close()
    assert sent(server) == 1


def test_a_responses_function_bound_before_the_cache_sends_nothing_under_replication(
    server: SamplingServer, tmp_path: Path
) -> None:
    # What `from litellm import responses` binds before any cache is installed (an earlier
    # test's cache left the module's entry points wrapped: one level down is LiteLLM's).
    responses, aresponses = (
        getattr(f, "__wrapped__", f) if getattr(f, "_mnimi_wrapped", False) else f
        for f in (litellm.responses, litellm.aresponses)
    )
    call = {"model": MODEL, "api_base": server.url, "api_key": "sk-test", "input": "Bound early"}
    before = len(server.requests)
    with MnimiCache(str(tmp_path / "store"), replication=True):
        with pytest.raises(MnimiError, match="without MnimiCache's wrapper"):
            responses(**call)
        with pytest.raises(MnimiError, match="without MnimiCache's wrapper"):
            asyncio.run(aresponses(**call))
    assert len(server.requests) == before


def test_router_responses_are_keyed_by_model_group(tmp_path: Path) -> None:
    """Two deployments of one group: a replay does not depend on which one the Router picks."""
    with SamplingServer(seed=5) as one, SamplingServer(seed=6) as two:

        def router() -> litellm.Router:
            deployments = [
                {
                    "model_name": "group",
                    "litellm_params": {"model": MODEL, "api_base": s.url, "api_key": "sk-test"},
                }
                for s in (one, two)
            ]
            return litellm.Router(model_list=deployments, cache_responses=True)

        with MnimiCache(str(tmp_path / "store")):
            first = router().responses(model="group", input="Which deployment?").output_text
        with MnimiCache(str(tmp_path / "store"), replication=True):
            replays = {
                router().responses(model="group", input="Which deployment?").output_text
                for _ in range(8)
            }
    assert replays == {first}
