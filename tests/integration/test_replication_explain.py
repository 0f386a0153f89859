"""A replication miss names the nearest stored request and the first field that differs,
raised by ``Persistent(..., replication=True)`` and printed by ``mnimi explain``."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from mnimi_adapters import cli
from mnimi_adapters.core import Persistent
from mnimi_adapters.core.errors import ReplicationCacheMiss
from mnimi_adapters.core.model import BatchedModel
from mnimi_adapters.core.request import Request

SYSTEM = "You are a careful assistant. Answer with the number only, and nothing else at all."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "pick",
            "parameters": {"type": "object", "properties": {"value": {"type": "integer"}}},
        },
    }
]


class Counter(BatchedModel):
    """Numbered answers; counts its queries, so a replay that asked it would show."""

    queries = 0

    def query(self, request: Request, n: int) -> list[Any]:
        Counter.queries += 1
        return [f"answer {Counter.queries}.{i}" for i in range(n)]


def request(system: str = SYSTEM, tools: list[dict[str, Any]] | None = None) -> Request:
    messages = ({"role": "system", "content": system}, {"role": "user", "content": "Pick one."})
    return Request(messages, {"tools": tools or TOOLS})


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache holding three samples of :func:`request` at temperature 0.7."""
    path = tmp_path / "cache"
    model = Persistent(Counter("m", 0.7), path)
    model.draw(request(), 3)
    model.close()
    return path


def miss(cache: Path, temperature: float, changed: Request) -> ReplicationCacheMiss:
    replay = Persistent(Counter("m", temperature), cache, replication=True)
    before = Counter.queries
    with pytest.raises(ReplicationCacheMiss) as raised:
        replay.draw(changed, 1)
    assert Counter.queries == before
    replay.close()
    return raised.value


def edited_tools() -> list[dict[str, Any]]:
    tools = json.loads(json.dumps(TOOLS))
    tools[0]["function"]["parameters"]["properties"]["value"]["type"] = "number"
    return tools


EDITED_SYSTEM = SYSTEM.replace("number only", "numbers only")
CHANGES = {
    "temperature": (0.8, request(), "temperature: stored 0.7, requested 0.8"),
    "system prompt": (
        0.7,
        request(system=EDITED_SYSTEM),
        f"messages[0].content at character {SYSTEM.index('number only') + 6}: ",
    ),
    "tool schema": (
        0.7,
        request(tools=edited_tools()),
        'tools[0].function.parameters.properties.value.type: stored "integer", requested "number"',
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_miss_names_the_nearest_request_and_the_field(cache: Path, change: str) -> None:
    temperature, changed, expected = CHANGES[change]
    stored_key = Persistent(Counter("m", 0.7), cache).key_of(request())
    error = miss(cache, temperature, changed)
    assert error.nearest_key == stored_key
    assert error.explanation is not None and error.explanation.startswith(expected)
    assert str(error).startswith(f"replication mode: the 1st sample (index 0) of key {error.key}")
    assert f"the nearest stored request, {stored_key}, differs in {expected}" in str(error)
    assert (error.cached, error.index) == (0, 0)


def test_a_sequence_that_ran_short_is_not_explained(cache: Path) -> None:
    replay = Persistent(Counter("m", 0.7), cache, replication=True)
    with pytest.raises(ReplicationCacheMiss) as raised:
        replay.draw(request(), 4)
    assert (raised.value.cached, raised.value.index) == (3, 3)
    assert raised.value.explanation is None and raised.value.nearest_key is None


def test_another_model_is_explained_only_by_the_same_request(cache: Path) -> None:
    # The very request under another name (an alias the replica forgot) is named; any
    # other request of another model is no nearest one.
    replay = Persistent(Counter("other", 0.7), cache, replication=True)
    with pytest.raises(ReplicationCacheMiss) as raised:
        replay.draw(request(), 1)
    assert raised.value.nearest_key == Persistent(Counter("m", 0.7), cache).key_of(request())
    assert raised.value.explanation == 'model: stored "m", requested "other"'
    with pytest.raises(ReplicationCacheMiss) as raised:
        replay.draw(request(system="Write a poem."), 1)
    assert raised.value.nearest_key is None
    assert "nearest" not in str(raised.value)


def body(changed: Request, temperature: float) -> dict[str, Any]:
    """An OpenAI-style body of ``changed``."""
    return {
        "model": "m",
        "messages": list(changed.messages),
        "temperature": temperature,
        **changed.params,
    }


def explain(cache: Path, tmp_path: Path, payload: dict[str, Any], *flags: str) -> tuple[int, str]:
    file = tmp_path / "request.json"
    file.write_text(json.dumps(payload))
    out = io.StringIO()
    stdout, sys.stdout = sys.stdout, out
    try:
        code = cli.main([*flags, "explain", str(cache), str(file)])
    finally:
        sys.stdout = stdout
    return code, out.getvalue()


@pytest.mark.parametrize("change", list(CHANGES))
def test_mnimi_explain_names_the_field(cache: Path, tmp_path: Path, change: str) -> None:
    temperature, changed, expected = CHANGES[change]
    stored_key = Persistent(Counter("m", 0.7), cache).key_of(request())
    code, out = explain(cache, tmp_path, body(changed, temperature))
    assert code == 1
    assert out.splitlines()[0] == f"nearest stored request: {stored_key}"
    assert out.splitlines()[1].startswith(f"first difference: {expected}")


def test_mnimi_explain_takes_the_library_form_and_stdin(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = request()
    payload = {
        "model": "m",
        "messages": list(stored.messages),
        "params": {"temperature": 0.7, **stored.params},
    }
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(payload)))
    assert cli.main(["--json", "explain", str(cache), "-"]) == 0
    found = json.loads(capsys.readouterr().out)
    stored_key = Persistent(Counter("m", 0.7), cache).key_of(stored)
    assert found == {"model": "m", "nearest": stored_key, "difference": None}


def test_mnimi_explain_keys_a_litellm_body_without_temperature_as_the_cache_does(
    tmp_path: Path,
) -> None:
    # MnimiCache keys such a call at 1.0; explain said "temperature: stored 1, not
    # requested" of the very request it had stored.
    import litellm

    from mnimi_adapters.litellm import MnimiCache
    from mnimi_adapters.testing import SamplingServer

    messages = [{"role": "user", "content": "Pick a number between 1 and 1000."}]
    call = {"model": "openai/mock-model", "messages": messages}
    with SamplingServer(seed=7) as server, MnimiCache(str(tmp_path / "cache")) as cache:
        litellm.completion(**call, api_base=server.url, api_key="sk-test")
        url = server.url
    cache.close()
    code, out = explain(tmp_path / "cache", tmp_path, {**call, "api_base": url})
    assert (code, out.split(":")[0]) == (0, "stored")


def test_mnimi_explain_rejects_what_is_not_a_request(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = explain(cache, tmp_path, {"messages": []})
    assert code == 2
    assert '"model"' in capsys.readouterr().err


def test_mnimi_explain_takes_a_body_as_it_was_passed_to_litellm(tmp_path: Path) -> None:
    # Its api_base was taken for a parameter, and every such request's first difference
    # was "endpoint: stored ..., not requested", which hid the real one.
    import litellm

    from mnimi_adapters.litellm import MnimiCache
    from mnimi_adapters.testing import SamplingServer

    messages = [{"role": "user", "content": "Pick a number between 1 and 100."}]
    with SamplingServer(seed=3) as server, MnimiCache(str(tmp_path / "cache")) as cache:
        litellm.completion(
            model="openai/mock-model",
            messages=messages,
            temperature=0.8,
            api_base=server.url,
            api_key="sk-x",
        )
        api_base = server.url.replace("://", "://user:secret@")  # as a gateway may want
    cache.close()
    sent = {"model": "openai/mock-model", "messages": messages, "api_base": api_base}
    code, out = explain(tmp_path / "cache", tmp_path, {**sent, "temperature": 0.8})
    assert code == 0 and out.startswith("stored: the request is key m1-")
    code, out = explain(tmp_path / "cache", tmp_path, {**sent, "temperature": 0.9})
    assert code == 1
    assert out.splitlines()[1] == "first difference: temperature: stored 0.8, requested 0.9"
