"""MnimiLLMCache: LangChain's cache interface over Mnimi sequences, with real ChatOpenAI and
ChatAnthropic against the local sampling server (127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent

from mnimi_adapters import MnimiError, ReplicationCacheMiss, independent
from mnimi_adapters.langchain import MnimiLLMCache
from mnimi_adapters.testing import SamplingServer

NUMBER = "Pick a number between 1 and 1000000."
SECRET = "sk-llm-cache-secret-5151"


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=31) as running:
        yield running


@pytest.fixture
def cache_dir(server: SamplingServer, tmp_path: Path) -> str:
    server.reset()
    return str(tmp_path / "cache")


def openai(server: SamplingServer, cache: MnimiLLMCache | None, **overrides: object) -> ChatOpenAI:
    params: dict[str, object] = {
        "model": "mock-model",
        "base_url": server.url,
        "api_key": SECRET,
        "cache": cache,
    }
    params.update(overrides)
    return ChatOpenAI(**params)  # type: ignore[arg-type]


def test_lookup_replays_outside_scopes_and_continues_in_independent(
    server: SamplingServer, cache_dir: str
) -> None:
    chat = openai(server, MnimiLLMCache(cache_dir))
    first = chat.invoke(NUMBER)
    assert chat.invoke(NUMBER).content == first.content
    assert len(server.chat_requests()) == 1
    with independent():
        run1 = [chat.invoke(NUMBER).content for _ in range(3)]
    assert run1[0] == first.content and len(set(run1)) == 3
    with independent():
        run2 = [asyncio.run(chat.ainvoke(NUMBER)).content for _ in range(3)]
    assert run2 == run1
    assert len(server.chat_requests()) == 3
    hit = chat.invoke(NUMBER)
    assert hit.response_metadata["cache_hit"] is True
    assert hit.response_metadata["sequence_index"] == 0
    # A model that differs only in its key shares the sequences; one at another
    # temperature does not.
    assert openai(server, MnimiLLMCache(cache_dir), api_key="sk-x").invoke(NUMBER) == hit
    # Nor does a final "/" of the base URL, which the client joins its routes to alike.
    slashed = openai(server, MnimiLLMCache(cache_dir), base_url=server.url + "/")
    assert slashed.invoke(NUMBER) == hit
    openai(server, MnimiLLMCache(cache_dir), temperature=0.1).invoke(NUMBER)
    assert len(server.chat_requests()) == 4
    for path in Path(cache_dir).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()


def test_set_llm_cache_and_a_partner_model(server: SamplingServer, cache_dir: str) -> None:
    previous = get_llm_cache()
    set_llm_cache(MnimiLLMCache(cache_dir))
    try:
        chat = ChatAnthropic(model="mock-claude", base_url=server.root_url, api_key=SECRET)
        with independent():
            texts = [chat.invoke(NUMBER).content for _ in range(3)]
        with independent():
            again = [chat.invoke(NUMBER).content for _ in range(3)]
    finally:
        set_llm_cache(previous)
    assert len(set(texts)) == 3 and again == texts
    assert len(server.requests) == 3


class UnserialisableChat(ChatOpenAI):
    """A partner model LangChain cannot serialise (ChatDeepSeek, ChatLiteLLM, ...)."""

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    @property
    def _llm_type(self) -> str:
        return "unserialisable-test-chat"


def test_a_model_langchain_cannot_serialise_is_warned_of_once(
    server: SamplingServer, cache_dir: str
) -> None:
    # Such a model's cache calls carry its _identifying_params alone: a setting they leave
    # out was in no key, and a model at another endpoint was served this one's samples.
    cache = MnimiLLMCache(cache_dir)

    def model() -> UnserialisableChat:
        return UnserialisableChat(
            model="mock-model", base_url=server.url, api_key=SECRET, cache=cache
        )

    with pytest.warns(UserWarning, match=r"cannot serialise .*unserialisable-test-chat"):
        model().invoke(NUMBER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: not at every lookup and update
        model().invoke(NUMBER)


def test_streaming_bypasses_the_cache(server: SamplingServer, cache_dir: str) -> None:
    chat = openai(server, MnimiLLMCache(cache_dir))
    chat.invoke(NUMBER)
    "".join(str(c.content) for c in chat.stream(NUMBER))
    assert len(server.chat_requests()) == 2  # LangChain never asks a cache when streaming


def test_replication_miss_raises_and_sends_nothing(server: SamplingServer, cache_dir: str) -> None:
    recorded = openai(server, MnimiLLMCache(cache_dir)).invoke(NUMBER).content
    server.reset()
    chat = openai(server, MnimiLLMCache(cache_dir, replication=True))
    assert chat.invoke(NUMBER).content == recorded
    with pytest.raises(ReplicationCacheMiss):
        chat.invoke("Pick a number between 1 and 10.")
    with independent(), pytest.raises(ReplicationCacheMiss):
        chat.invoke(NUMBER)
        chat.invoke(NUMBER)
    assert server.requests == []


# A refused astream_events() leaves LangChain's own non-inline handler coroutines unawaited.
@pytest.mark.filterwarnings("ignore:coroutine 'ahandle_event' was never awaited")
@pytest.mark.parametrize("form", ["model", "global"])
def test_replication_refuses_streams_before_they_send(
    server: SamplingServer, cache_dir: str, form: str
) -> None:
    # Law 5: LangChain's streams never ask a cache, so a replication cache stops them
    # before the request, cached prompt or not; invoke() is answered from the cache.
    recorded = openai(server, MnimiLLMCache(cache_dir)).invoke(NUMBER).content
    server.reset()
    previous = get_llm_cache()
    if form == "global":
        set_llm_cache(MnimiLLMCache(cache_dir, replication=True))
        chat = openai(server, None)
    else:
        chat = openai(server, MnimiLLMCache(cache_dir, replication=True))

    async def astream(prompt: str) -> str:
        return "".join([str(c.content) async for c in chat.astream(prompt)])

    async def events(prompt: str) -> list[object]:
        return [event async for event in chat.astream_events(prompt, version="v2")]

    try:
        for prompt in (NUMBER, "Pick a number between 1 and 10."):
            with pytest.raises(MnimiError, match=r"ChatOpenAI.stream\(\) would send a request"):
                list(chat.stream(prompt))
            with pytest.raises(MnimiError, match="replication mode"):
                asyncio.run(astream(prompt))
            with pytest.raises(MnimiError, match="replication mode"):
                asyncio.run(events(prompt))
            with pytest.raises(MnimiError, match="replication mode"):
                list(chat.stream_events(prompt, version="v3"))
        assert chat.invoke(NUMBER).content == recorded
        # A model that does not stream falls back to invoke(), which the cache answers.
        quiet = chat.model_copy(update={"disable_streaming": True})
        assert "".join(str(c.content) for c in quiet.stream(NUMBER)) == recorded
    finally:
        set_llm_cache(previous)
        gc.collect()  # the unawaited coroutines are reported now, under this test's filter
    assert server.requests == []
    # The guard looks at the model's own cache: one that is not in replication streams.
    assert "".join(str(c.content) for c in openai(server, MnimiLLMCache(cache_dir)).stream(NUMBER))
    assert len(server.chat_requests()) == 1


@tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"Sunny in {city}"


WEATHER = "What is the weather in 'Paris'?"


def tool_loop(chat: BaseChatModel) -> list[BaseMessage]:
    """A tool-calling conversation: a tool call, its result, then the answer."""
    model = chat.bind_tools([get_weather])
    messages: list[BaseMessage] = [HumanMessage(WEATHER)]
    call = model.invoke(messages)
    assert isinstance(call, AIMessage) and call.tool_calls
    messages.append(call)
    for tool_call in call.tool_calls:
        result = get_weather.invoke(tool_call["args"])
        messages.append(ToolMessage(result, tool_call_id=tool_call["id"]))
    messages.append(model.invoke(messages))
    return messages


def agent(chat: BaseChatModel) -> list[BaseMessage]:
    """A LangGraph ReAct agent's conversation (LangGraph gives each message a fresh id)."""
    graph = create_react_agent(chat, [get_weather])
    return list(graph.invoke({"messages": [HumanMessage(WEATHER)]})["messages"])


# The brief's agent: ``langchain.agents.create_agent`` (its successor) is not installed.
@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
@pytest.mark.parametrize(
    ("conversation", "partner"),
    [(tool_loop, "openai"), (tool_loop, "anthropic"), (agent, "openai")],
)
def test_conversations_replay_with_no_request(
    server: SamplingServer,
    cache_dir: str,
    conversation: Callable[[BaseChatModel], list[BaseMessage]],
    partner: str,
) -> None:
    # A hit's cache facts, usage and ids ride in the history of the next step's prompt:
    # keyed as they are, step 2 of a re-run would never be found.
    def chat(cache: MnimiLLMCache) -> BaseChatModel:
        if partner == "anthropic":
            return ChatAnthropic(
                model="mock-claude", base_url=server.root_url, api_key=SECRET, cache=cache
            )
        return openai(server, cache)

    first = conversation(chat(MnimiLLMCache(cache_dir)))
    assert len(first) == 4 and isinstance(first[-1], AIMessage)
    assert len(server.requests) == 2
    server.reset()
    again = conversation(chat(MnimiLLMCache(cache_dir)))
    replayed = conversation(chat(MnimiLLMCache(cache_dir, replication=True)))
    assert server.requests == []
    assert again[-1].content == replayed[-1].content == first[-1].content
    assert replayed[-1].response_metadata["cache_hit"] is True


def test_concurrent_misses_at_one_position_are_not_both_stored_there(
    server: SamplingServer, cache_dir: str
) -> None:
    cache = MnimiLLMCache(cache_dir)
    llm_string = openai(server, None)._get_llm_string()
    barrier = threading.Barrier(2)
    answers = {}

    def call(name: str) -> None:
        missed = cache.lookup("prompt", llm_string)
        barrier.wait()  # both have missed position 0 before either stores
        generation = ChatGeneration(message=AIMessage(f"answer {name}"))
        cache.update("prompt", llm_string, [generation])
        answers[name] = missed

    threads = [threading.Thread(target=call, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == {"a": None, "b": None}
    stored = cache.lookup("prompt", llm_string)
    assert stored is not None and stored[0].text in ("answer a", "answer b")
    # The second answer did not become position 0, but it was paid for: it is kept at
    # position 1, for the next call that continues the sequence (law 6).
    assert cache.stats()["samples_stored"] == 2
    with independent():
        both = [cache.lookup("prompt", llm_string) for _ in range(2)]
    assert sorted(r[0].text for r in both if r) == ["answer a", "answer b"]
    # In an independent scope concurrent misses take consecutive positions.
    with independent():
        misses = [cache.lookup("other", llm_string) for _ in range(2)]
        assert misses == [None, None]
        for name in ("x", "y"):
            cache.update("other", llm_string, [ChatGeneration(message=AIMessage(name))])
    with independent():
        replayed = [cache.lookup("other", llm_string) for _ in range(2)]
    assert [r[0].text for r in replayed if r] == ["x", "y"]


@pytest.mark.parametrize("is_async", [False, True], ids=["batch", "abatch"])
def test_concurrent_identical_calls_in_independent_each_store_their_answer(
    server: SamplingServer, cache_dir: str, is_async: bool
) -> None:
    """pass@k through LangChain's cache: eight identical calls at once in ``independent()``.
    An update could claim a position past one still being asked for, whose refill the
    single answer LangChain hands to ``update`` could not fill: a private ``_Miss`` escaped
    ``batch`` and paid answers were lost (the re-run paid for them again)."""
    chat = openai(server, MnimiLLMCache(cache_dir))
    prompts = [NUMBER] * 8

    def run() -> list[str]:
        with independent():
            if is_async:
                answers = asyncio.run(chat.abatch(prompts))
            else:
                answers = chat.batch(prompts, config={"max_concurrency": 8})
        return [str(answer.content) for answer in answers]

    first = run()
    assert len(set(first)) == 8 and len(server.requests) == 8
    assert chat.cache.stats()["samples_stored"] == 8  # type: ignore[union-attr]
    # A new process replays the eight samples (which call gets which can differ: the
    # threads race to LangChain's lookups) and pays for nothing.
    again = openai(server, MnimiLLMCache(cache_dir, replication=True))
    with independent():
        replayed = [str(again.invoke(NUMBER).content) for _ in range(8)]
    assert sorted(replayed) == sorted(first) and len(server.requests) == 8


def test_an_answer_whose_position_another_process_filled_is_kept(
    server: SamplingServer, cache_dir: str
) -> None:
    """Two processes (here two caches over one directory, as positions are per process)
    each miss position 0 in ``independent()``: the second to store found it filled and
    dropped its answer, which it had paid for and shown (two processes lost 5 of 14)."""
    llm_string = openai(server, None)._get_llm_string()
    runs = [(MnimiLLMCache(cache_dir), contextvars.copy_context(), independent()) for _ in "ab"]
    for cache, context, scope in runs:  # each its own scope: its own positions
        context.run(scope.__enter__)
        assert context.run(cache.lookup, "shared", llm_string) is None
    for (cache, context, scope), name in zip(runs, ("first", "second"), strict=True):
        answer = [ChatGeneration(message=AIMessage(name))]
        context.run(cache.update, "shared", llm_string, answer)
        context.run(scope.__exit__, None, None, None)
    replay = MnimiLLMCache(cache_dir, replication=True)
    with independent():
        kept = [replay.lookup("shared", llm_string) for _ in range(2)]
    assert [r[0].text for r in kept if r] == ["first", "second"]


def test_clear_is_refused(cache_dir: str) -> None:
    with pytest.raises(MnimiError, match="append-only"):
        MnimiLLMCache(cache_dir).clear()


def test_headers_query_body_credentials_and_call_settings_are_neither_keyed_nor_stored(
    server: SamplingServer, cache_dir: str
) -> None:
    # LangChain's llm_string holds the model's constructor arguments as given: a gateway key
    # in a header, a query parameter or extra_body, a password in the base URL, and how the
    # model is called (retries, timeout, streaming), none of which is the request.
    port = server.url.split(":")[2].split("/")[0]
    secrets = ["Bearer sk-header-7", "query-secret-7", "sk-body-7", "pw-in-url-7"]

    def chat(cache: MnimiLLMCache, secret: str = "", **settings: object) -> ChatOpenAI:
        return openai(
            server,
            cache,
            base_url=f"http://user:pw-in-url-7{secret}@127.0.0.1:{port}/v1",
            default_headers={"Authorization": f"Bearer sk-header-7{secret}"},
            default_query={"key": f"query-secret-7{secret}"},
            extra_body={"api_key": f"sk-body-7{secret}", "top_k": 3},
            **settings,
        )

    first = chat(MnimiLLMCache(cache_dir)).invoke(NUMBER)
    replica = MnimiLLMCache(cache_dir, replication=True)
    rotated = chat(replica, "-rotated", max_retries=7, timeout=30, streaming=True, n=1)
    assert rotated.invoke(NUMBER).content == first.content
    assert len(server.chat_requests()) == 1
    # What the model answers from stays keyed: another top_k is another request.
    other = openai(server, replica, extra_body={"top_k": 4})
    with pytest.raises(ReplicationCacheMiss) as missed:
        other.invoke(NUMBER)
    for path in Path(cache_dir).rglob("*"):
        if path.is_file():
            assert not [s for s in secrets if s.encode() in path.read_bytes()], path
    assert not [s for s in secrets if s in str(missed.value)]


def test_a_conversation_whose_answers_report_no_usage_replays(
    server: SamplingServer, cache_dir: str
) -> None:
    # LangChain marks a hit with the usage {"total_cost": 0}, which no message accepts: the
    # history holding a replayed answer was keyed otherwise than the one holding the live
    # answer, so a re-run paid again from the second turn on, and a replica failed there.
    def conversation(cache: MnimiLLMCache) -> list[str]:
        chat = openai(server, cache, streaming=True)  # a streamed answer reports no usage
        history: list[BaseMessage] = []
        for turn in ("Say something.", "Say more.", "And more."):
            history += [HumanMessage(turn), chat.invoke([*history, HumanMessage(turn)])]
        return [str(message.content) for message in history[1::2]]

    first = conversation(MnimiLLMCache(cache_dir))
    assert len(server.chat_requests()) == 3
    assert conversation(MnimiLLMCache(cache_dir)) == first
    assert conversation(MnimiLLMCache(cache_dir, replication=True)) == first
    assert len(server.chat_requests()) == 3


def test_a_langgraph_retry_outside_scopes_draws_a_new_answer_and_a_rerun_replays(
    server: SamplingServer, cache_dir: str
) -> None:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import RetryPolicy

    def run(cache: MnimiLLMCache, rejected: set[str]) -> tuple[list[str], str]:
        chat = openai(server, cache, max_retries=0)
        seen: list[str] = []

        def propose(state: dict[str, str]) -> dict[str, str]:
            try:
                answer = str(chat.invoke(NUMBER).content)
            except Exception as error:  # the server's fault: a failed attempt
                seen.append("failed")
                raise ValueError("no answer") from error
            seen.append(answer)
            if answer in rejected or (not cache.replication and len(seen) < 4):
                rejected.add(answer)
                raise ValueError(f"{answer} rejected")
            return {"answer": answer}

        graph = StateGraph(dict)
        policy = RetryPolicy(
            max_attempts=4, initial_interval=0.0, jitter=False, retry_on=ValueError
        )
        graph.add_node("propose", propose, retry_policy=policy)
        graph.add_edge(START, "propose")
        graph.add_edge("propose", END)
        return seen, graph.compile().invoke({"answer": ""})["answer"]

    server.fail_next(500)  # the first attempt gets no answer at all
    rejected: set[str] = set()
    seen, accepted = run(MnimiLLMCache(cache_dir), rejected)
    assert seen[0] == "failed" and len(set(seen[1:])) == 3 and accepted == seen[3]
    assert len(server.chat_requests()) == 4
    # The re-run's first attempt finds the answer the second attempt got: none is lost,
    # and the same answers are rejected and accepted at no cost.
    again, replayed = run(MnimiLLMCache(cache_dir, replication=True), set(rejected))
    assert again == seen[1:] and replayed == accepted
    assert len(server.chat_requests()) == 4
