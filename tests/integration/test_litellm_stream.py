"""MnimiCache misses: streamed live, and sent as one LiteLLM call.

Real LiteLLM against the local sampling server, which waits between the events of a stream
and marks a request finished once its last byte is sent: a chunk that reaches the caller
while its request is unfinished was passed on live.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm_support import SuccessCounter, listening

from mnimi_adapters import MnimiError, ReplicationCacheMiss, independent
from mnimi_adapters.core.gates import FINISHING
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

API_KEY = "sk-test"
MODEL = "openai/mock-model"


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=17, chunk_delay=0.02) as running:
        yield running


@pytest.fixture
def cache(server: SamplingServer, tmp_path: Path) -> Iterator[MnimiCache]:
    server.reset()
    with MnimiCache(str(tmp_path)) as installed:
        yield installed
    installed.close()


def kwargs(server: SamplingServer, prompt: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    return {
        "model": MODEL,
        "messages": messages,
        "api_base": server.url,
        "api_key": API_KEY,
        **extra,
    }


def sent(server: SamplingServer) -> int:
    return len(server.chat_requests())


def joined(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_streamed_miss_is_live_and_its_hit_replays_it(
    server: SamplingServer, cache: MnimiCache
) -> None:
    # LiteLLM imports its stream handling at the first stream: not while this one is timed.
    list(litellm.completion(**kwargs(server, "Warm up", stream=True)))
    server.reset()
    chunks, unfinished = [], []
    for chunk in litellm.completion(**kwargs(server, "Stream me", stream=True)):
        chunks.append(chunk)
        unfinished.append(not server.chat_requests()[-1].finished)
    assert unfinished[0], "the first chunk arrived only after the server had finished"
    assert server.chat_requests()[-1].finished
    text = joined(chunks)
    assert text
    assert sent(server) == 1
    # Stored when the stream ended: a streamed hit and a plain one give the same text.
    assert joined(list(litellm.completion(**kwargs(server, "Stream me", stream=True)))) == text
    hit = litellm.completion(**kwargs(server, "Stream me"))
    assert hit.choices[0].message.content == text
    assert hit._hidden_params["mnimi"]["cache_hits"] == [True]
    assert sent(server) == 1


async def test_an_async_streamed_miss_is_live(server: SamplingServer, cache: MnimiCache) -> None:
    stream = await litellm.acompletion(
        **kwargs(server, "Async stream", stream=True, stream_options={"include_usage": True})
    )
    chunks, unfinished = [], []
    async for chunk in stream:
        chunks.append(chunk)
        unfinished.append(not server.chat_requests()[-1].finished)
    assert unfinished[0]
    assert chunks[-1].usage.completion_tokens > 0  # the usage chunk asked for
    hit = await litellm.acompletion(**kwargs(server, "Async stream"))
    assert hit.choices[0].message.content == joined(chunks)
    assert sent(server) == 1


@pytest.fixture
def slow(server: SamplingServer) -> Iterator[SamplingServer]:
    """The server sending a stream's events far apart: one abandoned after its first chunk
    is still being produced when its reader leaves (see ``core.gates.FINISHING``)."""
    server.chunk_delay = 5 * FINISHING
    yield server
    server.chunk_delay = 0.02


def test_an_abandoned_stream_stores_nothing_and_gives_its_position_back(
    slow: SamplingServer, cache: MnimiCache, tmp_path: Path
) -> None:
    server = slow
    with independent():
        stream = litellm.completion(**kwargs(server, "Abandon me", stream=True))
        next(stream)
        stream.close()
        assert sent(server) == 1
        after = litellm.completion(**kwargs(server, "Abandon me"))
    # The next call of the scope got the abandoned position, 0, drawn afresh.
    assert after._hidden_params["mnimi"]["indices"] == [0]
    assert sent(server) == 2
    cache.close()
    with MnimiCache(str(tmp_path), replication=True) as replica:
        assert litellm.completion(**kwargs(server, "Abandon me")).choices[0].message.content == (
            after.choices[0].message.content
        )
        with pytest.raises(ReplicationCacheMiss):  # only one sample was stored
            litellm.completion(**kwargs(server, "Abandon me", n=2))
    replica.close()


def test_a_run_that_abandons_a_stream_then_calls_again_replays_as_it_ran(
    slow: SamplingServer, tmp_path: Path
) -> None:
    server = slow
    # Abandoned live, the stream gives its position back and the next call draws it; on a
    # re-run the stream is a hit there, and it kept the position: the next call skipped
    # to one that was never drawn (a paid request, another answer; a replica failed).
    prompt = "Abandon me, then ask again"

    def answer(response: Any) -> str:
        return str(response.choices[0].message.content)

    async def run(replication: bool) -> tuple[str, str]:
        with MnimiCache(str(tmp_path), replication=replication) as cache, independent():
            stream = litellm.completion(**kwargs(server, prompt, stream=True))
            next(stream)
            stream.close()
            after = answer(litellm.completion(**kwargs(server, prompt)))
            astream = await litellm.acompletion(**kwargs(server, prompt, stream=True))
            await anext(astream)
            await astream.aclose()
            aafter = answer(await litellm.acompletion(**kwargs(server, prompt)))
        cache.close()
        return after, aafter

    server.reset()
    first = asyncio.run(run(replication=False))
    assert sent(server) == 4 and first[0] != first[1]
    server.reset()
    assert asyncio.run(run(replication=False)) == first
    assert asyncio.run(run(replication=True)) == first
    assert sent(server) == 0


def test_a_streamed_miss_of_several_choices(server: SamplingServer, cache: MnimiCache) -> None:
    streamed: dict[int, str] = {}
    for chunk in litellm.completion(**kwargs(server, "Stream two", n=2, stream=True)):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    stored = litellm.completion(**kwargs(server, "Stream two", n=2))
    assert [streamed[0], streamed[1]] == [c.message.content for c in stored.choices]
    assert len(set(streamed.values())) == 2
    assert sent(server) == 1


def test_a_miss_is_one_litellm_call(server: SamplingServer, cache: MnimiCache) -> None:
    counter = SuccessCounter("Once", "Once async")
    with listening(counter):
        miss = litellm.completion(**kwargs(server, "Once"))

        async def then_async() -> tuple[Any, Any]:
            # A hit is logged to callbacks from async calls on every supported LiteLLM;
            # 1.105.3 does not run a CustomLogger for a synchronous call's cache hit.
            hit = await litellm.acompletion(**kwargs(server, "Once"))
            amiss = await litellm.acompletion(**kwargs(server, "Once async"))
            await counter.reported(3)
            return hit, amiss

        hit, amiss = asyncio.run(then_async())
    assert miss.choices[0].message.content == hit.choices[0].message.content
    assert amiss.choices[0].message.content
    assert sorted(counter.hits.values()) == [False, False, True]
    assert sent(server) == 2


def test_calls_made_while_a_stream_is_live_get_their_own_samples_and_a_rerun_replays(
    server: SamplingServer, tmp_path: Path
) -> None:
    # A live stream's sample lands when it ends, wherever the sequence then ends: a call of
    # the same request drawing meanwhile read the stream's sample as its own (two calls of
    # one independent() scope showed one answer), and the re-run gave the stream another.
    prompt = "Tell me something."

    async def streamed() -> str:
        text = ""
        async for chunk in await litellm.acompletion(**kwargs(server, prompt, stream=True)):
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
        return text

    async def plain() -> str:
        await asyncio.sleep(0.05)  # while the stream is arriving
        return str((await litellm.acompletion(**kwargs(server, prompt))).choices[0].message.content)

    async def run() -> list[str]:
        with independent():
            return list(await asyncio.gather(streamed(), plain(), streamed()))

    server.reset()
    runs = []
    for _ in range(3):
        with MnimiCache(str(tmp_path)) as cache:
            runs.append(asyncio.run(run()))
            with independent():  # the sync calls too: the stream is read after the call
                stream = litellm.completion(**kwargs(server, prompt, stream=True))
                first = next(iter(stream))
                whole = litellm.completion(**kwargs(server, prompt)).choices[0].message.content
                runs[-1] += [joined([first, *stream]), str(whole)]
        cache.close()
    assert len(set(runs[0][:3])) == 3 and len(set(runs[0][3:])) == 2
    assert runs[1] == runs[0] and runs[2] == runs[0]
    assert sent(server) == 3


def test_a_sync_call_queued_behind_an_async_call_of_its_loop_raises_instead_of_hanging(
    server: SamplingServer, cache: MnimiCache
) -> None:
    # Async code: a live stream is open, an async call of the same request waits for it,
    # and a sync call comes from the loop's own thread. Waiting behind that async call
    # would block the loop it needs, for good.
    prompt = "Tell me something."

    async def main() -> tuple[str, str]:
        with independent():
            stream = await litellm.acompletion(**kwargs(server, prompt, stream=True))
            chunks = aiter(stream)
            first = await anext(chunks)
            queued = asyncio.ensure_future(litellm.acompletion(**kwargs(server, prompt)))
            await asyncio.sleep(0.05)
            with pytest.raises(MnimiError, match="use the async API in async code"):
                litellm.completion(**kwargs(server, prompt))
            text = joined([first] + [chunk async for chunk in chunks])
            return text, str((await queued).choices[0].message.content)

    streamed, plain = asyncio.run(main())
    assert streamed and plain and streamed != plain


def test_a_stream_the_provider_had_finished_is_stored_though_its_reader_left(
    tmp_path: Path,
) -> None:
    # The reader left after one chunk while the rest was already received: the draw
    # stopped at its next chunk and threw a paid sample away (law 6). It is stored, and
    # its position goes to the next call, as any abandoned stream's does.
    with SamplingServer(seed=3) as fast:  # the whole answer in one go
        prompt = kwargs(fast, "Finished already")
        with MnimiCache(str(tmp_path)) as cache, independent():
            stream = litellm.completion(**{**prompt, "stream": True})
            first = next(stream)
            deadline = time.monotonic() + 5
            while not fast.chat_requests()[0].finished and time.monotonic() < deadline:
                time.sleep(0.001)
            assert fast.chat_requests()[0].finished  # sent whole before the reader left
            stream.close()
            after = litellm.completion(**prompt)
        cache.close()
        assert len(fast.chat_requests()) == 1
        text = str(after.choices[0].message.content)
        assert after._hidden_params["cache_hit"] is True
        assert text.startswith(str(first.choices[0].delta.content))


def test_a_stream_read_to_its_finish_reason_is_read_whole(
    server: SamplingServer, tmp_path: Path
) -> None:
    # A reader that stops at the chunk with the finish reason has the whole answer; the
    # usage chunk after it made the stream count as abandoned: its position went to the
    # next call, which showed the same sample again.
    prompt = "Read me to the end"

    def run() -> tuple[str, str]:
        with MnimiCache(str(tmp_path)) as cache, independent():
            text = ""
            for chunk in litellm.completion(**kwargs(server, prompt, stream=True)):
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
                if chunk.choices and chunk.choices[0].finish_reason:
                    break
            after = str(litellm.completion(**kwargs(server, prompt)).choices[0].message.content)
        cache.close()
        return text, after

    server.reset()
    first = run()
    assert first[0] != first[1] and sent(server) == 2
    assert run() == first and sent(server) == 2


def test_leaving_a_live_stream_does_not_wait_for_the_providers_next_chunk(
    tmp_path: Path,
) -> None:
    # close() and a timeout waited for the draw, which reads on until the next chunk: a
    # stop button was held for the provider's pause, and a stream collected on the draw's
    # own thread waited for itself for good.
    with SamplingServer(seed=21, chunk_delay=1.5) as paused, MnimiCache(str(tmp_path)) as cache:
        options = {"model": "openai/mock-model", "api_base": paused.url, "api_key": "sk-test"}
        messages = [{"role": "user", "content": "Tell me a story."}]
        stream = litellm.completion(**options, messages=messages, stream=True)
        next(stream)
        started = time.monotonic()
        stream.close()
        assert time.monotonic() - started < 0.5

        async def read_all() -> None:
            async for _ in await litellm.acompletion(**options, messages=messages, stream=True):
                pass

        async def stopped() -> float:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(read_all(), 0.3)
            return time.monotonic() - started

        assert asyncio.run(stopped()) < 1.0
    cache.close()
