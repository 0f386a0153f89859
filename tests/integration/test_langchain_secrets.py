"""No credential leaves MnimiChatModel: not in a wrapped model's provider error (whose type
stays the wrapped model's own), not in a dump of a Redis cache location with its password.

Real ChatOpenAI against the local sampling server (127.0.0.1), which can echo the request
headers in a refusal as some gateways do.
"""

from __future__ import annotations

import os

# Must precede any litellm import: otherwise litellm fetches its cost map over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import json
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from langchain_core.load import dumps
from langchain_openai import ChatOpenAI

from mnimi_adapters import MnimiError, independent
from mnimi_adapters.langchain import MnimiChatModel
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

KEY = "sk-wrapped-key-5c1e9a7d3b"
HEADER_SECRET = "hdr-token-2f8b6d4a0c"
PASSWORD = "redis-pw-8e4c2a6f1d"


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=31) as running:
        yield running


@pytest.fixture
def wrapped(server: SamplingServer, tmp_path: Path) -> Callable[[], MnimiChatModel]:
    server.reset()
    server.chunk_delay = 0.0

    def make() -> MnimiChatModel:
        chat = ChatOpenAI(
            model="mock-model",
            base_url=server.url,
            api_key=KEY,
            default_headers={"X-Token": HEADER_SECRET},
            max_retries=0,
        )
        return MnimiChatModel(model=chat, cache_dir=str(tmp_path / "cache"))

    return make


def chain_of(error: BaseException) -> list[BaseException]:
    links: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in links:
        links.append(link)
        link = link.__cause__ or link.__context__
    return links


def assert_scrubbed(error: BaseException) -> None:
    """The wrapped model's own error class, its status, and no credential anywhere a user
    or a log sees it: message, repr, traceback, attributes of every exception it chains."""
    # The class the wrapped model raised (langchain-openai's own subclass in some releases,
    # openai's in others), never one of ours.
    assert isinstance(error, openai.AuthenticationError), type(error)
    assert not isinstance(error, MnimiError)
    text = "".join(traceback.format_exception(error)) + repr(error)
    for link in chain_of(error):
        text += repr(link.args) + repr(vars(link))
    assert "401" in text and "Bearer ***" in text
    assert KEY not in text and HEADER_SECRET not in text
    assert isinstance(error.body, dict) and KEY not in json.dumps(error.body)


def test_a_wrapped_models_error_keeps_its_type_and_loses_the_key(
    server: SamplingServer, wrapped: Callable[[], MnimiChatModel]
) -> None:
    chat = wrapped()
    server.fail_next(401, echo=True)
    with pytest.raises(openai.AuthenticationError) as caught:
        chat.invoke("Pick a number.")
    assert_scrubbed(caught.value)

    server.fail_next(401, echo=True)
    with pytest.raises(openai.AuthenticationError) as caught:
        list(chat.stream("Pick a number."))
    assert_scrubbed(caught.value)
    assert server.requests[-1].body["stream"] is True

    server.fail_next(401, echo=True, count=2)
    with independent():
        outcomes = chat.batch(["Pick a number."] * 2, return_exceptions=True)
    assert all(isinstance(o, openai.AuthenticationError) for o in outcomes)
    for outcome in outcomes:
        assert_scrubbed(outcome)  # type: ignore[arg-type]

    # A failure is no sample: the next call draws, and answers.
    assert chat.invoke("Pick a number.").response_metadata["cache_hit"] is False


def test_an_async_wrapped_models_error_loses_the_key(
    server: SamplingServer, wrapped: Callable[[], MnimiChatModel]
) -> None:
    chat = wrapped()

    async def run() -> list[BaseException]:
        errors: list[BaseException] = []
        server.fail_next(401, echo=True)
        try:
            await chat.ainvoke("Pick a number.")
        except openai.AuthenticationError as error:
            errors.append(error)
        server.fail_next(401, echo=True)
        try:
            async for _ in chat.astream("Pick a number."):
                pass
        except openai.AuthenticationError as error:
            errors.append(error)
        return errors

    errors = asyncio.run(run())
    assert len(errors) == 2
    for error in errors:
        assert_scrubbed(error)


def test_an_error_without_a_credential_is_left_as_it_was(
    server: SamplingServer, wrapped: Callable[[], MnimiChatModel]
) -> None:
    server.fail_next(401)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrapped().invoke("Pick a number.")
    assert "***" not in str(caught.value) and "Injected fault: HTTP 401" in str(caught.value)


# -- a Redis password in the cache location ---------------------------------------------


@pytest.mark.parametrize("field", ["cache_dir", "slice_of"])
def test_dumps_hide_a_redis_password(field: str, tmp_path: Path) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:6399/0"
    other = str(tmp_path / "slice")
    places: dict[str, Any] = (
        {"cache_dir": url} if field == "cache_dir" else {"cache_dir": other, "slice_of": url}
    )
    wrapped = ChatOpenAI(model="mock-model", api_key=KEY)
    for chat in (
        MnimiChatModel(model="openai/mock-model", api_key=KEY, **places),
        MnimiChatModel(model=wrapped, **places),
    ):
        dumped = chat.model_dump()
        assert dumped[field].startswith("redis://:***@127.0.0.1:6399/0")
        for text in (str(dumped), chat.model_dump_json(), repr(chat), dumps(chat)):
            assert PASSWORD not in text and KEY not in text
        # The field itself keeps the password: the store needs it.
        assert getattr(chat, field) == url
