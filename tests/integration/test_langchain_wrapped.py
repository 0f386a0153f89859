"""MnimiChatModel over the user's own LangChain chat model: real ChatOpenAI and ChatAnthropic
against the local sampling server (127.0.0.1), counting the requests it receives."""

from __future__ import annotations

import os

# Must precede any litellm import: otherwise litellm fetches its cost map over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import ConfigurableField
from langchain_openai import AzureChatOpenAI, ChatOpenAI
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy
from pydantic import BaseModel, Field, ValidationError
from test_langchain import agent_loop, get_weather

from mnimi_adapters import ReplicationCacheMiss, independent, no_cache, repeatable
from mnimi_adapters.cli import main
from mnimi_adapters.core import Persistent
from mnimi_adapters.core.gates import FINISHING
from mnimi_adapters.langchain import MnimiChatModel, wrapped_identity
from mnimi_adapters.testing import SamplingServer

NUMBER = "Pick a number between 1 and 1000000."
SECRET = "sk-wrapped-secret-7777"


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=23) as running:
        yield running


@pytest.fixture
def openai(server: SamplingServer) -> Callable[..., ChatOpenAI]:
    server.reset()
    server.chunk_delay = 0.0

    def make(**overrides: Any) -> ChatOpenAI:
        params: dict[str, Any] = {
            "model": "mock-model",
            "base_url": server.url,
            "api_key": SECRET,
            "max_retries": 0,
        }
        params.update(overrides)
        return ChatOpenAI(**params)

    return make


@pytest.fixture
def cache(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


def sent(server: SamplingServer) -> int:
    return len(server.chat_requests())


def sum_chunks(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


# -- invoke, keys, scopes -------------------------------------------------------------------


def test_a_miss_runs_the_wrapped_model_and_a_hit_replays_it(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # The wrapped model's own client: its default headers reach the server.
    chat = MnimiChatModel(model=openai(default_headers={"X-Caller": "mine"}), cache_dir=cache)
    miss = chat.invoke(NUMBER)
    hit = chat.invoke(NUMBER)
    assert sent(server) == 1
    assert server.chat_requests()[0].headers["x-caller"] == "mine"
    assert hit.content == miss.content
    assert (miss.response_metadata["cache_hit"], hit.response_metadata["cache_hit"]) == (
        False,
        True,
    )
    assert miss.response_metadata["sequence_index"] == hit.response_metadata["sequence_index"] == 0
    assert miss.response_metadata["cache_key"] == hit.response_metadata["cache_key"]
    # The wrapped model's own metadata and usage replay too.
    assert hit.response_metadata["model_name"] == "mock-model"
    assert hit.response_metadata["finish_reason"] == "stop"
    assert hit.usage_metadata == miss.usage_metadata
    assert hit.usage_metadata is not None and hit.usage_metadata["total_tokens"] > 0
    again = asyncio.run(chat.ainvoke(NUMBER))
    assert again.content == miss.content and sent(server) == 1
    assert chat.cache_stats()["hits"] == 2 and chat.cache_stats()["requests"] == 1


def test_the_key_holds_the_models_identity_and_no_credential(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    def key(model: ChatOpenAI) -> str:
        answer = MnimiChatModel(model=model, cache_dir=cache).invoke("hello")
        return str(answer.response_metadata["cache_key"])

    base = key(openai())
    assert key(openai(api_key="sk-another-key", timeout=30, max_retries=2)) == base
    # The client joins its routes to the base URL with or without a final "/" alike.
    assert key(openai(base_url=server.url + "/")) == base
    assert key(openai(temperature=0.2)) != base
    assert key(openai(base_url=server.url.replace("127.0.0.1", "localhost"))) != base
    assert key(openai(model="mock-model-b")) != base
    assert key(openai(top_p=0.5)) != base
    assert key(openai(n=3)) == base  # n is how many, not what: it asks for positions 1, 2
    anthropic = ChatAnthropic(model="mock-model", base_url=server.root_url, api_key=SECRET)
    assert key(anthropic) != base  # the class is part of the identity
    assert sent(server) == 6 and len(server.requests) == 7  # one to /v1/messages
    identity = wrapped_identity(openai())
    assert SECRET not in json.dumps(identity)
    assert identity["model"] == "openai/mock-model"
    assert identity["endpoint"] == {"base_url": server.url}
    # An alias is the model whoever serves it, under whatever name and class.
    shared = wrapped_identity(openai(), alias="shared-name")
    assert "endpoint" not in shared and "langchain_class" not in shared["params"]
    assert wrapped_identity(openai(model="its-name-elsewhere"), alias="shared-name") == shared
    assert wrapped_identity(openai(temperature=0.2), alias="shared-name") != shared
    for path in Path(cache).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    assert SECRET not in repr(chat) and SECRET not in json.dumps(chat._identifying_params)


def test_which_version_or_kind_of_api_carries_a_call_is_not_keyed(
    server: SamplingServer,
) -> None:
    # Azure's API version and type say how a call is carried, as LiteLLM's api_version
    # (never keyed there): a replica on a newer version raised ReplicationCacheMiss.
    def azure(**settings: Any) -> AzureChatOpenAI:
        return AzureChatOpenAI(
            azure_deployment="gpt-4o",
            azure_endpoint=server.root_url,
            api_key=SECRET,
            api_version=settings.pop("api_version", "2024-10-21"),
            **settings,
        )

    base = wrapped_identity(azure())
    assert wrapped_identity(azure(api_version="2025-01-01-preview")) == base
    assert wrapped_identity(azure(openai_api_type="azure_ad")) == base
    assert wrapped_identity(azure(temperature=0.2)) != base
    assert "version" not in json.dumps(base)


def test_a_repeated_requests_key_is_reused_only_while_nothing_changed(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # A hit reuses the previous call's key when the request is the same: a value changed in
    # place, True for 1 (equal in Python, not in a key) or a changed wrapped model must not.
    def key(chat: MnimiChatModel, **kwargs: Any) -> str:
        return str(chat.invoke(NUMBER, **kwargs).response_metadata["cache_key"])

    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    bias = {"50256": 1}
    first = key(chat, logit_bias=bias)
    assert key(chat, logit_bias=bias) == first
    bias["50256"] = 2
    changed = key(chat, logit_bias=bias)
    assert changed != first
    assert key(MnimiChatModel(model=openai(), cache_dir=cache), logit_bias=bias) == changed
    assert key(chat, logit_bias={"50256": 1}) == first
    assert key(chat, logit_bias={"50256": True}) != first
    chat.model.temperature = 0.3  # type: ignore[union-attr]
    assert key(chat, logit_bias={"50256": 1}) != first


def test_models_that_differ_only_in_credentials_share_a_scope(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    first = MnimiChatModel(model=openai(), cache_dir=cache)
    second = MnimiChatModel(model=openai(api_key="sk-second"), cache_dir=cache)
    with independent():
        texts = [first.invoke(NUMBER).content, second.invoke(NUMBER).content]
        texts.append(first.invoke(NUMBER).content)
    assert len(set(texts)) == 3
    assert sent(server) == 3


def test_scopes_work_as_for_the_string_form(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    with independent():
        run1 = [chat.invoke(NUMBER).content for _ in range(3)]
    with independent():
        run2 = [chat.invoke(NUMBER).content for _ in range(3)]
    assert len(set(run1)) == 3 and run2 == run1
    attempts = []
    with independent():
        for _ in range(2):
            with repeatable():
                attempts.append((chat.invoke(NUMBER).content, chat.invoke(NUMBER).content))
    assert all(a == b for a, b in attempts) and attempts[0][0] != attempts[1][0]
    assert sent(server) == 3
    with no_cache():
        fresh = chat.invoke(NUMBER).content
    assert fresh not in run1 and sent(server) == 4
    assert chat.invoke(NUMBER).content == run1[0]


def test_langchain_global_cache_does_not_collapse_the_wrapped_models_samples(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    previous = get_llm_cache()
    set_llm_cache(InMemoryCache())
    try:
        chat = MnimiChatModel(model=openai(), cache_dir=cache)
        with independent():
            texts = {chat.invoke(NUMBER).content for _ in range(3)}
    finally:
        set_llm_cache(previous)
    assert len(texts) == 3 and sent(server) == 3


def test_replication_miss_raises_and_sends_nothing(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    recorded = MnimiChatModel(model=openai(), cache_dir=cache).invoke(NUMBER).content
    server.reset()
    replay = MnimiChatModel(model=openai(), cache_dir=cache, replication=True)
    assert replay.invoke(NUMBER).content == recorded
    assert "".join(str(c.content) for c in replay.stream(NUMBER)) == recorded
    with pytest.raises(ReplicationCacheMiss) as missing:
        replay.invoke("Pick a number between 1 and 5.")
    assert missing.value.cached == 0
    with independent(), pytest.raises(ReplicationCacheMiss):
        replay.invoke(NUMBER)
        replay.invoke(NUMBER)
    with pytest.raises(ReplicationCacheMiss):
        list(replay.stream("Tell me a story."))
    with pytest.raises(ReplicationCacheMiss):
        asyncio.run(replay.ainvoke("Tell me a poem."))
    assert server.requests == []


def test_cli_stats_and_an_exported_slice_of_the_wrapped_models_samples(
    openai: Callable[..., ChatOpenAI], cache: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    with independent():
        for _ in range(3):
            chat.invoke(NUMBER)
    chat.invoke("hello")
    assert main(["--json", "stats", cache]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert "openai/mock-model" in json.dumps(stats)
    assert stats["samples"] == 4 and stats["keys"] == 2
    # A slice of what one request used replays offline, with no key.
    sliced = str(Path(cache).parent / "slice")
    assert main(["export", cache, sliced, "--grep", "Pick a number"]) == 0
    replay = MnimiChatModel(model=openai(api_key="unused"), cache_dir=sliced, replication=True)
    with independent():
        replayed = [replay.invoke(NUMBER).content for _ in range(3)]
    with independent():
        assert [chat.invoke(NUMBER).content for _ in range(3)] == replayed
    with pytest.raises(ReplicationCacheMiss):
        replay.invoke("hello")


def test_slice_of_keeps_exactly_what_the_run_used(
    openai: Callable[..., ChatOpenAI],
    server: SamplingServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # law 4 for a wrapped model: Persistent(Persistent(model, big), small).
    big, small = str(tmp_path / "big"), str(tmp_path / "small")
    full = MnimiChatModel(model=openai(), cache_dir=big)
    with independent():
        drawn = [full.invoke(NUMBER).content for _ in range(5)]
    full.invoke("hello")
    assert sent(server) == 6

    run = MnimiChatModel(model=openai(), cache_dir=small, slice_of=big)
    with independent():
        used = [run.invoke(NUMBER).content for _ in range(2)]
    assert used == drawn[:2] and sent(server) == 6  # read through the big cache

    # The slice holds that prefix and nothing else; a colleague replays it offline.
    assert main(["--json", "stats", small]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["samples"] == 2 and stats["keys"] == 1
    replay = MnimiChatModel(model=openai(api_key="unused"), cache_dir=small, replication=True)
    with independent():
        assert [replay.invoke(NUMBER).content for _ in range(2)] == used
        with pytest.raises(ReplicationCacheMiss):
            replay.invoke(NUMBER)
    with pytest.raises(ReplicationCacheMiss):
        replay.invoke("hello")
    assert sent(server) == 6


# -- streaming --------------------------------------------------------------------------


def test_a_streamed_miss_is_live_stored_once_complete_and_replayed(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    server.chunk_delay = 0.05
    stream = chat.stream("Tell me a story.")
    first = next(stream)
    # The first chunk arrived while the server was still sending the completion.
    assert server.chat_requests()[0].finished is False
    assert server.chat_requests()[0].body["stream"] is True
    chunks = [first, *stream]
    assert server.chat_requests()[0].finished is True
    server.chunk_delay = 0.0
    streamed = sum_chunks(chunks)
    assert streamed.response_metadata["cache_hit"] is False
    assert streamed.response_metadata["sequence_index"] == 0
    assert chunks[-1].chunk_position == "last"
    assert [c.chunk_position for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    stored = chat.invoke("Tell me a story.")
    assert stored.content == streamed.content
    assert stored.response_metadata["cache_hit"] is True
    replayed = list(chat.stream("Tell me a story."))
    assert len(replayed) > 2
    assert sum_chunks(replayed).content == streamed.content
    assert replayed[-1].response_metadata["cache_hit"] is True
    assert sent(server) == 1


async def test_astream_is_live_on_a_miss_and_replays_a_hit(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    server.chunk_delay = 0.05
    chunks = []
    async for chunk in chat.astream("Tell me a poem."):
        if not chunks:
            assert server.chat_requests()[0].finished is False
        chunks.append(chunk)
    server.chunk_delay = 0.0
    hit = [c async for c in chat.astream("Tell me a poem.")]
    assert sum_chunks(hit).content == sum_chunks(chunks).content
    assert (chunks[-1].response_metadata["cache_hit"], hit[-1].response_metadata["cache_hit"]) == (
        False,
        True,
    )
    assert sent(server) == 1


def test_an_abandoned_stream_stores_nothing_and_gives_its_position_back(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    server.chunk_delay = 5 * FINISHING
    with independent():
        stream = chat.stream("Tell me a story.")
        next(stream)
        stream.close()  # abandoned half-way (the rest arrives slowly: not yet paid for)
        after = chat.invoke("Tell me a story.")
    # The next call of the scope gets position 0: the abandoned stream kept none.
    assert after.response_metadata["sequence_index"] == 0
    assert after.response_metadata["cache_hit"] is False
    layer = chat._layer_for(None)
    assert isinstance(layer, Persistent)
    assert layer.store.length(after.response_metadata["cache_key"]) == 1
    assert sent(server) == 2


def test_a_streams_chunks_carry_one_message_id_live_and_replayed(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # The last chunk carried another id than the tokens (the first run's, on a replay): a
    # UI grouping LangGraph's stream_mode="messages" chunks by id showed two messages.
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    live = list(chat.stream(NUMBER))
    replayed = list(chat.stream(NUMBER))
    assert replayed[-1].response_metadata["cache_hit"] is True
    assert len({chunk.id for chunk in live}) == 1
    assert len({chunk.id for chunk in replayed}) == 1


def test_streams_in_an_independent_scope_continue_the_sequence(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    with independent():
        texts = ["".join(str(c.content) for c in chat.stream(NUMBER)) for _ in range(3)]
        texts.append(str(chat.invoke(NUMBER).content))
    assert len(set(texts)) == 4
    with independent():
        again = ["".join(str(c.content) for c in chat.stream(NUMBER)) for _ in range(3)]
    assert again == texts[:3] and sent(server) == 4


# -- tools, structured output, n, batch -------------------------------------------------


def test_bound_tools_are_formatted_by_the_wrapped_model_and_replay(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    bound = chat.bind_tools([get_weather], tool_choice="get_weather")
    first = bound.invoke("What is the weather in Paris?")
    assert isinstance(first, AIMessage) and first.tool_calls[0]["name"] == "get_weather"
    body = server.chat_requests()[0].body
    assert body["tools"][0]["function"]["name"] == "get_weather"  # OpenAI's format
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert bound.invoke("What is the weather in Paris?").tool_calls == first.tool_calls
    streamed = sum_chunks(list(bound.stream("What is the weather in Paris?")))
    assert streamed.tool_calls == first.tool_calls
    unbound = chat.invoke("What is the weather in Paris?")  # tools are part of the key
    assert unbound.response_metadata["cache_key"] != first.response_metadata["cache_key"]
    assert sent(server) == 2

    run1 = agent_loop(chat)
    run2 = agent_loop(MnimiChatModel(model=openai(), cache_dir=cache, replication=True))
    assert [m.content for m in run2] == [m.content for m in run1]
    assert sent(server) == 4


class Joke(BaseModel):
    """A joke."""

    setup: str
    punchline: str


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output_uses_the_wrapped_models_method_and_replays(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str, method: str
) -> None:
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    prompt = "Tell me a joke with 'setup' and 'punchline' keys."
    structured = chat.with_structured_output(Joke, method=method)  # type: ignore[arg-type]
    first = structured.invoke(prompt)
    assert isinstance(first, Joke)
    body = server.chat_requests()[0].body
    if method == "function_calling":
        assert body["tool_choice"]["function"]["name"] == "Joke"
    elif method == "json_schema":
        assert body["response_format"]["type"] == "json_schema"
    else:
        assert body["response_format"] == {"type": "json_object"}
    assert structured.invoke(prompt) == first
    raw = chat.with_structured_output(Joke, method=method, include_raw=True)  # type: ignore[arg-type]
    out = raw.invoke(prompt)
    assert isinstance(out, dict) and out["parsed"] == first and out["parsing_error"] is None
    assert out["raw"].response_metadata["cache_hit"] is True
    replay = MnimiChatModel(model=openai(), cache_dir=cache, replication=True)
    assert replay.with_structured_output(Joke, method=method).invoke(prompt) == first  # type: ignore[arg-type]
    assert sent(server) == 1


def test_n_fills_several_positions_with_one_request_and_asks_only_for_missing(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    three = MnimiChatModel(model=openai(), cache_dir=cache, n=3)
    result = three.generate([[HumanMessage(NUMBER)]])
    texts = [g.text for g in result.generations[0]]
    assert len(set(texts)) == 3
    assert [g.message.response_metadata["sequence_index"] for g in result.generations[0]] == [
        0,
        1,
        2,
    ]
    assert [r.body.get("n") for r in server.chat_requests()] == [3]
    five = MnimiChatModel(model=openai(), cache_dir=cache, n=5)
    more = [g.text for g in five.generate([[HumanMessage(NUMBER)]]).generations[0]]
    assert more[:3] == texts and len(set(more)) == 5
    assert [r.body.get("n") for r in server.chat_requests()] == [3, 2]
    # Each sample keeps its share of the response's usage.
    usage = [g.message.usage_metadata for g in result.generations[0]]
    assert all(u is not None and u["output_tokens"] >= 0 for u in usage)
    anthropic = ChatAnthropic(model="mock-model", base_url=server.root_url, api_key=SECRET)
    no_n = MnimiChatModel(model=anthropic, cache_dir=cache, n=2)  # no n: one request each
    server.reset()
    assert len({g.text for g in no_n.generate([[HumanMessage(NUMBER)]]).generations[0]}) == 2
    assert len(server.requests) == 2


def test_a_provider_that_refuses_n_is_asked_one_sample_a_request_from_then_on(
    cache: str,
) -> None:
    # Groq's API answers n > 1 with a 400, though ChatGroq has an n: every refill sent
    # the doomed request first, and MnimiChatModel(n=3) failed outright.
    with SamplingServer(seed=3, max_n=1) as single:
        chat = ChatOpenAI(model="mock-model", base_url=single.url, api_key=SECRET)
        three = MnimiChatModel(model=chat, cache_dir=cache, n=3)
        texts = [g.text for g in three.generate([[HumanMessage(NUMBER)]]).generations[0]]
        assert len(set(texts)) == 3
        assert [(r.body.get("n"), r.status) for r in single.chat_requests()] == [
            (3, 400),
            *[(1, 200)] * 3,
        ]
        single.reset()
        with independent():
            asked = MnimiChatModel(model=chat, cache_dir=cache).batch(["Say something."] * 3)
        assert len({m.text for m in asked}) == 3
        assert [(r.body.get("n"), r.status) for r in single.chat_requests()] == [(1, 200)] * 3


@pytest.mark.parametrize(
    "bound",
    [
        lambda chat: chat.bind_tools([get_weather]),
        lambda chat: chat.with_structured_output(Joke),
        lambda chat: chat.bind(stop=["."]),
        lambda chat: chat.with_retry(),
    ],
    ids=["bind_tools", "with_structured_output", "bind", "with_retry"],
)
def test_a_bound_chat_model_is_refused_with_what_to_do(
    openai: Callable[..., ChatOpenAI], cache: str, bound: Callable[[ChatOpenAI], Any]
) -> None:
    # Not pydantic's two-branch "should be a valid string / instance of BaseChatModel".
    with pytest.raises(TypeError, match=r"Wrap the chat model itself .*\.bind_tools\("):
        MnimiChatModel(model=bound(openai()), cache_dir=cache)


def test_a_completion_model_or_another_value_is_refused_with_what_to_do(cache: str) -> None:
    # A completion model was told it was "a runnable built from a chat model", and 123 got
    # pydantic's union error naming its internal validators.
    from langchain_openai import OpenAI

    with pytest.raises(TypeError, match=r"not a completion model \(OpenAI.*MnimiLLMCache"):
        MnimiChatModel(model=OpenAI(api_key="sk-x"), cache_dir=cache)
    with pytest.raises(TypeError, match=r"a LiteLLM model name .*, got int$"):
        MnimiChatModel(model=123, cache_dir=cache)  # type: ignore[arg-type]


def test_the_wrapped_models_own_n_is_the_default(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # ChatOpenAI(n=3) answers with 3 generations; wrapped, it must too (and keep all 3).
    chat = MnimiChatModel(model=openai(n=3), cache_dir=cache)
    texts = [g.text for g in chat.generate([[HumanMessage(NUMBER)]]).generations[0]]
    assert len(set(texts)) == 3
    assert [g.text for g in chat.generate([[HumanMessage(NUMBER)]]).generations[0]] == texts
    more = MnimiChatModel(model=openai(n=5), cache_dir=cache)
    five = [g.text for g in more.generate([[HumanMessage(NUMBER)]]).generations[0]]
    assert five[:3] == texts and len(set(five)) == 5
    assert [r.body.get("n") for r in server.chat_requests()] == [3, 2]
    # A per-call n, and MnimiChatModel's own n, still decide; a stream asks for one.
    assert len(chat.generate([[HumanMessage(NUMBER)]], n=1).generations[0]) == 1
    one = MnimiChatModel(model=openai(n=3), cache_dir=cache, n=1)
    assert len(one.generate([[HumanMessage(NUMBER)]]).generations[0]) == 1
    streamed = sum_chunks(list(chat.stream("Pick a number between 1 and 10.")))
    assert streamed.content and server.chat_requests()[-1].body.get("n") == 1


@pytest.mark.parametrize("form", ["wrapped", "string"])
def test_batch_in_an_independent_scope_is_deterministic(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str, form: str
) -> None:
    chat = (
        MnimiChatModel(model=openai(), cache_dir=cache)
        if form == "wrapped"
        else MnimiChatModel(
            model="openai/mock-model", api_base=server.url, api_key=SECRET, cache_dir=cache
        )
    )
    inputs = [NUMBER] * 4 + ["Pick a number between 1 and 999999."] * 2
    with independent():
        first = [m.content for m in chat.batch(inputs, config={"max_concurrency": 6})]
    assert len(set(first)) == 6
    for _ in range(4):
        with independent():
            assert [m.content for m in chat.batch(inputs)] == first
        with independent():
            assert [m.content for m in asyncio.run(chat.abatch(inputs))] == first
    with independent():
        indices = [m.response_metadata["sequence_index"] for m in chat.batch(inputs)]
    assert indices == [0, 1, 2, 3, 0, 1]
    # Outside a scope a batch is repeatable: identical inputs share one sample.
    assert len({m.content for m in chat.batch(inputs[:4])}) == 1
    expected = [4, 2] if form == "wrapped" else [None] * 6  # n where the model has it
    assert sorted(map(str, [r.body.get("n") for r in server.chat_requests()])) == sorted(
        map(str, expected)
    )


def test_batch_as_completed_in_an_independent_scope_is_deterministic(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    """``batch_as_completed``/``abatch_as_completed`` (progress bars over an evaluation) are
    as deterministic as ``batch``: run again in one process after an ``abatch`` (a notebook
    cell re-run), LangChain's own versions gave the inputs the same samples, but shuffled."""
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    inputs = [NUMBER] * 4

    async def run() -> tuple[list[str], list[tuple[int, str]], list[tuple[int, str]]]:
        with independent():
            before = [str(m.content) for m in await chat.abatch([NUMBER])]
            done = [(i, str(m.content)) async for i, m in chat.abatch_as_completed(inputs)]
            synced = [(i, str(m.content)) for i, m in chat.batch_as_completed(inputs)]
        return before, sorted(done), sorted(synced)

    first = asyncio.run(run())
    assert [i for i, _ in first[1]] == [0, 1, 2, 3] and len(
        {*first[0], *dict(first[1]).values()}
    ) == 5
    assert len({*dict(first[1]).values(), *dict(first[2]).values()}) == 8
    paid = len(server.chat_requests())
    for _ in range(3):
        assert asyncio.run(run()) == first
    assert len(server.chat_requests()) == paid
    assert list(chat.batch_as_completed([])) == []


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_a_structured_output_batch_pays_once_and_every_answer_parses(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str, method: str
) -> None:
    # The binding carries LangChain's trace label of the schema, which its invoke drops
    # before _generate: the batch's draws were keyed with it and each input paid again.
    # And langchain-openai parses only the first choice of a response of n, so inputs
    # answered by the other choices of one json_schema request failed to parse, for good.
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    structured = chat.with_structured_output(Joke, method=method)  # type: ignore[arg-type]
    # The local server fills the keys a JSON mode prompt names with random text; with a
    # schema it draws every value itself.
    keys = " with keys 'setup' and 'punchline'" if method == "json_mode" else ""
    prompt = f"Tell me a joke{keys}."
    with independent():
        first = structured.batch([prompt] * 3)
    assert [r.body.get("n") for r in server.chat_requests()] == [3]
    assert all(isinstance(joke, Joke) for joke in first)
    assert len({joke.model_dump_json() for joke in first}) == 3
    topics = [f"Tell me a joke about {topic}{keys}." for topic in ("cats", "owls")]
    distinct = structured.batch(topics)
    assert sent(server) == 3
    for _ in range(3):
        with independent():
            assert structured.batch([prompt] * 3) == first
        with independent():
            assert asyncio.run(structured.abatch([prompt] * 3)) == first
        assert structured.batch(topics) == distinct
    assert sent(server) == 3


@pytest.mark.parametrize("run", ["batch", "abatch"])
@pytest.mark.parametrize("form", ["wrapped", "string"])
def test_each_call_of_a_batch_gets_its_own_outcome(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str, form: str, run: str
) -> None:
    # Identical inputs are drawn together; when that draw fails, the inputs whose positions
    # are there still get them, at the positions a batch always gives them.
    def chat(**options: Any) -> MnimiChatModel:
        if form == "wrapped":
            return MnimiChatModel(model=openai(), cache_dir=cache, **options)
        return MnimiChatModel(
            model="openai/mock-model",
            api_base=server.url,
            api_key=SECRET,
            max_retries=0,
            cache_dir=cache,
            **options,
        )

    def outcomes(model: MnimiChatModel, size: int = 4) -> list[Any]:
        with independent():
            if run == "batch":
                return model.batch([NUMBER] * size, return_exceptions=True)
            return asyncio.run(model.abatch([NUMBER] * size, return_exceptions=True))

    recorded = [m.content for m in outcomes(chat(), 2)]
    server.reset()
    replayed = outcomes(chat(replication=True))
    assert [m.content for m in replayed[:2]] == recorded
    assert [isinstance(e, ReplicationCacheMiss) for e in replayed[2:]] == [True, True]
    assert server.requests == []
    # A provider that fails: the cached calls are answered, the others get its error.
    server.fail_next(500, count=20)
    failed = outcomes(chat())
    assert [m.content for m in failed[:2]] == recorded
    assert all(isinstance(e, Exception) for e in failed[2:])
    # The group's failed draw (one request of n=2, or two of one), then the third call's
    # own; the fourth call, which needs a later position still, shares its error.
    assert sent(server) == (2 if form == "wrapped" else 3)
    server.reset()
    # Paid samples are kept (law 6): the string form asks for one sample per request, so
    # one of the two requests for positions 2 and 3 succeeds and its sample answers a call.
    server.fail_next(500, count=1)
    answered = outcomes(chat())
    assert [m.response_metadata["sequence_index"] for m in answered] == [0, 1, 2, 3]
    assert [m.content for m in answered[:2]] == recorded
    assert sent(server) == 3
    server.reset()
    assert [m.content for m in outcomes(chat(replication=True))] == [m.content for m in answered]
    assert server.requests == []


# -- a non-OpenAI model ---------------------------------------------------------------


def test_chat_anthropic_through_the_wrapper(server: SamplingServer, cache: str) -> None:
    server.reset()
    anthropic = ChatAnthropic(
        model="mock-claude", base_url=server.root_url, api_key=SECRET, max_retries=0
    )
    chat = MnimiChatModel(model=anthropic, cache_dir=cache)
    miss = chat.invoke(NUMBER)
    hit = chat.invoke(NUMBER)
    assert hit.content == miss.content and hit.response_metadata["cache_hit"] is True
    assert hit.usage_metadata == miss.usage_metadata
    assert hit.response_metadata["model_name"] == "mock-claude"
    with independent():
        texts = [chat.invoke(NUMBER).content for _ in range(3)]
    assert texts[0] == miss.content and len(set(texts)) == 3
    server.chunk_delay = 0.05
    stream = chat.stream("Tell me a story.")
    next(stream)
    assert server.requests[-1].finished is False and server.requests[-1].body["stream"] is True
    live = sum_chunks([*stream])
    server.chunk_delay = 0.0
    assert (
        "".join(str(c.content) for c in chat.stream("Tell me a story."))
        == chat.invoke("Tell me a story.").content
    )
    bound = chat.bind_tools([get_weather])
    call = bound.invoke("What is the weather in Paris?")
    assert server.requests[-1].body["tools"][0]["input_schema"]  # Anthropic's format
    assert bound.invoke("What is the weather in Paris?").tool_calls == call.tool_calls
    assert call.tool_calls and call.tool_calls[0]["name"] == "get_weather"
    assert live.response_metadata["cache_hit"] is False
    assert {r.path for r in server.requests} == {"/v1/messages"}
    assert len(server.requests) == 5


def without_ids(content: Any) -> Any:
    if isinstance(content, list):
        return [{k: v for k, v in block.items() if k != "id"} for block in content]
    return content


def test_an_anthropic_stream_replays_to_invoke_as_invoke_answers(
    server: SamplingServer, cache: str
) -> None:
    server.reset()
    anthropic = ChatAnthropic(
        model="mock-claude", base_url=server.root_url, api_key=SECRET, max_retries=0
    )
    chat = MnimiChatModel(model=anthropic, cache_dir=cache)
    bound, bare = chat.bind_tools([get_weather]), anthropic.bind_tools([get_weather])
    question = "What is the weather in 'Paris'?"
    own = bare.invoke(question)  # what ChatAnthropic's invoke gives
    assert own.content[0]["input"] == {"city": "Paris"}

    live = sum_chunks(list(bound.stream(question)))
    assert live.content[0]["input"] == {}  # the stream's own shape, as ChatAnthropic streams
    assert live.content[0]["partial_json"]
    replayed = bound.invoke(question)
    assert replayed.response_metadata["cache_hit"] is True
    assert without_ids(replayed.content) == without_ids(own.content)
    assert replayed.tool_calls == live.tool_calls
    assert [c["args"] for c in replayed.tool_calls] == [{"city": "Paris"}]
    again = sum_chunks(list(bound.stream(question)))
    assert again.tool_calls == live.tool_calls and again.response_metadata["cache_hit"] is True

    # With tools bound, ChatAnthropic streams text as blocks too; its invoke gives a lone
    # text block as a string, and so does a replay.
    assert isinstance(bare.invoke("Say hello.").content, str)
    live = sum_chunks(list(bound.stream("Tell me a story.")))
    assert isinstance(live.content, list) and live.content[0]["index"] == 0
    text = "".join(b["text"] for b in live.content if isinstance(b, dict))
    assert text and bound.invoke("Tell me a story.").content == text

    async def astreamed() -> AIMessageChunk:
        return sum_chunks([c async for c in bound.astream("What is the weather in 'Oslo'?")])

    asyncio.run(astreamed())
    assert bound.invoke("What is the weather in 'Oslo'?").content[0]["input"] == {"city": "Oslo"}
    assert len(server.requests) == 5


# -- LangGraph --------------------------------------------------------------------------


class State(TypedDict):
    answer: str


def one_retried_node(node: Any) -> Any:
    """A graph of ``node`` alone, run again at once on a ValueError, 4 attempts at most."""
    graph = StateGraph(State)
    policy = RetryPolicy(max_attempts=4, initial_interval=0.0, jitter=False, retry_on=ValueError)
    graph.add_node("node", node, retry_policy=policy)
    graph.add_edge(START, "node")
    graph.add_edge("node", END)
    return graph.compile()


def test_langgraph_retry_attempts_draw_fresh_and_a_rerun_replays(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    def run() -> list[str]:
        chat = MnimiChatModel(model=openai(), cache_dir=cache)
        seen: list[str] = []

        def propose(state: State) -> State:
            seen.append(str(chat.invoke(NUMBER).content))
            if len(seen) < 3:
                raise ValueError(seen[-1])
            return {"answer": seen[-1]}

        one_retried_node(propose).invoke({"answer": ""})
        return seen

    first = run()
    assert len(set(first)) == 3
    assert run() == first
    assert sent(server) == 3


@pytest.mark.parametrize(
    "shape", ["subgraph as the node", "graph invoked in the node", "graph streamed in the node"]
)
@pytest.mark.parametrize("run_async", [False, True], ids=["invoke", "ainvoke"])
def test_a_retried_node_that_runs_a_graph_draws_fresh_and_a_rerun_replays(
    server: SamplingServer,
    openai: Callable[..., ChatOpenAI],
    cache: str,
    shape: str,
    run_async: bool,
) -> None:
    # The graph the node runs starts its own nodes at attempt 1: every retry of the node
    # around it replayed the answer it had just rejected.
    def run() -> list[str]:
        chat = MnimiChatModel(model=openai(), cache_dir=cache)
        seen: list[str] = []

        def check(state: State) -> State:
            if len(seen) < 3:
                raise ValueError(state["answer"])
            return state

        def propose(state: State) -> State:
            seen.append(str(chat.invoke(NUMBER).content))
            return {"answer": seen[-1]}

        async def apropose(state: State) -> State:
            seen.append(str((await chat.ainvoke(NUMBER)).content))
            return {"answer": seen[-1]}

        inner = StateGraph(State)
        inner.add_node("propose", apropose if run_async else propose)
        inner.add_edge(START, "propose")
        if shape == "subgraph as the node":
            inner.add_node("check", check)
            inner.add_edge("propose", "check")
            inner.add_edge("check", END)
            node: Any = inner.compile()
        else:
            inner.add_edge("propose", END)
            compiled = inner.compile()

            def node(state: State) -> State:
                if shape == "graph invoked in the node":
                    return check(compiled.invoke(state))
                *_, last = compiled.stream(state, stream_mode="values")
                return check(last)

            async def anode(state: State) -> State:
                if shape == "graph invoked in the node":
                    return check(await compiled.ainvoke(state))
                steps = [step async for step in compiled.astream(state, stream_mode="values")]
                return check(steps[-1])

            node = anode if run_async else node
        graph = one_retried_node(node)
        if run_async:
            asyncio.run(graph.ainvoke({"answer": ""}))
        else:
            graph.invoke({"answer": ""})
        return seen

    first = run()
    assert len(set(first)) == 3
    assert run() == first
    assert sent(server) == 3


async def test_an_abandoned_astream_stores_nothing_and_gives_its_position_back(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    server.chunk_delay = 5 * FINISHING
    with independent():
        stream = chat.astream("Tell me a poem.")
        await anext(stream)
        await stream.aclose()  # abandoned half-way (the rest arrives slowly: not yet paid for)
        after = await chat.ainvoke("Tell me a poem.")
    assert after.response_metadata["sequence_index"] == 0
    assert after.response_metadata["cache_hit"] is False
    assert chat.cache_stats()["samples_stored"] == 1
    assert sent(server) == 2


def test_callbacks_see_each_chunk_of_a_wrapped_stream_once(
    openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    class TokenSpy(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    for _ in range(2):  # a live miss, then a replayed hit
        spy = TokenSpy()
        chunks = list(chat.stream(NUMBER, config={"callbacks": [spy]}))
        assert len(spy.tokens) == len(chunks)


def test_a_lone_stop_string_is_one_stop_sequence(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    wrapped = MnimiChatModel(model=openai(), cache_dir=cache)
    wrapped.invoke("Stop here", stop="zz")
    wrapped.bind(stop="zz").invoke("Stop there")
    assert [r.body["stop"] for r in server.chat_requests()] == [["zz"], ["zz"]]


# -- the wrapped model's run and the caller's handlers -------------------------------------


class _Node(TypedDict):
    text: str


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_langgraph_streams_each_token_of_a_miss_once(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str, mode: str
) -> None:
    """stream_mode="messages" hears the wrapper's run, not the wrapped model's run too."""
    chat = MnimiChatModel(model=openai(), cache_dir=cache)

    def node(state: _Node) -> _Node:
        return {"text": str(chat.invoke(state["text"]).content)}

    async def anode(state: _Node) -> _Node:
        return {"text": str((await chat.ainvoke(state["text"])).content)}

    graph = StateGraph(_Node)
    graph.add_node("ask", node if mode == "sync" else anode)
    graph.add_edge(START, "ask")
    graph.add_edge("ask", END)
    app = graph.compile()

    async def streamed() -> tuple[str, str]:
        text, final = "", ""
        async for kind, item in app.astream({"text": NUMBER}, stream_mode=["messages", "values"]):
            if kind == "messages":
                text += str(item[0].content)
            else:
                final = item["text"]
        return text, final

    for _ in range(2):  # a miss, then a hit
        text, final = asyncio.run(streamed())
        assert text == final and final.split()[0].isdigit()
    assert sent(server) == 1


def test_astream_events_of_a_miss_show_one_chat_model_run(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    seen: list[str] = []  # the wrapped model's own callbacks still run

    class Own(BaseCallbackHandler):
        def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            seen.append("end")

    chat = MnimiChatModel(model=openai(callbacks=[Own()]), cache_dir=cache)

    async def events() -> list[dict[str, Any]]:
        return [event async for event in chat.astream_events(NUMBER, version="v2")]

    got = asyncio.run(events())
    starts = [e["name"] for e in got if e["event"] == "on_chat_model_start"]
    streamed = "".join(
        str(e["data"]["chunk"].content) for e in got if e["event"] == "on_chat_model_stream"
    )
    end = [e for e in got if e["event"] == "on_chat_model_end"]
    assert starts == ["MnimiChatModel"] and len(end) == 1
    assert streamed == end[0]["data"]["output"].content
    assert seen == ["end"] and sent(server) == 1


@pytest.mark.parametrize("order", ["plain first", "wrapped first"])
@pytest.mark.parametrize("how", ["ainvoke", "astream"])
def test_an_async_miss_leaves_the_users_own_models_working(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str, order: str, how: str
) -> None:
    """langchain-openai shares one async client per endpoint: a miss must not move it to
    another event loop, where it breaks the user's other models (and loses the answer)."""
    # A timeout of its own: langchain-openai hands every test's models, across their
    # asyncio.run loops, the same client otherwise (the upstream issue, unrelated to us).
    timeout = (
        60.0 + 2 * ["ainvoke", "astream"].index(how) + ["plain first", "wrapped first"].index(order)
    )
    plain = openai(timeout=timeout)
    wrapped = MnimiChatModel(model=openai(timeout=timeout), cache_dir=cache)
    models = [plain, wrapped] if order == "plain first" else [wrapped, plain]

    async def run() -> list[str]:
        texts = []
        for model in [*models, models[0]]:
            if how == "ainvoke":
                texts.append(str((await model.ainvoke(NUMBER)).content))
            else:
                chunks = [chunk async for chunk in model.astream(NUMBER)]
                texts.append(str(sum_chunks(chunks).content))
        return texts

    texts = asyncio.run(run())
    assert all(text.split()[0].isdigit() for text in texts)
    assert wrapped.cache_stats()["samples_stored"] == 1  # the miss's answer was kept
    assert sent(server) == 3 if order == "plain first" else 2


def test_the_cache_location_may_be_a_path_but_not_empty(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], tmp_path: Path
) -> None:
    chat = MnimiChatModel(model=openai(), cache_dir=tmp_path / "cache")  # type: ignore[arg-type]
    assert chat.invoke(NUMBER).content == chat.invoke(NUMBER).content and sent(server) == 1
    assert chat.cache_dir == str(tmp_path / "cache")
    for empty in ("", " "):
        with pytest.raises(ValidationError, match="is empty"):
            MnimiChatModel(model=openai(), cache_dir=empty)


def test_settings_of_the_wrapped_model_are_refused_on_the_wrapper_and_fields_configurable(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    with pytest.raises(ValidationError, match="temperature belongs to the wrapped ChatOpenAI"):
        MnimiChatModel(model=openai(), cache_dir=cache, temperature=0.2)
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    # configurable_fields() rebuilds the wrapper with every field given: not a clash.
    aliased = chat.configurable_fields(alias=ConfigurableField(id="alias"))
    first = aliased.with_config(configurable={"alias": "mine"}).invoke(NUMBER)
    again = aliased.with_config(configurable={"alias": "mine"}).invoke(NUMBER)
    assert first.content == again.content and sent(server) == 1
    unaliased = chat.invoke(NUMBER).response_metadata["cache_key"]
    assert first.response_metadata["cache_key"] != unaliased
    hotter = chat.configurable_fields(temperature=ConfigurableField(id="t"))
    with pytest.raises(ValidationError, match="configurable_alternatives"):
        hotter.with_config(configurable={"t": 0.2}).invoke(NUMBER)


class _AsyncOnly(BaseChatModel):
    """A chat model with async code alone: its sync path raises."""

    #: Shared by the copies the wrapper makes of it (each without LangChain's cache).
    calls: list[int] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "async-only"

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        raise NotImplementedError("use the async API")

    async def _agenerate(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.calls.append(len(self.calls) + 1)
        await asyncio.sleep(0.01)
        answer = AIMessage(f"answer {len(self.calls)}")
        return ChatResult(generations=[ChatGeneration(message=answer)])


def test_a_model_with_async_code_alone_is_drawn_through_it(cache: str) -> None:
    """An async miss runs the sync path on a refill thread; where it raises
    NotImplementedError, the model's own async path runs instead."""
    model = _AsyncOnly()
    chat = MnimiChatModel(model=model, cache_dir=cache)

    async def both() -> tuple[str, str]:
        invoked = await chat.ainvoke("Hello")
        streamed = sum_chunks([chunk async for chunk in chat.astream("Hello there")])
        return str(invoked.content), str(streamed.content)

    first = asyncio.run(both())
    assert first == ("answer 1", "answer 2")
    assert asyncio.run(both()) == first and len(model.calls) == 2  # replayed


def test_calls_waiting_behind_a_live_stream_keep_their_order_on_every_run(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # Whole-answer calls of a request wait while a stream of it is live; woken together,
    # they claimed their positions in the order their waits happened to end.
    # Spaced widely enough that a loaded machine still makes them in this order, each
    # while the first stream is live.
    server.chunk_delay = 0.05

    async def streamed(chat: MnimiChatModel, delay: float = 0.0) -> str:
        await asyncio.sleep(delay)
        return "".join([str(chunk.content) async for chunk in chat.astream(NUMBER)])

    async def whole(chat: MnimiChatModel, delay: float) -> str:
        await asyncio.sleep(delay)
        return str((await chat.ainvoke(NUMBER)).content)

    async def run() -> list[str]:
        chat = MnimiChatModel(model=openai(), cache_dir=cache)
        with independent():
            # Made one after another while the first stream is live (on a re-run, a hit).
            later = [whole(chat, 0.04 * i) for i in range(1, 5)]
            calls = [streamed(chat), *later, streamed(chat, 0.2)]
            return list(await asyncio.gather(*calls))

    first = asyncio.run(run())
    assert len(set(first)) == 6
    for _ in range(3):
        assert asyncio.run(run()) == first
    assert sent(server) == 6


def test_a_run_that_abandons_a_stream_then_calls_again_replays_as_it_ran(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # On a re-run the abandoned stream is a hit: it kept its position, and the call after
    # it skipped to one never drawn (a paid request, another answer; a replica failed).
    server.chunk_delay = 5 * FINISHING  # still being produced when the reader leaves

    async def run(replication: bool) -> tuple[str, str]:
        chat = MnimiChatModel(model=openai(), cache_dir=cache, replication=replication)
        with independent():
            for _ in chat.stream(NUMBER):
                break
            after = str(chat.invoke(NUMBER).content)
            chunks = chat.astream(NUMBER)
            await anext(chunks)
            await chunks.aclose()
            aafter = str((await chat.ainvoke(NUMBER)).content)
        return after, aafter

    first = asyncio.run(run(replication=False))
    assert sent(server) == 4 and first[0] != first[1]
    assert asyncio.run(run(replication=False)) == first
    assert asyncio.run(run(replication=True)) == first
    assert sent(server) == 4


def test_a_stream_read_to_its_finish_reason_is_read_whole(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # Stopping at the chunk with the finish reason is reading the whole answer: counted
    # as abandoned, its position went to the next call, which showed the same sample.
    def run() -> tuple[str, str]:
        chat = MnimiChatModel(model=openai(), cache_dir=cache)
        with independent():
            text = ""
            for chunk in chat.stream(NUMBER):
                text += str(chunk.content)
                if chunk.response_metadata.get("finish_reason"):
                    break
            return text, str(chat.invoke(NUMBER).content)

    first = run()
    assert first[0] != first[1] and sent(server) == 2
    assert run() == first and sent(server) == 2


def test_an_include_raw_structured_batch_is_the_models_own_batch(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # include_raw builds {"raw": model} | parse, whose batch was a call per input on a
    # thread pool: positions in thread order, and no request shared by identical inputs.
    chat = MnimiChatModel(model=openai(), cache_dir=cache)
    structured = chat.with_structured_output(Joke, method="function_calling", include_raw=True)
    prompt = "Tell me a joke."

    def answers() -> list[tuple[Any, str]]:
        with independent():
            outputs = structured.batch([prompt] * 3)
        assert all(isinstance(out["parsed"], Joke) for out in outputs)
        return [(out["parsed"], out["raw"].response_metadata["draw_id"]) for out in outputs]

    first = answers()
    assert [r.body.get("n") for r in server.chat_requests()] == [3]
    assert len({draw for _, draw in first}) == 3
    for _ in range(3):
        assert answers() == first
    # It streams as the map did (both replay the one stored sample here).
    wrapped = chat.model
    assert isinstance(wrapped, ChatOpenAI)
    built = wrapped.with_structured_output(Joke, method="function_calling", include_raw=True)
    as_built = chat._rebind(built)
    # (The assigned keys come in the order their branches finish.)
    assert sorted(sorted(part) for part in structured.stream(prompt)) == sorted(
        sorted(part) for part in as_built.stream(prompt)
    )
    assert sent(server) == 1


def test_a_model_on_openais_responses_api_is_wrapped_and_keyed_apart(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # The Responses API takes no n: every miss of the wrapper failed with a TypeError from
    # the OpenAI client. And its answers (content blocks) must not replay for a model on
    # Chat Completions, or the other way round.
    def responses() -> int:
        return sum(request.path.endswith("/responses") for request in server.requests)

    def run(replication: bool = False) -> list[Any]:
        chat = openai(use_responses_api=True)
        wrapped = MnimiChatModel(model=chat, cache_dir=cache, replication=replication)
        with independent():
            texts: list[Any] = [wrapped.invoke(NUMBER).text for _ in range(2)]
            texts.append("".join(chunk.text for chunk in wrapped.stream(NUMBER)))
            several = MnimiChatModel(model=chat, cache_dir=cache, n=3, replication=replication)
            texts.append(
                [g.text for g in several.generate([[HumanMessage(NUMBER)]]).generations[0]]
            )
        return texts

    first = run()
    assert len(set(first[:3] + first[3])) == 6  # a stream and 3 samples: one request each
    assert responses() == 6 and sent(server) == 0
    assert run(replication=True) == first
    assert responses() == 6
    on_chat_completions = MnimiChatModel(model=openai(), cache_dir=cache, replication=True)
    with pytest.raises(ReplicationCacheMiss):
        on_chat_completions.invoke(NUMBER)
    assert wrapped_identity(openai(output_version="v1")) != wrapped_identity(openai())


def test_settings_a_model_leaves_out_of_its_identifying_params_are_keyed(
    server: SamplingServer, cache: str
) -> None:
    # ChatAnthropic's _identifying_params leave out stop_sequences (and betas,
    # mcp_servers, ...), which reach the request: a model stopping at " " was answered
    # with the whole sentence another model's call had stored.
    def claude(**settings: Any) -> MnimiChatModel:
        chat = ChatAnthropic(
            model="mock-claude", base_url=server.root_url, api_key=SECRET, **settings
        )
        return MnimiChatModel(model=chat, cache_dir=cache)

    server.reset()
    whole = claude().invoke("Say something.").text
    cut = claude(stop_sequences=[" "]).invoke("Say something.").text
    assert " " in whole and " " not in cut
    assert len(server.requests) == 2
    assert claude(stop_sequences=[" "], max_retries=5).invoke("Say something.").text == cut
    assert len(server.requests) == 2
    # Given as None (as LangChain's docs write settings) and set after wrapping: keyed then.
    chat = ChatAnthropic(
        model="mock-claude", base_url=server.root_url, api_key=SECRET, stop_sequences=None
    )
    wrapped = MnimiChatModel(model=chat, cache_dir=cache)
    assert wrapped.invoke("Say something.").text == whole
    chat.stop_sequences = [" "]
    assert wrapped.invoke("Say something.").text == cut
    assert len(server.requests) == 2


def test_a_setting_changed_in_place_is_seen_at_the_next_call(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    chat = openai(extra_body={"top_k": 3})
    wrapped = MnimiChatModel(model=chat, cache_dir=cache)
    before = wrapped.invoke(NUMBER)
    assert chat.extra_body is not None
    chat.extra_body["top_k"] = 9  # another request: the stored sample must not answer it
    after = wrapped.invoke(NUMBER)
    assert after.response_metadata["cache_hit"] is False
    assert after.response_metadata["cache_key"] != before.response_metadata["cache_key"]
    fresh = MnimiChatModel(model=openai(extra_body={"top_k": 9}), cache_dir=cache)
    assert (
        fresh.invoke(NUMBER).response_metadata["cache_key"] == after.response_metadata["cache_key"]
    )


def test_structured_output_sends_what_the_wrapped_model_alone_sends(
    server: SamplingServer, openai: Callable[..., ChatOpenAI], cache: str
) -> None:
    # ChatOpenAI's default is json_schema (response_format): the wrapper sent a forced
    # tool call instead, another request with other answers.
    class Person(BaseModel):
        name: str
        age: int

    wrapped = MnimiChatModel(model=openai(), cache_dir=cache)
    server.reset()
    person = wrapped.with_structured_output(Person).invoke("Create 'Ada', age 36.")
    assert isinstance(person, Person)
    body = server.chat_requests()[-1].body
    assert body["response_format"]["type"] == "json_schema" and "tools" not in body


def test_an_argument_error_shows_no_other_argument(openai: Callable[..., ChatOpenAI]) -> None:
    # pydantic shows the input of a failed validation: the api_key's tail was in it.
    with pytest.raises(ValidationError) as refused:  # api_key belongs to the wrapped model
        MnimiChatModel(model=openai(), api_key="sk-wrapped-TAIL-1234")
    assert "api_key" in str(refused.value) and "TAIL-1234" not in str(refused.value)


class MalformedCalls(BaseChatModel):
    """Answers with one valid tool call and one whose arguments are not JSON."""

    @property
    def _llm_type(self) -> str:
        return "malformed-calls"

    def _generate(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        answer = AIMessage(
            content="",
            tool_calls=[{"name": "w", "args": {"n": 0}, "id": "call_ok"}],
            invalid_tool_calls=[
                {"name": "w", "args": "not json {{", "id": "call_bad", "error": "not JSON"}
            ],
        )
        return ChatResult(generations=[ChatGeneration(message=answer)])


def test_a_replayed_stream_keeps_the_invalid_tool_calls(cache: str) -> None:
    # The replayed chunks were built from the valid calls alone: a streamed replay lost
    # the call whose arguments were not JSON, which the live answer and invoke kept.
    chat = MnimiChatModel(model=MalformedCalls(), cache_dir=cache)
    first = chat.invoke("Call the tools.")
    chunks = list(chat.stream("Call the tools."))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert [c["id"] for c in first.invalid_tool_calls] == ["call_bad"]
    assert [c["id"] for c in total.tool_calls] == ["call_ok"]  # type: ignore[attr-defined]
    assert [(c["id"], c["args"]) for c in total.invalid_tool_calls] == [  # type: ignore[attr-defined]
        ("call_bad", "not json {{")
    ]


class Priced(BaseChatModel):
    """Reports what each answer cost in ``response_cost``, as ChatLiteLLM does."""

    answers: list[int] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "priced"

    def _generate(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.answers.append(len(self.answers))
        answer = AIMessage(
            content=f"answer {len(self.answers)}", response_metadata={"response_cost": 0.25}
        )
        return ChatResult(generations=[ChatGeneration(message=answer)])


def test_a_hit_costs_nothing_and_the_miss_cost_is_stored(cache: str) -> None:
    # A replayed ChatLiteLLM answer reported the paid call's response_cost again, and the
    # store kept no cost of a wrapped model's misses ($0 in `mnimi stats`).
    chat = MnimiChatModel(model=Priced(), cache_dir=cache)
    miss, hit = chat.invoke(NUMBER), chat.invoke(NUMBER)
    assert (miss.response_metadata["response_cost"], hit.response_metadata["response_cost"]) == (
        0.25,
        0.0,
    )
    assert hit.content == miss.content and hit.response_metadata["cache_hit"] is True
    assert chat.cache_stats()["cost"] == pytest.approx(0.25)
