"""LangGraph ``RetryPolicy`` attempts through every LangChain adapter.

The attempts of one node task behave as ``with independent(): for attempt ...: with
repeatable(): node(...)``: each attempt reads, per request, from the first position its
task's earlier attempts were not served, identical calls in one attempt repeat, and a
re-run replays every attempt (laws 1, 2 and 5). Real LangGraph, LangChain and LiteLLM
against the local sampling server: the wrapped form (``MnimiChatModel(model=ChatOpenAI)``),
the string form (``MnimiChatModel(model="openai/...")``) and ``MnimiLLMCache``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.tools import tool
from langgraph.func import entrypoint, task
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy
from support import CHAT_FORMS, chat_model

import mnimi_adapters.langchain as adapters
from mnimi_adapters import ReplicationCacheMiss, independent, repeatable
from mnimi_adapters.core.layers import wait_for_refills
from mnimi_adapters.core.scopes import ScopeManager
from mnimi_adapters.core.stores import open_store
from mnimi_adapters.testing import SamplingServer

NUMBER = "Pick a number between 1 and 1000."

#: A node's body: it gets the chat model and the log of what its attempts saw.
Body = Callable[[BaseChatModel, list[Any]], Any]


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=18) as running:
        yield running


@pytest.fixture
def cache_dir(server: SamplingServer, tmp_path: Path) -> str:
    server.reset()
    return str(tmp_path / "cache")


def retried(node: Callable[..., Any], attempts: int, retry_on: Any = ValueError) -> Any:
    """A compiled graph of ``node`` alone, with a ``RetryPolicy``."""
    graph = StateGraph(dict)
    policy = RetryPolicy(
        max_attempts=attempts, initial_interval=0.0, jitter=False, retry_on=retry_on
    )
    graph.add_node("node", node, retry_policy=policy)
    graph.add_edge(START, "node")
    graph.add_edge("node", END)
    return graph.compile()


def attempts_of(body: Body, chat: BaseChatModel, attempts: int, retry_on: Any = ValueError) -> Any:
    """What each attempt of a node running ``body`` saw, until one succeeds or all fail."""
    log: list[Any] = []
    graph = retried(lambda state: {"out": body(chat, log)}, attempts, retry_on)
    with contextlib.suppress(ValueError):  # every attempt was rejected
        graph.invoke({})
    return log


def stored(cache: str) -> int:
    """How many samples the cache holds, all keys together."""
    with open_store(cache, create=False, read_only=True) as store:
        return sum(map(store.length, store.keys()))


def replays(
    form: str, server: SamplingServer, cache: str, body: Body, attempts: int, **kw: Any
) -> list[Any]:
    """Run 1's attempts; asserts a re-run and a replication run (new models over the same
    cache) replay them without a request."""
    first = attempts_of(body, chat_model(form, server, cache, False), attempts, **kw)
    sent = len(server.chat_requests())
    assert attempts_of(body, chat_model(form, server, cache, False), attempts, **kw) == first
    assert attempts_of(body, chat_model(form, server, cache, True), attempts, **kw) == first
    assert len(server.chat_requests()) == sent
    return first


def text(chat: BaseChatModel, prompt: str) -> str:
    return str(chat.invoke(prompt).content)


def follow_up(chat: BaseChatModel, log: list[Any]) -> str:
    """Two calls per attempt, the second holding the first's answer; two attempts fail."""
    first = text(chat, NUMBER)
    second = text(chat, f"Say something about the number {first}.")
    log.append([first, second])
    if len(log) < 3:
        raise ValueError("rejected")
    return second


@pytest.mark.parametrize("form", CHAT_FORMS)
def test_a_follow_up_that_changes_per_attempt_replays_and_pays_only_what_it_shows(
    server: SamplingServer, cache_dir: str, form: str
) -> None:
    """A key first seen in attempt k starts at position 0 (MnimiLLMCache read past what the
    re-run stored; the wrapper read position k-1 and paid for k samples to show one)."""
    log = replays(form, server, cache_dir, follow_up, attempts=3)
    assert len({first for first, _ in log}) == 3  # every attempt drew a new number
    assert stored(cache_dir) == 6 == len(server.chat_requests())  # 6 shown, 6 paid


@tool
def get_weather(city: str) -> str:
    """Get the weather of a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("form", CHAT_FORMS)
def test_an_agent_in_a_retried_node_replays_every_attempt(
    server: SamplingServer, cache_dir: str, form: str
) -> None:
    """The agent's second request holds the first's tool-call id: new on each attempt."""

    def ask_agent(chat: BaseChatModel, log: list[Any]) -> str:
        messages = create_agent(chat, [get_weather]).invoke(
            {"messages": [("user", "What is the weather in Oslo?")]}
        )["messages"]
        log.append([messages[1].tool_calls[0]["id"], messages[-1].content])
        if len(log) < 3:
            raise ValueError("rejected")
        return str(messages[-1].content)

    log = replays(form, server, cache_dir, ask_agent, attempts=3)
    assert len({call for call, _ in log}) == 3
    assert stored(cache_dir) == 6 == len(server.chat_requests())


@pytest.mark.parametrize("form", CHAT_FORMS)
def test_after_a_provider_error_the_next_attempt_reads_the_same_position(
    server: SamplingServer, cache_dir: str, form: str
) -> None:
    """A failed attempt is served nothing: the next reads position 0, as the re-run's first
    attempt does, and identical calls in one attempt repeat (law 1)."""

    def twice(chat: BaseChatModel, log: list[Any]) -> list[str]:
        log.append("tried")
        answers = [text(chat, NUMBER), text(chat, NUMBER)]
        log.append(answers)
        return answers

    server.fail_next(500)
    first = attempts_of(twice, chat_model(form, server, cache_dir, False), 3, Exception)
    assert first[:2] == ["tried", "tried"]  # attempt 1 got the error
    answer = first[2]
    assert answer[0] == answer[1]
    assert stored(cache_dir) == 1  # nothing paid and left unshown
    for replication in (False, True):
        again = attempts_of(twice, chat_model(form, server, cache_dir, replication), 3, Exception)
        assert again == ["tried", answer]
    assert len(server.chat_requests()) == 2  # the failure and the answer


@pytest.mark.parametrize("scope", [independent, repeatable])
@pytest.mark.parametrize("form", CHAT_FORMS)
def test_a_scope_the_node_opens_draws_in_its_attempt(
    server: SamplingServer, cache_dir: str, form: str, scope: Callable[[], ScopeManager]
) -> None:
    """``independent()`` in the node continues from its attempt's first unserved position
    and ``repeatable()`` repeats within the attempt; both are fresh per attempt."""

    def votes(chat: BaseChatModel, log: list[Any]) -> None:
        with scope():
            log.append([text(chat, NUMBER), text(chat, NUMBER)])
        raise ValueError("rejected")

    log = replays(form, server, cache_dir, votes, attempts=3)
    shown = {vote for attempt in log for vote in attempt}
    if scope is independent:
        assert len(shown) == 6
    else:
        assert all(first == second for first, second in log) and len(shown) == 3
    assert stored(cache_dir) == len(shown)


@pytest.mark.parametrize("form", CHAT_FORMS)
def test_a_subgraph_sees_the_outer_retry_and_a_scope_around_it_spans_its_runs(
    server: SamplingServer, cache_dir: str, form: str
) -> None:
    """Graphs run in a retried node nest their tasks' attempts in the node's: a retry of the
    node is fresh inside them, and an ``independent()`` around two runs continues."""

    def ask_twice(chat: BaseChatModel, log: list[Any]) -> None:
        inner = StateGraph(dict)
        inner.add_node("ask", lambda state: {"out": text(chat, NUMBER)})
        inner.add_edge(START, "ask")
        inner.add_edge("ask", END)
        subgraph = inner.compile()
        plain = subgraph.invoke({})["out"]
        with independent():
            votes = [subgraph.invoke({})["out"] for _ in range(2)]
        log.append([plain, *votes])
        raise ValueError("rejected")

    log = replays(form, server, cache_dir, ask_twice, attempts=2)
    # Each attempt's independent() starts where the attempt does: at its plain answer.
    assert all(plain == first != second for plain, first, second in log)
    shown = {answer for attempt in log for answer in attempt}
    assert len(shown) == 4 == stored(cache_dir)


@pytest.mark.parametrize("form", CHAT_FORMS)
def test_retries_at_two_levels_never_serve_an_answer_twice(
    server: SamplingServer, cache_dir: str, form: str
) -> None:
    """A retried node running a graph whose node is retried too: each outer attempt
    continues where the inner attempts of the earlier ones stopped (they were added up,
    so an outer retry was served what an inner retry had already seen)."""

    def nested(chat: BaseChatModel, log: list[Any]) -> None:
        def inner_node(state: dict[str, Any]) -> dict[str, Any]:
            log.append(text(chat, NUMBER))
            if len(log) % 2:
                raise ValueError("rejected inside")
            return {"out": log[-1]}

        retried(inner_node, 2).invoke({})
        raise ValueError("rejected outside")

    log = replays(form, server, cache_dir, nested, attempts=3)
    assert len(log) == 6 == len(set(log)) == stored(cache_dir)


@pytest.mark.parametrize("form", CHAT_FORMS)
def test_async_attempts_replay(server: SamplingServer, cache_dir: str, form: str) -> None:
    async def attempts(chat: BaseChatModel) -> list[str]:
        log: list[str] = []

        async def node(state: dict[str, Any]) -> dict[str, Any]:
            log.append(str((await chat.ainvoke(NUMBER)).content))
            if len(log) < 3:
                raise ValueError("rejected")
            return {"out": log[-1]}

        await retried(node, 3).ainvoke({})
        return log

    first = asyncio.run(attempts(chat_model(form, server, cache_dir, False)))
    assert len(set(first)) == 3 == stored(cache_dir)
    assert asyncio.run(attempts(chat_model(form, server, cache_dir, True))) == first


def test_a_replication_run_past_the_cache_raises_on_the_attempt_that_misses(
    server: SamplingServer, cache_dir: str
) -> None:
    """Attempt 2 of a replication run whose recording succeeded at once needs position 1."""
    chat = chat_model("wrapped", server, cache_dir, False)
    assert len(attempts_of(follow_up, chat, 1)) == 1  # recorded: one attempt, rejected
    with pytest.raises(ReplicationCacheMiss):
        attempts_of(follow_up, chat_model("wrapped", server, cache_dir, True), 2)


def test_the_attempts_of_only_the_most_recent_tasks_are_kept(
    server: SamplingServer, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays bounded: a task's scopes are let go once newer tasks push them out."""
    monkeypatch.setattr(adapters, "_TASK_MEMORY", 2)
    chat = chat_model("wrapped", server, cache_dir, False)
    for _ in range(4):
        attempts_of(follow_up, chat, 3)
    assert len(adapters._task_scopes) <= 2


@pytest.mark.parametrize("form", CHAT_FORMS)
def test_an_attempt_a_timeout_cut_short_leaves_its_retry_a_request_of_its_own(
    server: SamplingServer, cache_dir: str, form: str
) -> None:
    """A ``TimeoutPolicy`` cuts attempt 1 short while the provider is slow. Attempt 2 asks
    afresh and is answered, as it would be without a cache; it does not wait behind the
    draw attempt 1 gave up on, which would cut it short too. That draw is still stored
    (law 6), and a re-run replays the answer the run gave without a request."""
    if "timeout" not in inspect.signature(StateGraph.add_node).parameters:
        pytest.skip("this LangGraph has no node timeouts")

    def graph_of(chat: BaseChatModel) -> Any:
        async def node(state: dict[str, Any]) -> dict[str, Any]:
            return {"out": str((await chat.ainvoke(NUMBER)).content)}

        graph = StateGraph(dict)
        policy = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=False)
        graph.add_node("node", node, retry_policy=policy, timeout=0.5)
        graph.add_edge(START, "node")
        graph.add_edge("node", END)
        return graph.compile()

    # A first call elsewhere imports what the model needs, which takes longer than 0.5 s.
    chat_model(form, server, f"{cache_dir}-warm", False).invoke(NUMBER)
    server.reset()
    server.fail_next(kind="slow", hang=3.0)  # longer than the node may take
    chat = chat_model(form, server, cache_dir, False, timeout=31.0)
    answer = asyncio.run(graph_of(chat).ainvoke({}))
    assert len(server.chat_requests()) == 2
    assert wait_for_refills(10)
    # The slow answer too, for a later position; LangChain's cache interface cannot keep
    # it, since the model sends its own request, which the timeout cancelled.
    assert stored(cache_dir) == (1 if form == "llmcache" else 2)
    for replication in (False, True):
        chat = chat_model(form, server, cache_dir, replication, timeout=31.0)
        assert asyncio.run(graph_of(chat).ainvoke({})) == answer
    assert len(server.chat_requests()) == 2


@pytest.mark.parametrize("form", CHAT_FORMS)
def test_a_task_called_from_a_retried_node_draws_afresh_per_attempt(
    server: SamplingServer, cache_dir: str, form: str
) -> None:
    """A ``@task`` runs as a task of its own, at its own attempt 1 on every attempt of
    the node calling it: its calls nest in the node's attempt, as a subgraph's do."""

    def via_task(chat: BaseChatModel, log: list[Any]) -> str:
        @task
        def propose() -> str:
            return text(chat, NUMBER)

        log.append(propose().result())
        if len(log) < 3:
            raise ValueError("rejected")
        return str(log[-1])

    log = replays(form, server, cache_dir, via_task, attempts=3)
    assert len(set(log)) == 3 == stored(cache_dir)


@pytest.mark.parametrize("form", CHAT_FORMS)
def test_a_task_called_from_a_retried_entrypoint_draws_afresh_per_attempt(
    server: SamplingServer, cache_dir: str, form: str
) -> None:
    def attempts(chat: BaseChatModel) -> list[str]:
        log: list[str] = []

        @task
        def propose() -> str:
            return text(chat, NUMBER)

        policy = RetryPolicy(
            max_attempts=3, initial_interval=0.0, jitter=False, retry_on=ValueError
        )

        @entrypoint(retry_policy=policy)
        def main(topic: str) -> str:
            log.append(propose().result())
            if len(log) < 3:
                raise ValueError("rejected")
            return log[-1]

        main.invoke("numbers")
        return log

    first = attempts(chat_model(form, server, cache_dir, False))
    assert len(set(first)) == 3 == stored(cache_dir)
    assert attempts(chat_model(form, server, cache_dir, True)) == first
