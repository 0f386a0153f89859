"""MnimiChatModel over a LangChain chat model: QA round 19.

Real langchain-openai ``ChatOpenAI`` (Chat Completions and the Responses API) against the
local sampling server: a slow reader leaving a live stream, a Responses stream read to its
last chunk.
"""

from __future__ import annotations

import os

# Must precede any litellm import: otherwise litellm fetches its cost map over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain.chat_models import init_chat_model
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, trim_messages
from langchain_core.outputs import LLMResult
from langchain_core.runnables import ConfigurableField
from langchain_openai import ChatOpenAI

from mnimi_adapters import independent
from mnimi_adapters.langchain import MnimiChatModel
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

NUMBER = "Pick a number between 1 and 1000000."


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=19) as running:
        yield running


@pytest.fixture
def openai(server: SamplingServer) -> Callable[..., ChatOpenAI]:
    server.reset()
    server.chunk_delay = 0.0

    def make(**overrides: Any) -> ChatOpenAI:
        params: dict[str, Any] = {
            "model": "mock-model",
            "base_url": server.url,
            "api_key": "sk-test",
            "max_retries": 0,
        }
        params.update(overrides)
        return ChatOpenAI(**params)

    return make


@pytest.fixture
def cache(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


def wait_stored(chat: MnimiChatModel) -> None:
    """Wait until the live stream's draw has stored its sample (a slow reader's pause)."""
    deadline = time.monotonic() + 10
    while chat.cache_stats().get("samples_stored") != 1:
        assert time.monotonic() < deadline, "the live stream's sample was never stored"
        time.sleep(0.005)
    time.sleep(0.05)  # and has ended, its gate open


@pytest.mark.parametrize("responses", [False, True], ids=["completions", "responses"])
def test_a_slow_reader_leaving_a_stored_live_stream_replays_as_it_ran(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str, responses: bool
) -> None:
    # The reader left after the draw had stored the sample: the position stayed taken
    # (the next call got 1), while the re-run's replayed stream gave it back (0). (The
    # chunks may differ: a replay cuts the text its own way.)
    def run() -> tuple[str, int]:
        chat = MnimiChatModel(model=openai(use_responses_api=responses), cache_dir=cache)
        with independent():
            stream = chat.stream(NUMBER)
            seen = ""
            while not seen:
                seen = next(stream).text
            wait_stored(chat)
            stream.close()  # stopped on what it saw: the answer's end unread
            after = chat.invoke(NUMBER)
        assert after.text.startswith(seen)
        return after.text, after.response_metadata["sequence_index"]

    first = run()
    assert first[1] == 0
    assert run() == first
    assert len(server.requests) == 1


def test_a_slow_reader_leaving_a_stored_live_astream_replays_as_it_ran(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    async def run() -> tuple[str, int]:
        chat = MnimiChatModel(model=openai(), cache_dir=cache)
        with independent():
            stream = chat.astream(NUMBER)
            seen = ""
            while not seen:
                seen = (await anext(stream)).text
            await asyncio.to_thread(wait_stored, chat)
            await stream.aclose()
            after = await chat.ainvoke(NUMBER)
        assert after.text.startswith(seen)
        return after.text, after.response_metadata["sequence_index"]

    first = asyncio.run(run())
    assert first[1] == 0
    assert asyncio.run(run()) == first
    assert len(server.requests) == 1


def read_to_usage(chunks: Iterator[AIMessageChunk]) -> str:
    """A reader that stops at the chunk with the usage: the whole answer has arrived."""
    text = ""
    for chunk in chunks:
        text += chunk.text
        if chunk.usage_metadata:
            break
    return text


def test_a_responses_stream_read_to_its_last_chunk_is_read_whole(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # The Responses API's last chunk (status "completed", the usage) has no finish reason:
    # the stream counted as abandoned, and the next call was served the same sample.
    def run() -> tuple[str, str, int]:
        chat = MnimiChatModel(
            model=openai(use_responses_api=True, stream_usage=True), cache_dir=cache
        )
        with independent():
            streamed = read_to_usage(chat.stream(NUMBER))
            after = chat.invoke(NUMBER)
        return streamed, after.text, after.response_metadata["sequence_index"]

    first = run()
    assert first[0] != first[1] and first[2] == 1
    assert run() == first  # replayed: the same
    assert len(server.requests) == 2


def test_a_responses_astream_read_to_its_last_chunk_is_read_whole(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    async def run() -> tuple[str, str, int]:
        chat = MnimiChatModel(
            model=openai(use_responses_api=True, stream_usage=True), cache_dir=cache
        )
        with independent():
            streamed = ""
            chunks = chat.astream(NUMBER)
            async for chunk in chunks:
                streamed += chunk.text
                if chunk.usage_metadata:
                    break
            await chunks.aclose()
            after = await chat.ainvoke(NUMBER)
        return streamed, after.text, after.response_metadata["sequence_index"]

    first = asyncio.run(run())
    assert first[0] != first[1] and first[2] == 1
    assert asyncio.run(run()) == first
    assert len(server.requests) == 2


def test_token_counts_are_the_wrapped_models(
    openai: Callable[..., ChatOpenAI], cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LangChain's default counter (GPT-2's, through transformers) answered instead: an
    # ImportError without transformers, other counts with it; trim_messages failed.
    import litellm.litellm_core_utils.tokenizers as shipped

    # tiktoken's encodings as LiteLLM ships them: no download.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", os.path.dirname(shipped.__file__))
    raw = openai(model="gpt-4o-mini")
    chat = MnimiChatModel(model=raw, cache_dir=cache)
    messages = [HumanMessage("hello world how are you"), AIMessage("fine"), HumanMessage("you?")]
    assert chat.get_token_ids("hello world") == raw.get_token_ids("hello world")
    assert chat.get_num_tokens("hello world") == raw.get_num_tokens("hello world")
    assert chat.get_num_tokens_from_messages(messages) == raw.get_num_tokens_from_messages(messages)
    trimmed = trim_messages(messages, max_tokens=12, token_counter=chat, strategy="last")
    assert trimmed == trim_messages(messages, max_tokens=12, token_counter=raw, strategy="last")
    assert 0 < len(trimmed) < len(messages)

    # The wrapped model's own counter; one given to the wrapper comes first.
    words = openai(custom_get_token_ids=lambda text: text.split())
    assert MnimiChatModel(model=words, cache_dir=cache).get_num_tokens("a b c d e") == 5
    chars = MnimiChatModel(model=words, cache_dir=cache, custom_get_token_ids=list)
    assert chars.get_num_tokens("a b") == 3


def test_the_constructor_names_the_keywords_of_the_wrapped_model_it_refuses(
    openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    """``base_url=`` lands in ``model_kwargs``, and was refused as "model_kwargs", which
    names nothing the user gave."""
    with pytest.raises(ValueError, match=r"model_kwargs \(base_url\) belongs to the wrapped"):
        MnimiChatModel(model=openai(), cache_dir=cache, base_url="http://elsewhere/v1")


def test_model_copy_refuses_a_setting_of_the_wrapped_model(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str, tmp_path: Path
) -> None:
    # The copy took temperature=0.1 unchecked and ignored it: it replayed the samples
    # drawn at the wrapped model's temperature, and its misses were sent at that one.
    chat = MnimiChatModel(model=openai(temperature=0.5), cache_dir=cache)
    first = chat.invoke(NUMBER)
    with pytest.raises(ValueError, match="temperature belongs to the wrapped ChatOpenAI"):
        chat.model_copy(update={"temperature": 0.1})
    with pytest.raises(ValueError, match="api_base, max_retries belong to the wrapped"):
        chat.model_copy(update={"max_retries": 3, "api_base": server.url})
    # A name that is no field was kept unchecked too, and the copy sent where it did.
    with pytest.raises(ValueError, match="no setting base_url, model_name: set it on the"):
        chat.model_copy(update={"base_url": "http://elsewhere/v1", "model_name": "gpt-4o"})

    # The wrapper's own settings are copied as ever.
    elsewhere = chat.model_copy(update={"cache_dir": str(tmp_path / "other")})
    assert elsewhere.invoke(NUMBER).response_metadata["cache_hit"] is False
    replica = chat.model_copy(update={"replication": True})
    assert replica.invoke(NUMBER).text == first.text
    assert len(server.requests) == 2


class LLMEnd(BaseCallbackHandler):
    """Keeps what on_llm_end receives."""

    def __init__(self) -> None:
        self.results: list[LLMResult] = []

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.results.append(response)


def test_llm_output_and_generation_info_are_the_wrapped_models_and_replayed(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # Both were empty: generate()'s llm_output {} and generation_info None, miss or hit.
    raw = openai()
    expected = raw.generate([[HumanMessage(NUMBER)]])
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    for hit in (False, True):
        ended = LLMEnd()
        result = chat.generate([[HumanMessage("Say something.")]], callbacks=[ended])
        generation = result.generations[0][0]
        assert generation.message.response_metadata["cache_hit"] is hit
        assert generation.generation_info == expected.generations[0][0].generation_info
        assert result.llm_output is not None and expected.llm_output is not None
        assert result.llm_output.keys() == expected.llm_output.keys()
        usage = generation.message.usage_metadata
        assert usage is not None
        assert result.llm_output["token_usage"]["total_tokens"] == usage["total_tokens"]
        assert ended.results[0].llm_output == result.llm_output

    # A call answered by two responses (one stored, one drawn): their outputs combined, as
    # the model combines them.
    chat.invoke("Hi.")
    both = chat.generate([[HumanMessage("Hi.")]], n=2)
    assert len(server.chat_requests()) == 4
    assert both.llm_output is not None
    usages = [g.message.usage_metadata for g in both.generations[0]]  # type: ignore[attr-defined]
    total = sum(usage["total_tokens"] for usage in usages)
    assert both.llm_output["token_usage"]["total_tokens"] == total


def test_samples_stored_without_llm_output_replay_without_it(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # A streamed sample has neither (nor has one stored before they were kept).
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    list(chat.stream(NUMBER))
    result = chat.generate([[HumanMessage(NUMBER)]])
    assert result.generations[0][0].message.response_metadata["cache_hit"] is True
    assert result.generations[0][0].generation_info is None
    assert result.llm_output == {"token_usage": {}, "model_name": "mock-model"}  # as ChatOpenAI's


def test_a_configurable_model_is_refused_with_what_works_instead(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # init_chat_model(configurable_fields=...) was refused as if bound to tools, and told
    # to call bind_tools on the wrapper instead.
    settings: dict[str, Any] = {"base_url": server.url, "api_key": "sk-test"}
    configurable = init_chat_model(
        "openai:mock-model", temperature=0.2, configurable_fields=("temperature",), **settings
    )
    for model in (
        configurable,
        openai().configurable_fields(temperature=ConfigurableField(id="temperature")),
    ):
        with pytest.raises(TypeError, match="not a configurable model") as refused:
            MnimiChatModel(model=model, cache_dir=cache)
        assert "set_llm_cache(MnimiLLMCache(...))" in str(refused.value)
        assert "configurable_alternatives()" in str(refused.value)

    # What it advises: a wrapper per configured model, alternatives among them.
    cool, warm = (
        MnimiChatModel(
            model=init_chat_model("openai:mock-model", temperature=t, **settings), cache_dir=cache
        )
        for t in (0.2, 0.9)
    )
    chosen = cool.configurable_alternatives(
        ConfigurableField(id="temperature"), default_key="cool", warm=warm
    )
    chosen.invoke(NUMBER)
    chosen.with_config(configurable={"temperature": "warm"}).invoke(NUMBER)
    assert [r.body["temperature"] for r in server.chat_requests()] == [0.2, 0.9]
