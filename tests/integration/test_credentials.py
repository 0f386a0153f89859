"""No credential reaches a key, a stored byte, a log line or an exception, under any name.

The parameter names here are made up on purpose: safety must not depend on a list of the
names LiteLLM (or any provider) uses today.
"""

from __future__ import annotations

import base64
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest

from mnimi_adapters import LiteLLMModel, Persistent
from mnimi_adapters.core.errors import MnimiError
from mnimi_adapters.core.request import Request
from mnimi_adapters.langchain import MnimiChatModel
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

MODEL = "openai/mock-model"
# A credential-shaped name that no library has ever heard of.
SESSION = "zorblax_session_token"
SESSION_SECRET = "zorblax-sess-7f3a9c1e5b2d"
API_SECRET = "sk-api-key-4e8d2a6c0b1f"
HEADER_SECRET = "hdr-token-9b1c7e3f5a2d"
SECRETS = (SESSION_SECRET, API_SECRET, HEADER_SECRET)


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=5) as running:
        yield running


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    # Everything this library logs, and everything any library logs at INFO or above.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="mnimi_adapters")
    return caplog


def stored_bytes(directory: Path) -> bytes:
    """Every byte under ``directory``: the database, its WAL and anything beside them."""
    files = [path for path in directory.rglob("*") if path.is_file()]
    assert files, f"nothing stored under {directory}"
    return b"".join(path.read_bytes() for path in files)


def assert_nowhere(*texts: str | bytes) -> None:
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} leaked"


def error_text(error: BaseException) -> str:
    """An exception as a user would see it: message, repr and the whole traceback chain,
    and every exception chained to it, shown or not (error reporters walk them all)."""
    chained: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in chained:
        chained.append(link)
        link = link.__cause__ or link.__context__
    return "".join(traceback.format_exception(error)) + "".join(
        f"{link!r} {link}" for link in chained
    )


def test_litellm_model(server: SamplingServer, tmp_path: Path, logs: Any) -> None:
    server.reset()
    plain = LiteLLMModel(MODEL, 1.0, api_base=server.url, api_key=API_SECRET)
    secretive = LiteLLMModel(
        MODEL,
        1.0,
        api_base=server.url,
        api_key=API_SECRET,
        extra_headers={"X-Token": HEADER_SECRET},
        **{SESSION: SESSION_SECRET},
    )
    assert secretive.identity() == plain.identity()
    assert plain.key_of(Request.of("Pick a number.")) == secretive.key_of(
        Request.of("Pick a number.")
    )

    first = next(Persistent(secretive, tmp_path / "cache").sample("Pick a number."))
    # The same sequence without the credentials: replayed, not drawn again.
    assert next(Persistent(plain, tmp_path / "cache").sample("Pick a number.")) == first
    assert len(server.chat_requests()) == 1

    # A gateway that echoes the request headers (the key and X-Token) in its refusal.
    server.fail_next(401, echo=True)
    with pytest.raises(MnimiError) as caught:
        next(Persistent(secretive, tmp_path / "cache").sample("Another prompt."))
    assert "401" in str(caught.value)
    assert_nowhere(error_text(caught.value), logs.text, stored_bytes(tmp_path / "cache"))


def test_mnimi_cache(server: SamplingServer, tmp_path: Path, logs: Any) -> None:
    server.reset()
    cache_dir = tmp_path / "litellm"
    call: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Pick a number."}],
        "api_base": server.url,
        "api_key": API_SECRET,
    }
    with MnimiCache(str(cache_dir)) as cache:
        secret_call = {**call, "extra_headers": {"X-Token": HEADER_SECRET}, SESSION: SESSION_SECRET}
        assert cache.get_cache_key(**secret_call) == cache.get_cache_key(**call)
        first = litellm.completion(**secret_call)
        again = litellm.completion(**call)
        assert again.choices[0].message.content == first.choices[0].message.content
        assert len(server.chat_requests()) == 1

        server.fail_next(401, echo=True)
        with pytest.raises(Exception) as caught:
            litellm.completion(**{**secret_call, "messages": [{"role": "user", "content": "x"}]})
        assert "401" in str(caught.value)
    cache.close()
    assert_nowhere(error_text(caught.value), logs.text, stored_bytes(cache_dir))


def test_mnimi_chat_model(server: SamplingServer, tmp_path: Path, logs: Any) -> None:
    server.reset()
    common: dict[str, Any] = {
        "model": MODEL,
        "api_base": server.url,
        "api_key": API_SECRET,
        "cache_dir": str(tmp_path / "chat"),
    }
    plain = MnimiChatModel(**common)
    secretive = MnimiChatModel(
        **common, extra_headers={"X-Token": HEADER_SECRET}, **{SESSION: SESSION_SECRET}
    )
    first = secretive.invoke("Pick a number.")
    per_call = plain.bind(**{SESSION: SESSION_SECRET}).invoke("Pick a number.")
    assert per_call.response_metadata["cache_key"] == first.response_metadata["cache_key"]
    assert per_call.content == first.content
    assert len(server.chat_requests()) == 1

    server.fail_next(401, echo=True)
    with pytest.raises(Exception) as caught:
        secretive.invoke("Another prompt.")
    assert "401" in str(caught.value)
    assert_nowhere(
        repr(secretive),
        secretive.model_dump_json(),
        str(secretive._identifying_params),
        error_text(caught.value),
        logs.text,
        stored_bytes(tmp_path / "chat"),
    )


PASSWORD = "pw-in-url-3c9e1a7b5d"


def with_password(url: str, password: str = PASSWORD) -> str:
    """``url`` with ``user:password@`` in front of its host, as some gateways want."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://user:{password}@{rest}"


def test_a_password_in_the_base_url_is_neither_keyed_nor_stored(
    server: SamplingServer, tmp_path: Path, logs: Any
) -> None:
    # A gateway's base URL may carry a password: it was the key's endpoint and the stored
    # record's, so it reached `mnimi show`, exports and shared slices, and rotating the
    # password made every request miss.
    server.reset()
    prompt = [{"role": "user", "content": "Pick a number."}]
    with MnimiCache(str(tmp_path / "litellm")) as cache:
        first = litellm.completion(
            model=MODEL, messages=prompt, api_base=with_password(server.url), api_key="sk-x"
        )
        rotated = litellm.completion(
            model=MODEL,
            messages=prompt,
            api_base=with_password(server.url, "rotated"),
            api_key="sk-x",
        )
        assert rotated.choices[0].message.content == first.choices[0].message.content
        # The hit is the library's own answer: no password in what it carries.
        assert "user:rotated" not in str(rotated._hidden_params)
    cache.close()
    model = LiteLLMModel(MODEL, 1.0, api_base=with_password(server.url), api_key="sk-x")
    assert PASSWORD not in repr(model) and PASSWORD not in str(model.identity())
    next(Persistent(model, tmp_path / "core").sample("Pick a number."))
    chat = MnimiChatModel(
        model=MODEL,
        api_base=with_password(server.url),
        api_key="sk-x",
        cache_dir=str(tmp_path / "chat"),
    )
    chat.invoke("Pick a number.")
    assert len(server.chat_requests()) == 3
    for name in ("litellm", "core", "chat"):
        assert PASSWORD.encode() not in stored_bytes(tmp_path / name)
    assert PASSWORD not in logs.text


@pytest.mark.parametrize("echo", [False, True], ids=["500", "echoed-401"])
def test_a_password_in_the_base_url_reaches_no_error(
    server: SamplingServer, tmp_path: Path, logs: Any, echo: bool
) -> None:
    # The provider layer's error named the endpoint as given, password and all, and
    # MnimiCache raised LiteLLM's exception with that error in its context. The HTTP
    # client sends the URL's user and password as Basic credentials, which a gateway
    # that echoes its request headers repeats.
    server.reset()
    status = 401 if echo else 500
    basic = base64.b64encode(f"user:{PASSWORD}".encode()).decode()
    api_base = with_password(server.url)
    model = LiteLLMModel(MODEL, 1.0, api_base=api_base, api_key="sk-x", max_retries=0)
    server.fail_next(status, echo=echo)
    with pytest.raises(MnimiError) as core:
        next(Persistent(model, tmp_path / "core").sample("Fail, please."))
    assert f"HTTP {status}" in str(core.value)
    with MnimiCache(str(tmp_path / "litellm")) as cache:
        server.fail_next(status, echo=echo)
        with pytest.raises(Exception) as cached:
            litellm.completion(
                model=MODEL,
                messages=[{"role": "user", "content": "Fail, please."}],
                api_base=api_base,
                api_key="sk-x",
                num_retries=0,
            )
    cache.close()
    if not echo:  # only an echoed secret keeps LiteLLM's own exception from the caller
        assert isinstance(cached.value, litellm.InternalServerError)
    assert len(server.chat_requests()) == 2
    if echo:
        assert "Basic ***" in str(core.value)
    for error in (core.value, cached.value):
        shown = error_text(error)
        assert PASSWORD not in shown and basic not in shown
    assert PASSWORD not in logs.text and basic not in logs.text
