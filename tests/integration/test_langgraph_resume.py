"""A LangGraph node re-run from its start on resume replays what its last run was shown.

LangGraph resumes an ``interrupt()`` (or a thread that failed, with ``invoke(None,
config)``) by running the interrupted node again from its start, with the same task id
and its attempts counted from 1 again. The model calls before the interrupt must give
what the human saw, inside ``independent()`` as outside any scope, and after a retried
provider error too; a retry or a new draft still draws afresh. Real LangGraph,
LangChain and LiteLLM against the local sampling server, through every LangChain adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import openai
import pytest
from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, RetryPolicy, interrupt
from support import CHAT_FORMS, chat_model

from mnimi_adapters import ProviderRequestError, independent
from mnimi_adapters.testing import SamplingServer

NUMBER = "Pick a number between 1 and 1000."


class Draft(TypedDict):
    draft: str
    votes: list[str]
    verdict: str


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=19) as running:
        yield running


@pytest.fixture
def cache_dir(server: SamplingServer, tmp_path: Path) -> str:
    server.reset()
    return str(tmp_path / "cache")


def reviewed(chat: BaseChatModel) -> Any:
    """A graph whose node drafts, votes twice and asks a human; provider errors are retried."""

    def draft(state: Draft) -> dict[str, Any]:
        text = str(chat.invoke(NUMBER).content)
        votes = [str(chat.invoke(f"Is {text} a good pick?").content) for _ in range(2)]
        return {"draft": text, "votes": votes, "verdict": interrupt({"draft": text})}

    graph = StateGraph(Draft)
    policy = RetryPolicy(
        max_attempts=3,
        initial_interval=0.0,
        jitter=False,
        retry_on=(openai.InternalServerError, ProviderRequestError),
    )
    graph.add_node("draft", draft, retry_policy=policy)
    graph.add_edge(START, "draft")
    graph.add_edge("draft", END)
    return graph.compile(checkpointer=InMemorySaver())


def thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


def shown(graph: Any, name: str) -> str:
    """Start thread ``name``: the draft its interrupt shows."""
    state = graph.invoke({"draft": "", "votes": [], "verdict": ""}, thread(name))
    return str(state["__interrupt__"][0].value["draft"])


def approve(graph: Any, name: str) -> dict[str, Any]:
    return dict(graph.invoke(Command(resume="approved"), thread(name)))


@pytest.mark.parametrize("failures", [0, 1])
@pytest.mark.parametrize("form", CHAT_FORMS)
def test_a_resumed_node_replays_the_draft_and_votes_its_interrupt_showed(
    server: SamplingServer, cache_dir: str, form: str, failures: int
) -> None:
    """In ``independent()`` (the votes differ) and after a retried provider error (the
    attempt that was shown is not the first), the resume sends nothing."""
    graph = reviewed(chat_model(form, server, cache_dir))
    server.fail_next(500, count=failures)
    with independent():
        draft = shown(graph, "one")
        sent = len(server.chat_requests())
        final = approve(graph, "one")
    assert final["draft"] == draft
    assert final["votes"][0] != final["votes"][1]
    assert len(server.chat_requests()) == sent


@pytest.mark.parametrize("form", CHAT_FORMS)
def test_a_resume_outside_the_block_replays_what_each_thread_showed(
    server: SamplingServer, cache_dir: str, form: str
) -> None:
    """k drafts made in ``independent()``, each reviewed after the block: every thread
    keeps the draft its reviewer approved (each was at position 0 of its own task)."""
    graph = reviewed(chat_model(form, server, cache_dir))
    with independent():
        drafts = [shown(graph, f"k{i}") for i in range(3)]
    assert len(set(drafts)) == 3
    sent = len(server.chat_requests())
    assert [approve(graph, f"k{i}")["draft"] for i in range(3)] == drafts
    assert len(server.chat_requests()) == sent


@pytest.mark.parametrize("form", CHAT_FORMS)
def test_a_resume_after_a_retried_error_outside_any_scope_sends_nothing(
    server: SamplingServer, cache_dir: str, form: str
) -> None:
    """Attempt 1 got a 500, attempt 2 the draft shown; the resume's attempt 1 is served
    what attempt 2 was, as a resume in another process would be."""
    graph = reviewed(chat_model(form, server, cache_dir))
    server.fail_next(500)
    draft = shown(graph, "plain")
    sent = len(server.chat_requests())
    assert approve(graph, "plain")["draft"] == draft
    assert len(server.chat_requests()) == sent
