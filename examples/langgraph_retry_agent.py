"""A LangGraph node with a RetryPolicy: fresh samples per attempt, replayed on a rerun.

Run it with ``python examples/langgraph_retry_agent.py [--cache-dir DIR]``.

The ``propose`` node asks the model for a number and rejects any answer that is not a
multiple of 7; LangGraph retries the node. A cache that replays one answer per request
would fail every retry the same way. MnimiChatModel gives attempt ``k`` of the node the
``k``-th sample of the request's sequence instead, so every attempt is a fresh draw, and
running the whole graph again replays the same attempts from the cache.

With ``FIREWORKS_API_KEY`` set it samples from Fireworks; without it, it starts the
built-in local sampling server and runs offline.

It needs LangGraph, which ``pip install -e .`` does not install: in a checkout,
``pip install -e ".[test]"`` brings it (with the test suite's other tools), or
``pip install "langgraph>=1.0"`` alone.
"""

from __future__ import annotations

import os
from typing import TypedDict

# LiteLLM would otherwise try to download its price map when first imported.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from _local_model import example_chat_model

try:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import RetryPolicy
except ModuleNotFoundError as missing:
    # LangGraph is no dependency of the library: say how to get it, not just its name.
    raise SystemExit(
        f"this example needs LangGraph ({missing.name} is missing): "
        'pip install -e ".[test]" in a checkout, or pip install "langgraph>=1.0"'
    ) from None

from mnimi_adapters.langchain import MnimiChatModel

QUESTION = "Pick a random number between 1 and 50. Answer with the number only."
MAX_ATTEMPTS = 12


class State(TypedDict):
    answer: int


class Rejected(ValueError):
    """The proposed answer failed validation; LangGraph retries the node."""


def build(chat: MnimiChatModel, log: list[str]) -> object:
    def propose(state: State) -> State:
        text = str(chat.invoke(QUESTION).content).strip()
        try:
            number = int(text)
        except ValueError:
            number = 0
        ok = number > 0 and number % 7 == 0
        log.append(f"{text!r}{'' if ok else ' rejected'}")
        if not ok:
            raise Rejected(text)
        return {"answer": number}

    graph = StateGraph(State)
    graph.add_node(
        "propose",
        propose,
        retry_policy=RetryPolicy(
            max_attempts=MAX_ATTEMPTS, initial_interval=0.0, jitter=False, retry_on=Rejected
        ),
    )
    graph.add_edge(START, "propose")
    graph.add_edge("propose", END)
    return graph.compile()


def run(chat: MnimiChatModel) -> tuple[list[str], int | None]:
    log: list[str] = []
    app = build(chat, log)
    try:
        answer: int | None = app.invoke({"answer": 0})["answer"]  # type: ignore[attr-defined]
    except Rejected:
        answer = None
    return log, answer


def main() -> None:
    with example_chat_model(__doc__.splitlines()[0], seed=3) as chat:
        attempts, answer = run(chat)
        print(f"first run:  attempts {attempts} -> answer {answer}")
        before = chat.cache_stats()["requests"]
        again, answer_again = run(chat)
        new_requests = chat.cache_stats()["requests"] - before
        print(f"second run: attempts {again} -> answer {answer_again}")
        print(f"rerun:      replayed {again == attempts} with {new_requests} new provider requests")


if __name__ == "__main__":
    main()
