"""LangChain 1.x agents (``langchain.agents.create_agent`` and its middleware) over
MnimiChatModel, with real ChatOpenAI against the local sampling server."""

from __future__ import annotations

import os

# Must precede any litellm import: otherwise litellm fetches its cost map over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import RetryPolicy
from pydantic import BaseModel

from mnimi_adapters import ProviderRequestError, ReplicationCacheMiss
from mnimi_adapters.langchain import MnimiChatModel
from mnimi_adapters.testing import SamplingServer

agents = pytest.importorskip("langchain.agents")
middleware = pytest.importorskip("langchain.agents.middleware")
exceptions = pytest.importorskip("langchain_core.exceptions")
if not hasattr(exceptions, "ModelError"):  # langchain-core before 1.5: every error retried
    pytest.skip("langchain-core has no ModelError", allow_module_level=True)

QUESTION = {"messages": [{"role": "user", "content": "Pick a number between 1 and 1000."}]}


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=41) as running:
        yield running


@pytest.fixture
def chat(server: SamplingServer, tmp_path: Path) -> Callable[..., MnimiChatModel]:
    """A wrapper over ChatOpenAI, or the LiteLLM string form, on one cache directory."""
    server.reset()

    def make(form: str, **options: Any) -> MnimiChatModel:
        cache = str(tmp_path / "cache")
        if form == "wrapped":
            wrapped = ChatOpenAI(
                model="mock-model", base_url=server.url, api_key="sk-test", max_retries=0
            )
            return MnimiChatModel(model=wrapped, cache_dir=cache, **options)
        return MnimiChatModel(
            model="openai/mock-model",
            api_base=server.url,
            api_key="sk-test",
            cache_dir=cache,
            max_retries=0,
            **options,
        )

    return make


def retrying_agent(model: MnimiChatModel) -> Any:
    # The middleware's defaults: retry what is retryable, then answer with the failure.
    retry = middleware.ModelRetryMiddleware(max_retries=2, initial_delay=0.01, jitter=False)
    return agents.create_agent(model=model, tools=[], middleware=[retry])


@pytest.mark.parametrize("form", ["wrapped", "string"])
def test_retry_middleware_gives_a_replication_miss_up_at_once(
    chat: Callable[..., MnimiChatModel], server: SamplingServer, form: str
) -> None:
    retrying_agent(chat(form)).invoke(QUESTION)  # recorded
    replica = retrying_agent(chat(form, replication=True))
    server.reset()
    changed = {"messages": [{"role": "user", "content": "Pick a number between 1 and 9."}]}
    # Retried, the miss came back as the agent's answer ("Model call failed after 3
    # attempts ..."), and the replication run finished as if it had replayed.
    with pytest.raises(ReplicationCacheMiss) as raised:
        replica.invoke(changed)
    assert isinstance(raised.value, exceptions.ModelError)
    assert raised.value.is_retryable is False
    assert server.chat_requests() == []


def test_retry_middleware_retries_only_what_retrying_can_change(
    chat: Callable[..., MnimiChatModel], server: SamplingServer
) -> None:
    agent = retrying_agent(chat("string"))
    server.fail_next(401)
    # A refused key: one request, then the error (it was sent three times, then answered
    # as a message), as the partner models' own errors are.
    with pytest.raises(ProviderRequestError) as raised:
        agent.invoke(QUESTION)
    assert raised.value.status_code == 401 and raised.value.is_retryable is False
    assert len(server.chat_requests()) == 1
    server.reset()
    server.fail_next(500)
    answer = agent.invoke(QUESTION)["messages"][-1]
    assert answer.response_metadata["cache_hit"] is False
    assert len(server.chat_requests()) == 2  # the server error was retried


class Weather(BaseModel):
    city: str
    temperature: int


def test_a_wrapped_model_tells_the_agent_its_name_and_profile(
    chat: Callable[..., MnimiChatModel], server: SamplingServer
) -> None:
    wrapped = ChatOpenAI(model="gpt-4o-mini", base_url=server.url, api_key="sk-test")
    model = MnimiChatModel(model=wrapped, cache_dir=chat("wrapped").cache_dir)
    # create_agent lowered the wrapped object as a name (AttributeError) and
    # SummarizationMiddleware found no context window.
    assert model.model_name == "gpt-4o-mini"
    assert model.profile == wrapped.profile and model.profile is not None
    assert model.profile["structured_output"] is True
    assert chat("string").model_name == "openai/mock-model"
    agent = agents.create_agent(model=model, tools=[], response_format=Weather)
    first = agent.invoke({"messages": [HumanMessage("Weather in Paris?")]})
    again = agent.invoke({"messages": [HumanMessage("Weather in Paris?")]})
    assert isinstance(first["structured_response"], Weather)
    assert again["structured_response"] == first["structured_response"]
    assert len(server.chat_requests()) == 1
    summarize = middleware.SummarizationMiddleware(model=model, trigger=("fraction", 0.8))
    assert summarize.model is model


@pytest.mark.parametrize("form", ["wrapped", "string"])
def test_langgraph_retry_policy_gives_a_replication_miss_up_at_once(
    chat: Callable[..., MnimiChatModel], server: SamplingServer, form: str
) -> None:
    attempts = []

    def graph(model: MnimiChatModel) -> Any:
        def ask(state: MessagesState) -> dict[str, Any]:
            attempts.append(1)
            return {"messages": [model.invoke(state["messages"])]}

        builder = StateGraph(MessagesState)
        builder.add_node("ask", ask, retry_policy=RetryPolicy(max_attempts=3, initial_interval=0))
        builder.add_edge(START, "ask")
        builder.add_edge("ask", END)
        return builder.compile()

    graph(chat(form)).invoke(QUESTION)
    attempts.clear()
    changed = {"messages": [{"role": "user", "content": "Pick a number between 1 and 9."}]}
    with pytest.raises(ReplicationCacheMiss):
        graph(chat(form, replication=True)).invoke(changed)
    assert attempts == [1]  # a LookupError, which LangGraph's default never retries
