"""Every Python block of README.md runs as written, offline.

A block runs unchanged against the local sampling server. The names a block takes from
the prose around it (``chain``, ``inputs``, ``msgs``, a ``model``...) are given to it, each
block in a fresh namespace. A block that cannot run offline (it needs a provider's key or
a remote host) says so in an HTML comment on the line above its fence, and is skipped
with that reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from mnimi_adapters import BatchedModel, Persistent, cli
from mnimi_adapters.core import Request
from mnimi_adapters.langchain import MnimiChatModel
from mnimi_adapters.providers import OpenAICompatible
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(
    r"(?:<!-- not run offline: (?P<why>.+?) -->\n)?```python\n(?P<code>.*?)```", re.S
)
QUESTION = "Choose a number between 1 and 1000."


def readme_blocks() -> list[Any]:
    blocks = []
    for number, match in enumerate(_BLOCK.finditer(README.read_text()), 1):
        marks = [pytest.mark.skip(reason=match["why"])] if match["why"] else []
        blocks.append(pytest.param(match["code"], id=f"block{number}", marks=marks))
    return blocks


class TaggedAnswers(BatchedModel):
    """A custom provider whose answers fit the README's structured-output spec."""

    def query(self, request: Request, n: int) -> list[str]:
        answer = (
            "<problem>Sort a list.</problem>\n"
            "<algorithm>Merge sort</algorithm>\n```python\nmerge(xs)\n```\n"
            "<algorithm>Quick sort</algorithm>\n```python\nquick(xs)\n```"
        )
        return [answer] * n


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=3) as running:
        yield running


@pytest.fixture
def offline(
    server: SamplingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], dict[str, Any]]:
    """The namespace a block runs in: what its surrounding prose defines."""
    server.reset()
    # "~/.llm_cache" in a block lands in this test's directory, never the user's.
    monkeypatch.setenv("HOME", str(tmp_path))
    # litellm.completion(model="openai/...") without an api_base goes here.
    monkeypatch.setenv("OPENAI_API_BASE", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "local-test-key")

    def langchain() -> dict[str, Any]:
        chat = MnimiChatModel(
            model="openai/mock-model",
            api_base=server.url,
            api_key="local",
            cache_dir=str(tmp_path / "langchain"),
        )
        prompt = ChatPromptTemplate.from_template("{question}")
        parser = StrOutputParser()
        return {
            "chat": chat,
            "prompt": prompt,
            "parser": parser,
            "chain": prompt | chat | parser,
            "inputs": {"question": QUESTION},
            "q": QUESTION,
        }

    def partner_models() -> dict[str, Any]:
        # ChatOpenAI reads OPENAI_API_BASE (set above); ChatAnthropic its own variables.
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.root_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "local-test-key")
        return {}

    def replication_author() -> dict[str, Any]:
        # The walkthrough's relative paths land in this test's directory.
        monkeypatch.chdir(tmp_path)
        return {"model": OpenAICompatible("mock-model", 1.0, api_base=server.url, api_key="x")}

    def replication_colleague() -> dict[str, Any]:
        # The bundle the authors shared: their run, sliced and exported.
        namespace = replication_author()
        paper = Persistent(namespace["model"], "paper-slice", record="paper-run.jsonl")
        paper.draw(QUESTION, 3)
        paper.close()
        bundle = [
            "export",
            "paper-slice",
            "paper-bundle",
            "--bundle",
            "--record",
            "paper-run.jsonl",
        ]
        assert cli.main(bundle) == 0
        return namespace

    contexts: dict[str, Callable[[], dict[str, Any]]] = {
        'record="paper-run.jsonl"': replication_author,
        '"paper-bundle/store"': replication_colleague,
        "ChatAnthropic(": partner_models,
        "chain.invoke": langchain,
        "StateGraph": langchain,
        "with_retry(": langchain,
        "MnimiCache(": lambda: {"msgs": [{"role": "user", "content": QUESTION}]},
        "query_retry(": lambda: {
            "model": Persistent(TaggedAnswers("tagged", 1.0), tmp_path / "structured"),
            "prompt": "Sort a list, two ways.",
        },
    }

    def namespace(code: str) -> dict[str, Any]:
        matching = [make for marker, make in contexts.items() if marker in code]
        assert len(matching) <= 1, "a README block matches several contexts"
        return {"__name__": "readme", **(matching[0]() if matching else {})}

    return namespace


@pytest.mark.parametrize("code", readme_blocks())
def test_readme_block_runs_as_written(
    code: str, offline: Callable[[str], dict[str, Any]], server: SamplingServer
) -> None:
    namespace = offline(code)
    exec(compile(code, str(README), "exec"), namespace)
    # What each block says in its comments holds.
    if "votes" in namespace:
        assert len(set(namespace["votes"])) == 5
        assert namespace["chain"].invoke(namespace["inputs"]) == namespace["chain"].invoke(
            namespace["inputs"]
        )
    if "five_votes" in namespace:  # five distinct samples, paid once, by the authors
        assert len(set(namespace["paper"])) == 5 and len(server.chat_requests()) == 5
    if "result" in namespace and "spec" in namespace:
        assert namespace["result"][0] == "Sort a list."
        assert len(namespace["result"][1]) == 2
    if "answers" in namespace:
        assert len(set(namespace["answers"])) == 3
        assert server.requests and all(r.status == 200 for r in server.requests)
    if "even" in namespace:  # each attempt drew anew until one was accepted
        assert namespace["even"] % 2 == 0
        assert len(server.chat_requests()) > 1  # the first answer was rejected
    if "graph" in namespace:
        # The second run replays every attempt: no request reaches the server.
        before = len(server.chat_requests())
        assert before >= 1
        assert namespace["graph"].compile().invoke({"answer": 0})["answer"] % 3 == 0
        assert len(server.chat_requests()) == before


def test_readme_blocks_are_found() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 7
    skipped = [block for block in blocks if block.marks]
    assert len(skipped) <= 3, "most README blocks must run offline"
