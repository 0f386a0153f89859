"""MnimiChatModel in LangChain and LangGraph, against the local sampling server (127.0.0.1)."""

from __future__ import annotations

import os

# Must precede any litellm import: otherwise litellm fetches its cost map over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import copy
import json
import logging
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.load import dumps, loads
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy
from pydantic import BaseModel, SecretStr
from test_providers import Relay

from mnimi_adapters import ProviderError, ReplicationCacheMiss, independent, no_cache, repeatable
from mnimi_adapters.core import BatchedModel, Persistent, Repeatable, Request, Sample
from mnimi_adapters.langchain import MnimiChatModel
from mnimi_adapters.testing import SamplingServer

ROOT = Path(__file__).resolve().parents[2]
NUMBER = "Pick a number between 1 and 1000000."
SECRET = "sk-mnimi-test-secret-4242"

ChatFactory = Callable[..., MnimiChatModel]


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=11) as running:
        yield running


@pytest.fixture
def chat(server: SamplingServer, tmp_path: Path) -> ChatFactory:
    """Builds chat models on the local server, all sharing this test's cache directory."""
    server.reset()

    def make(**overrides: Any) -> MnimiChatModel:
        params: dict[str, Any] = {
            "model": "openai/mock-model",
            "api_base": server.url,
            "api_key": SECRET,
            "cache_dir": str(tmp_path / "cache"),
        }
        params.update(overrides)
        return MnimiChatModel(**params)

    return make


def requests(server: SamplingServer) -> int:
    return len(server.chat_requests())


def number_chain(model: MnimiChatModel) -> Any:
    prompt = ChatPromptTemplate.from_messages([("human", "Pick a number between 1 and {top}.")])
    return prompt | model | StrOutputParser()


# -- construction -------------------------------------------------------------------------


def test_import_does_not_import_litellm() -> None:
    code = "import sys, mnimi_adapters.langchain; assert 'litellm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_needs_a_model_or_a_layer() -> None:
    with pytest.raises(ValueError, match="model"):
        MnimiChatModel()


def test_unknown_keywords_become_keyed_request_params(chat: ChatFactory) -> None:
    plain = chat()
    nucleus = chat(top_p=0.5)
    assert nucleus.model_kwargs == {"top_p": 0.5}
    a = plain.invoke("hello")
    b = nucleus.invoke("hello")
    assert a.response_metadata["cache_key"] != b.response_metadata["cache_key"]
    assert b.content != a.content


def test_output_changing_fields_are_in_the_key_and_n_is_not(chat: ChatFactory) -> None:
    def key(model: MnimiChatModel, **kwargs: Any) -> str:
        return str(model.invoke("hello", **kwargs).response_metadata["cache_key"])

    base = key(chat())
    assert key(chat(temperature=0.3)) != base
    assert key(chat(max_tokens=5)) != base
    assert key(chat(stop=["x"])) != base
    assert key(chat(), stop=["x"]) != base
    # A lone string is one stop sequence, as OpenAI takes it, not one per character.
    assert key(chat(), stop="xy") == key(chat(), stop=["xy"]) != key(chat(), stop=["x", "y"])
    assert key(chat(), seed=3) != base
    assert key(chat(alias="mock")) != base
    assert key(chat(n=2, max_batch=2)) == base
    assert key(chat(timeout=30, max_retries=1)) == base
    assert key(chat(api_key="sk-other")) == base


def test_litellm_options_do_not_split_keys(chat: ChatFactory) -> None:
    base = chat().invoke("hello").response_metadata["cache_key"]
    logged: list[object] = []
    optioned = chat(
        ssl_verify=False,
        stream_timeout=30,
        litellm_trace_id="trace-1",
        region_name="eu-west-1",
        mock_timeout=False,
        logger_fn=logged.append,  # not JSON: it must not even reach the key
    )
    assert optioned.invoke("hello").response_metadata["cache_key"] == base
    assert chat().invoke("hello", litellm_trace_id="trace-2").response_metadata["cache_key"] == base
    assert optioned.invoke("hello again").content  # a miss, sent with the options
    assert logged


def test_openai_route_with_an_api_base_never_sends_openai_api_key(
    server: SamplingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-must-not-leak")
    with Relay(server) as relay:
        model = MnimiChatModel(
            model="openai/mock-model", api_base=relay.url, cache_dir=str(tmp_path / "cache")
        )
        assert model.invoke(NUMBER).content
    assert relay.authorizations == ["Bearer EMPTY"]


# -- scopes in chains -------------------------------------------------------------------


def test_chain_outside_scopes_is_repeatable(server: SamplingServer, chat: ChatFactory) -> None:
    chain = number_chain(chat())
    first = chain.invoke({"top": 1000000})
    assert [chain.invoke({"top": 1000000}) for _ in range(3)] == [first] * 3
    assert requests(server) == 1


def test_chain_in_independent_scope_draws_fresh_and_a_rerun_replays(
    server: SamplingServer, chat: ChatFactory
) -> None:
    chain = number_chain(chat())
    with independent():
        run1 = [chain.invoke({"top": 1000000}) for _ in range(4)]
    assert len(set(run1)) == 4
    with independent():  # a new run: the same samples, in the same order
        run2 = [chain.invoke({"top": 1000000}) for _ in range(4)]
    assert run2 == run1
    # A later process: a new model over the same cache directory replays too.
    with independent():
        run3 = [number_chain(chat()).invoke({"top": 1000000}) for _ in range(4)]
    assert run3 == run1
    assert requests(server) == 4


def test_retry_pattern_repeatable_inside_independent(chat: ChatFactory) -> None:
    chain = number_chain(chat())
    attempts = []
    with independent():
        for _ in range(3):
            with repeatable():
                attempts.append((chain.invoke({"top": 1000000}), chain.invoke({"top": 1000000})))
    assert all(a == b for a, b in attempts)
    assert len({a for a, _ in attempts}) == 3


def test_no_cache_scope_always_calls_the_provider(
    server: SamplingServer, chat: ChatFactory
) -> None:
    model = chat()
    cached = model.invoke(NUMBER).content
    with no_cache():
        fresh = [model.invoke(NUMBER).content for _ in range(2)]
    assert len({cached, *fresh}) == 3
    assert model.invoke(NUMBER).content == cached
    assert requests(server) == 3


async def test_async_gather_in_independent_scope_gets_distinct_samples(
    server: SamplingServer, chat: ChatFactory
) -> None:
    model = chat()  # fresh: the concurrent calls below are also its first calls
    with independent():
        answers = await asyncio.gather(*(model.ainvoke(NUMBER) for _ in range(8)))
    texts = [a.content for a in answers]
    assert len(set(texts)) == 8
    assert sorted(a.response_metadata["sequence_index"] for a in answers) == list(range(8))
    assert requests(server) == 8
    assert model._built is not None and len(model._built[1]) == 1
    with independent():
        again = await asyncio.gather(*(model.ainvoke(NUMBER) for _ in range(8)))
    assert sorted(a.content for a in again) == sorted(texts)
    assert requests(server) == 8


def test_a_batch_keeps_to_max_concurrency(tmp_path: Path) -> None:
    # Six identical inputs are one refill of six single requests (max_batch=1), and abatch
    # drew every group at once: max_concurrency, a rate limit, was ignored.
    with SamplingServer(seed=12, latency=0.3) as slow:
        chat = MnimiChatModel(
            model="openai/mock-model",
            api_base=slow.url,
            api_key=SECRET,
            cache_dir=str(tmp_path / "cache"),
        )
        peak = 0
        watching = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not watching.is_set():
                peak = max(peak, sum(r.status == 0 for r in slow.requests))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with independent():
                votes = chat.batch([NUMBER] * 6, config={"max_concurrency": 2})
            asked = [f"Pick a number between 1 and {top}." for top in range(10, 16)]
            answers = asyncio.run(chat.abatch(asked, config={"max_concurrency": 2}))
        finally:
            watching.set()
            watcher.join()
    assert len({v.content for v in votes}) == 6 and len(answers) == 6
    assert len(slow.chat_requests()) == 12
    assert peak == 2


def test_thread_executor_batch_in_independent_scope(
    server: SamplingServer, chat: ChatFactory
) -> None:
    model = chat()
    with independent():
        texts = [m.content for m in model.batch([NUMBER] * 6, config={"max_concurrency": 6})]
    assert len(set(texts)) == 6
    assert requests(server) == 6
    # Outside a scope the same batch is repeatable: one sample, drawn once.
    other = "Pick a number between 1 and 999999."
    same = [m.content for m in model.batch([other] * 6, config={"max_concurrency": 6})]
    assert len(set(same)) == 1
    assert requests(server) == 7


def test_copies_and_changed_fields_get_their_own_layer(
    server: SamplingServer, chat: ChatFactory
) -> None:
    model = chat()
    key = model.invoke("hello").response_metadata["cache_key"]
    layer = model._layer_for(None)
    copy = model.model_copy(update={"temperature": 0.25})
    assert copy.invoke("hello").response_metadata["cache_key"] != key
    assert copy._layer_for(None) is not layer
    model.max_batch = 2  # not in the key, and sent with each call: the layer stays
    assert model.invoke("hello").response_metadata["cache_key"] == key
    assert model._layer_for(None) is layer
    server.reset()
    assert len(model.generate([[HumanMessage(NUMBER)]], n=4).generations[0]) == 4
    assert [r.body.get("n") for r in server.chat_requests()] == [2, 2]


def test_copies_that_differ_in_how_they_send_share_one_sequence(
    server: SamplingServer, chat: ChatFactory
) -> None:
    with Relay(server) as relay:
        fast = chat(api_base=relay.url, api_key="sk-fast", timeout=10)
        slow = fast.model_copy(update={"timeout": 60})
        other = fast.model_copy(
            update={"api_key": SecretStr("sk-other"), "max_retries": 1, "max_batch": 3}
        )
        built = chat(api_base=relay.url, api_key="sk-built", timeout=5, max_retries=0)
        models = [fast, slow, other, built]
        assert len({id(m._layer_for(None)) for m in models}) == 1
        with independent():
            texts = [m.invoke(NUMBER).content for m in models]

            async def together() -> list[Any]:
                return await asyncio.gather(*(m.ainvoke(NUMBER) for m in models))

            texts += [a.content for a in asyncio.run(together())]
    assert len(set(texts)) == 8
    # Each refill went out with its own caller's key.
    assert relay.authorizations[:4] == [
        "Bearer sk-fast",
        "Bearer sk-fast",
        "Bearer sk-other",
        "Bearer sk-built",
    ]
    assert sorted(map(str, relay.authorizations[4:])) == sorted(relay.authorizations[:4])
    # ... and its own caller's timeout (the OpenAI client tells it in a header) ...
    timeouts = [float(h["x-stainless-read-timeout"]) for h in relay.headers[:4]]
    assert timeouts == [10, 60, 10, 5]
    # ... and retries.
    hasty = chat(timeout=0.3, max_retries=0)
    patient = hasty.model_copy(update={"timeout": 30.0, "max_retries": 1})
    assert hasty._layer_for(None) is patient._layer_for(None)
    server.reset()
    server.fail_next(kind="timeout", hang=5.0)
    start = time.perf_counter()
    with pytest.raises(ProviderError):
        hasty.invoke("Say something.")
    assert time.perf_counter() - start < 4
    server.fail_next(500)
    assert patient.invoke("Say something.").content
    assert [r.status for r in server.chat_requests()] == [0, 500, 200]


def test_concurrent_first_calls_share_one_layer(chat: ChatFactory) -> None:
    model = chat()
    with ThreadPoolExecutor(max_workers=8) as pool:
        layers = list(pool.map(lambda _: model._layer_for(None), range(32)))
    assert len({id(layer) for layer in layers}) == 1
    # Copies configured alike share it too, so one independent() scope spans them.
    twin = chat()
    assert twin._layer_for(None) is layers[0]
    with independent():
        assert model.invoke(NUMBER).content != twin.invoke(NUMBER).content


def test_global_langchain_cache_does_not_collapse_samples(chat: ChatFactory) -> None:
    previous = get_llm_cache()
    set_llm_cache(InMemoryCache())
    try:
        model = chat()
        with independent():
            texts = {model.invoke(NUMBER).content for _ in range(3)}
    finally:
        set_llm_cache(previous)
    assert len(texts) == 3


# -- LangGraph ------------------------------------------------------------------------


class GraphState(TypedDict):
    answer: str


def retry_graph(
    model: MnimiChatModel, seen: list[str], failures: int, use_async: bool = False
) -> Any:
    """A one-node graph whose node rejects its first ``failures`` answers (and is retried)."""

    def check(text: str) -> GraphState:
        seen.append(text)
        if len(seen) <= failures:
            raise ValueError(f"answer {text} rejected")
        return {"answer": text}

    def solve(state: GraphState) -> GraphState:
        return check(str(model.invoke(NUMBER).content))

    async def asolve(state: GraphState) -> GraphState:
        return check(str((await model.ainvoke(NUMBER)).content))

    graph = StateGraph(GraphState)
    policy = RetryPolicy(max_attempts=4, initial_interval=0.0, jitter=False, retry_on=ValueError)
    graph.add_node("solve", asolve if use_async else solve, retry_policy=policy)
    graph.add_edge(START, "solve")
    graph.add_edge("solve", END)
    return graph.compile()


def test_langgraph_retries_draw_fresh_samples_and_a_rerun_replays(
    server: SamplingServer, chat: ChatFactory
) -> None:
    model = chat()
    first: list[str] = []
    result = retry_graph(model, first, failures=2).invoke({"answer": ""})
    assert len(first) == 3 and len(set(first)) == 3
    assert result["answer"] == first[-1]
    assert requests(server) == 3
    again: list[str] = []
    assert retry_graph(chat(), again, failures=2).invoke({"answer": ""})["answer"] == first[-1]
    assert again == first
    assert requests(server) == 3
    # The attempts draw apart inside the graph only: a plain call still replays sample 0.
    assert model.invoke(NUMBER).content == first[0]


async def test_langgraph_async_node_retries(server: SamplingServer, chat: ChatFactory) -> None:
    seen: list[str] = []
    await retry_graph(chat(), seen, failures=1, use_async=True).ainvoke({"answer": ""})
    assert len(set(seen)) == 2
    rerun: list[str] = []
    await retry_graph(chat(), rerun, failures=1, use_async=True).ainvoke({"answer": ""})
    assert rerun == seen
    assert requests(server) == 2


def test_langgraph_retries_in_independent_scope_continue_the_sequence(
    server: SamplingServer, chat: ChatFactory
) -> None:
    seen: list[str] = []
    with independent():
        retry_graph(chat(), seen, failures=1).invoke({"answer": ""})
    assert len(set(seen)) == 2
    assert requests(server) == 2  # no sample skipped, none wasted


# -- replication ------------------------------------------------------------------------


def test_replication_raises_through_a_chain(server: SamplingServer, chat: ChatFactory) -> None:
    recorded = number_chain(chat()).invoke({"top": 1000000})
    server.reset()
    # No key is needed: replication never calls the provider.
    replay = chat(replication=True, api_key=None)
    chain = number_chain(replay)
    assert chain.invoke({"top": 1000000}) == recorded
    with pytest.raises(ReplicationCacheMiss) as missing:
        chain.invoke({"top": 5})
    assert missing.value.cached == 0
    with independent(), pytest.raises(ReplicationCacheMiss):
        chain.invoke({"top": 1000000})
        chain.invoke({"top": 1000000})
    with pytest.raises(ReplicationCacheMiss):
        asyncio.run(chain.ainvoke({"top": 7}))
    with pytest.raises(ReplicationCacheMiss):
        list(chain.stream({"top": 8}))
    assert requests(server) == 0


# -- streaming --------------------------------------------------------------------------


def test_streamed_miss_is_stored_once_then_replayed(
    server: SamplingServer, chat: ChatFactory
) -> None:
    model = chat()
    prompt = "Tell me a story."
    chunks = list(model.stream(prompt))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len(chunks) > 2
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert chunks[-1].chunk_position == "last"
    assert full.response_metadata["cache_hit"] is False
    assert full.usage_metadata is not None and full.usage_metadata["output_tokens"] > 0
    body = server.chat_requests()[0].body
    assert not body.get("stream")  # drawn whole, stored, then streamed
    layer = model._layer_for(None)
    assert isinstance(layer, Persistent)
    assert layer.store.length(full.response_metadata["cache_key"]) == 1
    stored = model.invoke(prompt)
    assert stored.content == full.content
    assert stored.response_metadata["cache_hit"] is True
    again = list(model.stream(prompt))
    assert "".join(str(c.content) for c in again) == stored.content
    assert again[-1].response_metadata["cache_hit"] is True
    assert requests(server) == 1


async def test_astream_hits_and_misses(server: SamplingServer, chat: ChatFactory) -> None:
    model = chat()
    miss = [c async for c in model.astream("Tell me a poem.")]
    hit = [c async for c in model.astream("Tell me a poem.")]
    assert "".join(str(c.content) for c in miss) == "".join(str(c.content) for c in hit)
    assert miss[-1].response_metadata["cache_hit"] is False
    assert hit[-1].response_metadata["cache_hit"] is True
    assert requests(server) == 1


def test_stream_in_independent_scope_continues_the_sequence(chat: ChatFactory) -> None:
    model = chat()
    with independent():
        texts = ["".join(str(c.content) for c in model.stream(NUMBER)) for _ in range(3)]
        texts.append(str(model.invoke(NUMBER).content))
    assert len(set(texts)) == 4


# -- tools, structured output, n ------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """Get the weather in a city."""
    return f"It is sunny in {city}."


def agent_loop(chat_model: MnimiChatModel) -> list[Any]:
    """A question, the tool call it gets, the tool's result, and the final answer."""
    bound = chat_model.bind_tools([get_weather])
    history: list[Any] = [HumanMessage("What is the weather in Paris? Use get_weather.")]
    history.append(bound.invoke(history))
    history.append(get_weather.invoke(history[-1].tool_calls[0]))
    assert isinstance(history[-1], ToolMessage)
    history.append(bound.invoke(history))
    return history


def test_tool_calls_are_replayed_intact(server: SamplingServer, chat: ChatFactory) -> None:
    model = chat().bind_tools([get_weather], tool_choice="get_weather")
    first = model.invoke("What is the weather in Paris?")
    assert isinstance(first, AIMessage)
    assert len(first.tool_calls) == 1
    call = first.tool_calls[0]
    assert call["name"] == "get_weather" and call["id"] and "city" in call["args"]
    assert first.response_metadata["finish_reason"] == "tool_calls"
    assert model.invoke("What is the weather in Paris?").tool_calls == first.tool_calls
    streamed: Any = None
    for chunk in model.stream("What is the weather in Paris?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.tool_calls == first.tool_calls
    replay = chat(replication=True).bind_tools([get_weather], tool_choice="get_weather")
    assert replay.invoke("What is the weather in Paris?").tool_calls == first.tool_calls

    server.reset()
    run1 = agent_loop(chat())
    assert run1[1].tool_calls and isinstance(run1[3].content, str) and run1[3].content
    run2 = agent_loop(chat(replication=True))
    assert [m.content for m in run2] == [m.content for m in run1]
    assert run2[1].tool_calls == run1[1].tool_calls
    assert requests(server) == 2


class Joke(BaseModel):
    """A joke."""

    setup: str
    punchline: str


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output_methods(server: SamplingServer, chat: ChatFactory, method: str) -> None:
    model = chat()
    schema: Any = Joke if method != "json_mode" else {"type": "object"}
    structured = model.with_structured_output(schema, method=method)  # type: ignore[arg-type]
    first = structured.invoke("Tell me a joke about cats.")
    if method == "json_mode":
        assert isinstance(first, dict)
        assert server.chat_requests()[0].body["response_format"] == {"type": "json_object"}
    else:
        assert isinstance(first, Joke)
    assert structured.invoke("Tell me a joke about cats.") == first
    raw = model.with_structured_output(schema, method=method, include_raw=True)  # type: ignore[arg-type]
    out = raw.invoke("Tell me a joke about cats.")
    assert isinstance(out, dict)
    assert out["parsed"] == first and out["parsing_error"] is None
    assert requests(server) == 1


def test_n_generations_are_distinct_and_come_from_one_request(
    server: SamplingServer, chat: ChatFactory
) -> None:
    model = chat(n=3, max_batch=3)
    result = model.generate([[HumanMessage(NUMBER)]])
    texts = [g.text for g in result.generations[0]]
    assert len(set(texts)) == 3
    assert [g.message.response_metadata["sequence_index"] for g in result.generations[0]] == [
        0,
        1,
        2,
    ]
    assert requests(server) == 1 and server.chat_requests()[0].body["n"] == 3
    assert [g.text for g in model.generate([[HumanMessage(NUMBER)]]).generations[0]] == texts
    assert model.invoke(NUMBER).content == texts[0]
    with independent():
        first = [g.text for g in model.generate([[HumanMessage(NUMBER)]]).generations[0]]
        second = [g.text for g in model.generate([[HumanMessage(NUMBER)]]).generations[0]]
    assert first == texts
    assert len(set(second) | set(texts)) == 6
    per_call = chat().generate([[HumanMessage(NUMBER)]], n=2)
    assert [g.text for g in per_call.generations[0]] == texts[:2]


def test_usage_and_cache_metadata(chat: ChatFactory) -> None:
    model = chat()
    miss = model.invoke("hello there")
    hit = model.invoke("hello there")
    assert miss.usage_metadata == hit.usage_metadata
    usage = miss.usage_metadata
    assert usage is not None
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert miss.response_metadata["model_name"] == "openai/mock-model"
    assert miss.response_metadata["finish_reason"] == "stop"
    assert (miss.response_metadata["cache_hit"], hit.response_metadata["cache_hit"]) == (
        False,
        True,
    )
    assert miss.response_metadata["sequence_index"] == hit.response_metadata["sequence_index"] == 0
    assert miss.response_metadata["cache_key"] == hit.response_metadata["cache_key"]


def test_per_call_model_override_has_its_own_sequences(chat: ChatFactory) -> None:
    model = chat()
    default = model.invoke("hello")
    other = model.invoke("hello", model="openai/other-model")
    assert other.response_metadata["model_name"] == "openai/other-model"
    assert other.response_metadata["provider_model_name"] == "other-model"
    assert other.response_metadata["cache_key"] != default.response_metadata["cache_key"]
    assert model.invoke("hello", model="openai/other-model").content == other.content


# -- layer= -----------------------------------------------------------------------------


class Counter(BatchedModel):
    """A provider stand-in that numbers its draws."""

    def __init__(self) -> None:
        super().__init__("counter", 1.0, max_batch=4)
        self.requests: list[int] = []

    def query(self, request: Request, n: int) -> list[str | Sample]:
        start = sum(self.requests)
        self.requests.append(n)
        return [f"{request.messages[-1]['content']} #{start + i}" for i in range(n)]


def test_layer_constructor(tmp_path: Path) -> None:
    counter = Counter()
    model = MnimiChatModel(layer=Persistent(counter, tmp_path), n=2)
    assert model.invoke("hi").content == "hi #0"
    assert [g.text for g in model.generate([[HumanMessage("hi")]]).generations[0]] == [
        "hi #0",
        "hi #1",
    ]
    with independent():
        assert [model.invoke("hi").content for _ in range(2)] == ["hi #0", "hi #2"]
    assert counter.requests == [2, 2]
    memory = MnimiChatModel(layer=Repeatable(Counter()))
    assert memory.invoke("x").response_metadata["model_name"] == "counter"
    plain = MnimiChatModel(layer=Counter())  # no cache at all: every call is a fresh draw
    assert plain.invoke("x").content != plain.invoke("x").content
    with pytest.raises(ValueError, match="not both"):
        MnimiChatModel(layer=Counter(), model="openai/x")
    with pytest.raises(ValueError, match="temperature"):
        MnimiChatModel(layer=Counter(), temperature=0.2)
    with pytest.raises(ValueError, match="cannot switch"):
        plain.invoke("x", model="other")
    assert "not_implemented" in dumps(plain)


# -- secrets ----------------------------------------------------------------------------


def test_api_key_is_never_shown_serialised_logged_or_stored(
    chat: ChatFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, server: SamplingServer
) -> None:
    model = chat()
    assert SECRET not in repr(model) and SECRET not in str(model)
    assert SECRET not in dumps(model)
    assert SECRET not in json.dumps(model._identifying_params)
    assert SECRET not in model.model_dump_json()
    serialised = json.loads(dumps(model))
    assert serialised["kwargs"]["api_key"] == {"lc": 1, "type": "secret", "id": ["MNIMI_API_KEY"]}
    with caplog.at_level(logging.DEBUG):
        model.invoke("hello")
        with independent():
            server.fail_next(500)
            model.invoke("hello")
            model.invoke("hello")  # a miss whose first attempt fails and is retried
    assert SECRET not in caplog.text
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()


class InvocationSpy(BaseCallbackHandler):
    """Records what LangChain hands callbacks and tracers when a chat model starts."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.seen.append((serialized, kwargs.get("invocation_params"), kwargs.get("metadata")))


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_provider_credentials_are_never_shown_traced_or_serialised(
    chat: ChatFactory, caplog: pytest.LogCaptureFixture
) -> None:
    aws, vertex, azure = "aws-secret-0001", "vertex-secret-0002", "azure-secret-0003"
    model = chat(aws_secret_access_key=aws, vertex_credentials={"private_key": vertex}, top_p=0.5)
    spy = InvocationSpy()
    with caplog.at_level(logging.DEBUG):
        answer = model.invoke("hello", config={"callbacks": [spy]})
        model.bind(azure_ad_token=azure).invoke("hello", config={"callbacks": [spy]})
    assert (
        answer.response_metadata["cache_key"]
        == (chat(top_p=0.5).invoke("hello").response_metadata["cache_key"])
    )
    shown = [
        repr(model),
        str(model),
        dumps(model),
        model.model_dump_json(),
        json.dumps(model._identifying_params, default=str),
        json.dumps(spy.seen, default=str),
        caplog.text,
    ]
    assert len(spy.seen) == 2
    for text in shown:
        for secret in (SECRET, aws, vertex, azure):
            assert secret not in text
    assert model._identifying_params["top_p"] == 0.5
    assert "aws_secret_access_key" not in model._identifying_params
    # A credential put there after construction is not shown either.
    model.model_kwargs["aws_session_token"] = "aws-token-0004"
    assert "aws-token-0004" not in repr(model)
    del model.model_kwargs["aws_session_token"]
    # Serialised as secret references, read back on load.
    serialised = json.loads(dumps(model))["kwargs"]
    assert serialised["aws_secret_access_key"]["id"] == ["AWS_SECRET_ACCESS_KEY"]
    assert serialised["model_kwargs"] == {"top_p": 0.5}
    loaded = loads(
        dumps(model),
        allowed_objects=[MnimiChatModel],
        valid_namespaces=["mnimi_adapters"],
        secrets_map={
            "MNIMI_API_KEY": SECRET,
            "AWS_SECRET_ACCESS_KEY": aws,
            "VERTEX_CREDENTIALS": json.dumps({"private_key": vertex}),
        },
    )
    assert loaded.model_kwargs["aws_secret_access_key"].get_secret_value() == aws
    assert loaded.model_kwargs["top_p"] == 0.5 and aws not in repr(loaded)


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_serialisation_round_trip_keeps_the_key_secret(chat: ChatFactory) -> None:
    model = chat(top_p=0.5)
    text = dumps(model)
    assert SECRET not in text
    loaded = loads(
        text,
        allowed_objects=[MnimiChatModel],
        valid_namespaces=["mnimi_adapters"],
        secrets_map={"MNIMI_API_KEY": SECRET},
    )
    assert isinstance(loaded, MnimiChatModel)
    assert loaded.api_key is not None and loaded.api_key.get_secret_value() == SECRET
    assert loaded.model_kwargs == {"top_p": 0.5}
    assert loaded.invoke("hello").content == model.invoke("hello").content


# -- examples -------------------------------------------------------------------------


def test_examples_run_offline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    scripts = ["langchain_chain.py", "langgraph_retry_agent.py"]
    runs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / name), "--cache-dir", str(tmp_path / name)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in scripts
    ]
    for name, run in zip(scripts, runs, strict=True):
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, f"{name} failed:\n{out}\n{err}"
        assert "replayed" in out, out


def test_slice_of_gives_the_string_form_a_slice_of_the_big_cache(
    chat: ChatFactory, server: SamplingServer, tmp_path: Path
) -> None:
    big, small = str(tmp_path / "big"), str(tmp_path / "small")
    with independent():
        drawn = [chat(cache_dir=big).invoke("Pick a number.").content for _ in range(3)]
    with independent():
        used = [
            chat(cache_dir=small, slice_of=big).invoke("Pick a number.").content for _ in range(2)
        ]
    assert used == drawn[:2] and requests(server) == 3
    replay = chat(cache_dir=small, replication=True)
    with independent():
        assert [replay.invoke("Pick a number.").content for _ in range(2)] == used
        with pytest.raises(ReplicationCacheMiss):
            replay.invoke("Pick a number.")
    assert requests(server) == 3


class TokenSpy(BaseCallbackHandler):
    """Counts the tokens LangChain reports to callbacks."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


@pytest.mark.parametrize("hit", [False, True], ids=["miss", "hit"])
def test_callbacks_see_each_streamed_chunk_once(chat: ChatFactory, hit: bool) -> None:
    model = chat()
    if hit:
        model.invoke("Tell me a story.")
    spy = TokenSpy()
    chunks = list(model.stream("Tell me a story.", config={"callbacks": [spy]}))
    assert len(spy.tokens) == len(chunks)
    assert "".join(spy.tokens) == "".join(str(chunk.content) for chunk in chunks)


async def test_async_callbacks_see_each_streamed_chunk_once(chat: ChatFactory) -> None:
    spy = TokenSpy()
    chunks = [c async for c in chat().astream("Tell me a story.", config={"callbacks": [spy]})]
    assert len(spy.tokens) == len(chunks)


def test_the_system_fingerprint_is_kept_and_replayed(
    server: SamplingServer, chat: ChatFactory
) -> None:
    model = chat()
    miss, hit = model.invoke("Fingerprint"), model.invoke("Fingerprint")
    assert hit.response_metadata["cache_hit"] is True
    assert (
        hit.response_metadata["system_fingerprint"] == miss.response_metadata["system_fingerprint"]
    )
    assert isinstance(miss.response_metadata["system_fingerprint"], str)


def test_a_model_is_copied_and_pickled_after_its_first_call_as_before_it(
    server: SamplingServer, chat: ChatFactory
) -> None:
    # After the first call its memos held the shared cache layer (locks): deepcopy and
    # pickle raised "cannot pickle '_thread.lock' object".
    model = chat()
    first = model.invoke(NUMBER).content
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert copied.invoke(NUMBER).content == first  # the same cache, replayed
    assert model.invoke(NUMBER).content == first
    assert requests(server) == 1


@pytest.mark.parametrize(
    ("keyword", "says"),
    [
        ("record", r"takes no record= \(a run record is made by Persistent"),
        ("slice_off", "did you mean slice_of="),
    ],
)
def test_a_slip_for_the_librarys_own_option_is_refused(
    chat: ChatFactory, keyword: str, says: str
) -> None:
    # Moved into model_kwargs like any provider keyword, record= and slice_off= were sent
    # to the provider and keyed, and no record or slice was made.
    with pytest.raises(TypeError, match=says):
        chat(**{keyword: "run.jsonl"})
    assert chat(top_k=5).model_kwargs == {"top_k": 5}  # a provider keyword still passes
