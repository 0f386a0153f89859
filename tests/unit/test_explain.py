"""A miss explains itself: the nearest stored request and the first field that differs."""

from __future__ import annotations

import copy
from typing import Any

from mnimi_adapters.core.explain import first_difference, nearest_record
from mnimi_adapters.core.request import Request, request_record

SYSTEM = "You are a careful assistant. Answer with the number only, and nothing else."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "pick",
            "parameters": {"type": "object", "properties": {"value": {"type": "integer"}}},
        },
    }
]


def record(system: str = SYSTEM, **params: Any) -> dict[str, Any]:
    messages = ({"role": "system", "content": system}, {"role": "user", "content": "Pick one."})
    params = {"tools": TOOLS, **params}
    return request_record(
        {"model": "gpt-4o", "params": {"temperature": 0.7}}, Request(messages, params)
    )


def test_equal_records_have_no_difference() -> None:
    assert first_difference(record(), record()) is None


def test_a_changed_temperature_is_named() -> None:
    changed = request_record(
        {"model": "gpt-4o", "params": {"temperature": 0.8}},
        Request.of(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Pick one."}]
        ),
    )
    stored = request_record(
        {"model": "gpt-4o", "params": {"temperature": 0.7}},
        Request.of(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Pick one."}]
        ),
    )
    assert first_difference(stored, changed) == "temperature: stored 0.7, requested 0.8"


def test_one_character_of_the_system_prompt_is_located() -> None:
    edited = SYSTEM.replace("number only", "numbers only")
    found = first_difference(record(), record(system=edited))
    at = SYSTEM.index("number only") + len("number")
    assert found is not None
    assert found.startswith(f"messages[0].content at character {at}: ")
    assert '"...' in found and "number only" in found and "numbers only" in found


def test_a_changed_tool_schema_names_the_field() -> None:
    tools = copy.deepcopy(TOOLS)
    tools[0]["function"]["parameters"]["properties"]["value"]["type"] = "string"
    found = first_difference(record(), record(tools=tools))
    assert found == (
        'tools[0].function.parameters.properties.value.type: stored "integer", requested "string"'
    )


def test_added_and_dropped_parameters() -> None:
    assert first_difference(record(), record(top_p=0.5)) == "top_p: not stored, requested 0.5"
    assert first_difference(record(seed=3), record()) == "seed: stored 3, not requested"


def test_the_nearest_record_of_the_same_model_is_chosen() -> None:
    near = record(system=SYSTEM.replace("careful", "carefull"))
    far = record(system="Write a poem about the sea.")
    other_model = {**record(), "model": "llama3"}
    stored = [("k-far", far), ("k-near", near), ("k-other", other_model)]
    assert nearest_record(record(), stored) == ("k-near", near)
    unknown = {**record(system="Something else."), "model": "unknown"}
    assert nearest_record(unknown, stored) is None


def test_the_same_request_under_another_model_name_is_found() -> None:
    # A replica that forgot the authors' alias was told only that nothing is stored for
    # its model, though the very request is stored under the alias.
    authors = {**record(), "model": "paper-model"}
    stored = [("k-other", record(system="Write a poem.")), ("k-alias", authors)]
    asked = {**record(), "model": "openai/gpt-4o", "endpoint": "http://127.0.0.1:8000/v1"}
    assert nearest_record(asked, stored) == ("k-alias", authors)
    assert first_difference(authors, asked) == (
        'model: stored "paper-model", requested "openai/gpt-4o"'
    )


def test_a_message_put_first_is_named_as_added() -> None:
    # It was explained as messages[0].content differing from the stored user message.
    user = {"role": "user", "content": "Pick one."}
    stored = request_record({"model": "m", "params": {}}, Request.of([user]))
    asked = request_record(
        {"model": "m", "params": {}}, Request.of([{"role": "system", "content": "Be brief."}, user])
    )
    assert first_difference(stored, asked) == (
        'messages[0]: not stored, requested {"content": "Be brief.", "role": "system"}'
    )
    assert first_difference(asked, stored) == (
        'messages[0]: stored {"content": "Be brief.", "role": "system"}, not requested'
    )
