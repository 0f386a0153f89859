"""Tests of the local OpenAI-compatible sampling server (real HTTP on 127.0.0.1 only)."""

from __future__ import annotations

import os

# Must precede the litellm import: otherwise litellm fetches its cost map over the network.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import litellm
import pytest

from mnimi_adapters.testing import SamplingServer

litellm.suppress_debug_info = True

RANGE_PROMPT = [{"role": "user", "content": "Pick a number between 1 and 1000."}]
MAGIC_TOOL = {
    "type": "function",
    "function": {
        "name": "magic_function",
        "description": "Applies a magic function to an input.",
        "parameters": {
            "type": "object",
            "properties": {"input": {"type": "integer"}},
            "required": ["input"],
        },
    },
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
# Exercises $ref/$defs, enums, Optional (anyOf with null), nested objects, arrays and bounds.
RICH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "$defs": {
        "Address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "zip": {"type": "integer"}},
            "required": ["street", "zip"],
        }
    },
    "properties": {
        "name": {"type": "string", "minLength": 3},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "score": {"type": "number"},
        "active": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "home": {"$ref": "#/$defs/Address"},
        "meta": {"type": "object", "properties": {"created": {"type": "string"}}},
    },
    "required": ["name", "age", "score", "active", "color", "tags", "home"],
    "additionalProperties": False,
}


@pytest.fixture
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=0) as running:
        yield running


def chat(server: SamplingServer, timeout: float = 5.0, **body: Any) -> httpx.Response:
    body.setdefault("model", "mock-model")
    body.setdefault("messages", RANGE_PROMPT)
    return httpx.post(
        f"{server.url}/chat/completions",
        json=body,
        headers={"Authorization": "Bearer sk-secret"},
        timeout=timeout,
    )


def contents(response: httpx.Response) -> list[str]:
    return [choice["message"]["content"] for choice in response.json()["choices"]]


def sse_events(response: httpx.Response) -> list[Any]:
    """Parses an SSE body into JSON chunks, with ``None`` for ``[DONE]``."""
    events: list[Any] = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(None if data == "[DONE]" else json.loads(data))
    return events


# -- Sampling -------------------------------------------------------------------------


def test_range_answers_are_distinct_integers_across_choices_and_requests(
    server: SamplingServer,
) -> None:
    texts = [text for _ in range(4) for text in contents(chat(server, n=5))]

    assert len(texts) == 20
    assert all(text.isdigit() and 1 <= int(text) <= 1000 for text in texts)
    assert len(set(texts)) == 20, "every sample must be fresh"


def test_identical_requests_give_distinct_sentences(server: SamplingServer) -> None:
    messages = [{"role": "user", "content": "Tell me something."}]
    first, second = chat(server, messages=messages), chat(server, messages=messages)

    (a,), (b,) = contents(first), contents(second)
    assert a != b
    assert 5 <= len(a.split()) <= 13  # A number token plus 4-12 words.
    assert first.json()["id"] != second.json()["id"]


def test_same_seed_and_request_order_reproduce_the_same_samples() -> None:
    def run() -> list[str]:
        with SamplingServer(seed=42) as fresh:
            return contents(chat(fresh, n=3)) + contents(
                chat(fresh, messages=[{"role": "user", "content": "hi"}])
            )

    assert run() == run()


def test_response_shape_n_and_usage(server: SamplingServer) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Say three things"}]},
    ]
    payload = chat(server, model="my-model", n=3, messages=messages).json()

    assert payload["object"] == "chat.completion"
    assert payload["id"].startswith("chatcmpl-")
    assert payload["model"] == "my-model"
    assert payload["system_fingerprint"] == "mnimi-local"
    assert [c["index"] for c in payload["choices"]] == [0, 1, 2]
    assert all(c["message"]["role"] == "assistant" for c in payload["choices"])
    assert all(c["finish_reason"] == "stop" and c["logprobs"] is None for c in payload["choices"])
    usage = payload["usage"]
    assert usage["prompt_tokens"] == 6  # "You are terse." + "Say three things"
    expected = sum(len(c["message"]["content"].split()) for c in payload["choices"])
    assert usage["completion_tokens"] == expected
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_truncates_with_finish_reason_length_through_litellm(
    server: SamplingServer,
) -> None:
    response = litellm.completion(
        model="openai/mock-model",
        api_base=server.url,
        api_key="sk-test",
        messages=[{"role": "user", "content": "Tell me a story."}],
        n=2,
        max_tokens=2,
    )

    assert [len(c.message.content.split()) for c in response.choices] == [2, 2]
    assert [c.finish_reason for c in response.choices] == ["length", "length"]
    assert response.choices[0].message.content != response.choices[1].message.content
    assert server.chat_requests()[-1].body["n"] == 2
    # max_completion_tokens is honoured too, and a short answer is not a truncation.
    truncated = chat(server, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=1)
    assert truncated.json()["choices"][0]["finish_reason"] == "length"
    short = chat(server, max_tokens=5)  # A range answer is a single token.
    assert short.json()["choices"][0]["finish_reason"] == "stop"


def test_stop_sequence_cuts_the_text(server: SamplingServer) -> None:
    response = chat(server, messages=[{"role": "user", "content": "Talk."}], stop=[" ", "zz"])

    (text,) = contents(response)
    assert text.isdigit()  # Cut before the first space: only the leading number token.
    assert response.json()["choices"][0]["finish_reason"] == "stop"


# -- Tools and structured output ------------------------------------------------------


def test_tool_call_through_litellm_uses_the_integer_from_the_prompt(
    server: SamplingServer,
) -> None:
    response = litellm.completion(
        model="openai/mock-model",
        api_base=server.url,
        api_key="sk-test",
        messages=[{"role": "user", "content": "What is magic_function(3)? Use the tool."}],
        tools=[MAGIC_TOOL],
    )

    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "magic_function"
    assert call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"input": 3}


def test_tool_arguments_satisfy_a_rich_schema(server: SamplingServer) -> None:
    tool = {"type": "function", "function": {"name": "register", "parameters": RICH_SCHEMA}}

    response = chat(server, n=3, tools=[tool], tool_choice="required")

    calls = [c["message"]["tool_calls"][0] for c in response.json()["choices"]]
    for call in calls:
        assert call["type"] == "function" and call["function"]["name"] == "register"
        jsonschema.validate(json.loads(call["function"]["arguments"]), RICH_SCHEMA)
    assert len({call["id"] for call in calls}) == 3
    assert all(c["message"]["content"] in (None, "") for c in response.json()["choices"])


@pytest.mark.parametrize(
    ("tool_choice", "prompt", "expected"),
    [
        ("none", "Use magic_function on 3", None),
        ({"type": "function", "function": {"name": "get_weather"}}, "hello", "get_weather"),
        ("auto", "Tell me a joke.", None),  # Two tools, neither named nor topical: text.
        ("auto", "Call get_weather for Paris", "get_weather"),
        ("auto", "What is the weather in Paris?", "get_weather"),  # A word of its name.
        ("any", "Will the weather hold?", "get_weather"),  # Forced: the topical tool first.
        ("any", "hello", "magic_function"),
    ],
)
def test_tool_choice_decides_between_text_and_call(
    server: SamplingServer, tool_choice: Any, prompt: str, expected: str | None
) -> None:
    response = chat(
        server,
        messages=[{"role": "user", "content": prompt}],
        tools=[MAGIC_TOOL, WEATHER_TOOL],
        tool_choice=tool_choice,
    )

    message = response.json()["choices"][0]["message"]
    if expected is None:
        assert "tool_calls" not in message and message["content"]
    else:
        assert message["tool_calls"][0]["function"]["name"] == expected


def test_tool_result_is_answered_with_text(server: SamplingServer) -> None:
    messages = [
        {"role": "user", "content": "What is magic_function(3)? Use the tool."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "magic_function", "arguments": '{"input": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]

    response = chat(server, messages=messages, tools=[MAGIC_TOOL])

    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]
    assert "returned 5" in choice["message"]["content"]


def test_topical_tool_words_need_meaningful_name_parts(server: SamplingServer) -> None:
    lookup = {
        "type": "function",
        "function": {
            "name": "lookupCustomerRecord",
            "parameters": {"type": "object", "properties": {"id": {"type": "integer"}}},
        },
    }

    def called(prompt: str) -> str | None:
        response = chat(
            server,
            messages=[{"role": "user", "content": prompt}],
            tools=[MAGIC_TOOL, WEATHER_TOOL, lookup],
        )
        calls = response.json()["choices"][0]["message"].get("tool_calls")
        return calls[0]["function"]["name"] if calls else None

    # camelCase parts count, and so does a plural.
    assert called("Which customers ordered last week?") == "lookupCustomerRecord"
    # Generic parts ("function") and short ones ("get") are no reason to call a tool.
    assert called("How does a function get its arguments?") is None
    # The tool sharing the most words wins: "magic" alone vs "customer" and "record".
    assert called("Find the customer record of the magic shop") == "lookupCustomerRecord"


def test_agent_loop_calls_the_topical_tool_then_answers_with_text(
    server: SamplingServer,
) -> None:
    question = {"role": "user", "content": "What is the weather in San Francisco, CA?"}

    first = chat(server, messages=[question], tools=[WEATHER_TOOL]).json()["choices"][0]
    assert first["finish_reason"] == "tool_calls"
    (call,) = first["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    result = {"role": "tool", "tool_call_id": call["id"], "content": "It's sunny."}
    history = [question, first["message"], result]
    second = chat(server, messages=history, tools=[WEATHER_TOOL]).json()["choices"][0]

    assert second["finish_reason"] == "stop"
    assert "tool_calls" not in second["message"]
    assert "returned It's sunny." in second["message"]["content"]


def test_string_arguments_use_quoted_phrases_and_unicode_round_trips(
    server: SamplingServer,
) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "create_customer",
            "parameters": {
                "type": "object",
                "properties": {
                    "email": {"type": "string", "format": "email"},
                    "customer_name": {"type": "string"},
                    "city": {"type": "string", "maxLength": 10},
                    "employees": {"type": "integer"},
                },
                "required": ["customer_name", "city", "email", "employees"],
            },
        },
    }
    prompt = (
        "Call 'create_customer' for a company named '你好啊集团' (Hello Group) with 250 "
        "people, based in \"上海\" - it's a Chinese company, don't forget."
    )

    response = litellm.completion(
        model="openai/mock-model",
        api_base=server.url,
        api_key="sk-test",
        messages=[{"role": "user", "content": prompt}],
        tools=[tool],
    )

    (call,) = response.choices[0].message.tool_calls
    arguments = json.loads(call.function.arguments)
    # Phrases in prompt order; the quoted tool name is no value; apostrophes pair nothing.
    assert arguments["customer_name"] == "你好啊集团"
    assert arguments["city"] == "上海"
    assert arguments["employees"] == 250
    assert arguments["email"].endswith("@example.com")  # A phrase is no email address.
    # Raw UTF-8 on the wire, as real models send it, not \uXXXX escapes.
    raw = chat(server, messages=[{"role": "user", "content": prompt}], tools=[tool])
    assert "你好啊集团".encode() in raw.content
    assert "\\u4f60" not in raw.text


def test_string_phrases_fill_json_schema_values_too(server: SamplingServer) -> None:
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
        "required": ["title", "year"],
    }

    response = chat(
        server,
        messages=[{"role": "user", "content": 'Describe the film "Amélie" from 2001.'}],
        response_format={"type": "json_schema", "json_schema": {"name": "f", "schema": schema}},
    )

    assert json.loads(contents(response)[0]) == {"title": "Amélie", "year": 2001}


def test_lone_surrogates_in_a_prompt_still_get_valid_json(server: SamplingServer) -> None:
    # json.loads accepts "\ud800", but such a string cannot be encoded as UTF-8 as is.
    body = {
        "model": "mock-model",
        "messages": [{"role": "user", "content": "Call it 'a\ud800b'"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
    }

    response = httpx.post(
        f"{server.url}/chat/completions",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        timeout=5.0,
    )

    assert response.status_code == 200
    call = response.json()["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "a\ud800b"}


def test_json_schema_response_format_through_litellm(server: SamplingServer) -> None:
    response = litellm.completion(
        model="openai/mock-model",
        api_base=server.url,
        api_key="sk-test",
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": RICH_SCHEMA, "strict": True},
        },
        n=2,
    )

    values = [json.loads(c.message.content) for c in response.choices]
    for value in values:
        jsonschema.validate(value, RICH_SCHEMA)
    assert values[0] != values[1]


def test_json_object_response_format(server: SamplingServer) -> None:
    response = chat(server, response_format={"type": "json_object"}, max_tokens=1)

    value = json.loads(contents(response)[0])
    assert isinstance(value, dict) and 1 <= int(value["answer"]) <= 1000


@pytest.mark.parametrize(
    ("messages", "keys"),
    [
        (
            [
                {
                    "role": "user",
                    "content": "Tell me a joke about 'cats'. Return the result as a JSON "
                    "with 'setup' and 'punchline' keys. Return nothing other than JSON.",
                }
            ],
            ["setup", "punchline"],
        ),
        (
            [
                {"role": "system", "content": "Answer in JSON with the fields `name`, `age`."},
                {"role": "user", "content": "Describe someone."},
            ],
            ["name", "age"],
        ),
        ([{"role": "user", "content": 'Use keys: "a", "b" or "c"'}], ["a", "b", "c"]),
        # Quoted words away from any key word are not keys.
        ([{"role": "user", "content": "Tell me about 'cats' in JSON."}], ["answer"]),
    ],
)
def test_json_object_uses_the_keys_the_conversation_names(
    server: SamplingServer, messages: list[dict[str, str]], keys: list[str]
) -> None:
    response = chat(server, messages=messages, response_format={"type": "json_object"}, n=2)

    values = [json.loads(text) for text in contents(response)]
    for value in values:
        assert list(value) == keys
        assert all(isinstance(v, str) and v for v in value.values())
    assert values[0] != values[1]
    assert [c["finish_reason"] for c in response.json()["choices"]] == ["stop", "stop"]


def test_json_object_with_named_keys_streams_back_to_the_same_object(
    server: SamplingServer,
) -> None:
    prompt = "Reply with a JSON object with 'setup' and 'punchline' keys."

    response = chat(
        server,
        messages=[{"role": "user", "content": prompt}],
        response_format={"type": "json_object"},
        stream=True,
    )

    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in sse_events(response) if e)
    assert set(json.loads(text)) == {"setup", "punchline"}


# -- Streaming ------------------------------------------------------------------------


def test_streaming_with_n_and_usage_reassembles(server: SamplingServer) -> None:
    response = chat(
        server,
        messages=[{"role": "user", "content": "Tell me two things."}],
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )

    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] is None  # [DONE]
    *chunks, usage_chunk = events[:-1]
    assert usage_chunk["choices"] == []
    texts: dict[int, str] = {0: "", 1: ""}
    roles: dict[int, list[str | None]] = {0: [], 1: []}
    finishes: dict[int, list[str | None]] = {0: [], 1: []}
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        (choice,) = chunk["choices"]
        index = choice["index"]
        texts[index] += choice["delta"].get("content") or ""
        roles[index].append(choice["delta"].get("role"))
        finishes[index].append(choice["finish_reason"])
    assert [chunks[0]["choices"][0]["index"], chunks[1]["choices"][0]["index"]] == [0, 1]
    for index in (0, 1):
        assert roles[index][0] == "assistant" and set(roles[index][1:]) == {None}
        assert finishes[index][-1] == "stop" and set(finishes[index][:-1]) == {None}
        assert 5 <= len(texts[index].split()) <= 13
    assert texts[0] != texts[1]
    completion_tokens = sum(len(t.split()) for t in texts.values())
    assert usage_chunk["usage"]["completion_tokens"] == completion_tokens
    assert usage_chunk["usage"]["prompt_tokens"] == 4


def test_streamed_tool_call_arguments_reassemble(server: SamplingServer) -> None:
    response = chat(
        server,
        messages=[{"role": "user", "content": "Run magic_function with 17"}],
        tools=[MAGIC_TOOL],
        stream=True,
    )

    deltas = [e["choices"][0] for e in sse_events(response) if e is not None]
    first = deltas[0]["delta"]["tool_calls"][0]
    assert first["id"].startswith("call_") and first["function"] == {
        "name": "magic_function",
        "arguments": "",
    }
    arguments = "".join(
        d["delta"]["tool_calls"][0]["function"]["arguments"]
        for d in deltas
        if d["delta"].get("tool_calls")
    )
    assert json.loads(arguments) == {"input": 17}
    assert deltas[-1]["finish_reason"] == "tool_calls"


def test_streaming_through_litellm(server: SamplingServer) -> None:
    stream = litellm.completion(
        model="openai/mock-model",
        api_base=server.url,
        api_key="sk-test",
        messages=RANGE_PROMPT,
        stream=True,
        stream_options={"include_usage": True},
    )

    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.isdigit() and 1 <= int(text) <= 1000
    assert any(getattr(c, "usage", None) and c.usage.completion_tokens == 1 for c in chunks)
    assert server.chat_requests()[-1].body["stream_options"] == {"include_usage": True}


# -- Faults ---------------------------------------------------------------------------


def test_fail_next_status_with_retry_after_then_success(server: SamplingServer) -> None:
    server.fail_next(429, count=2, retry_after=2)

    first, second, third = chat(server), chat(server), chat(server)

    assert first.status_code == second.status_code == 429
    assert first.headers["retry-after"] == "2"
    error = first.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert error["message"]
    assert third.status_code == 200 and contents(third)[0].isdigit()
    assert [r.status for r in server.chat_requests()] == [429, 429, 200]


def test_litellm_retries_an_injected_429(server: SamplingServer) -> None:
    server.fail_next(429, retry_after=0.05)

    response = litellm.completion(
        model="openai/mock-model", api_base=server.url, api_key="sk-test", messages=RANGE_PROMPT
    )

    assert response.choices[0].message.content.isdigit()
    # The OpenAI SDK under litellm retries by itself, honouring retry-after(-ms).
    assert [r.status for r in server.chat_requests()] == [429, 200]


def test_malformed_body(server: SamplingServer) -> None:
    server.fail_next(kind="malformed")

    response = chat(server)

    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert chat(server).json()["choices"]


def test_empty_choices(server: SamplingServer) -> None:
    server.fail_next(kind="empty")

    response = chat(server, n=2)

    assert response.status_code == 200
    assert response.json()["choices"] == []
    assert len(chat(server, n=2).json()["choices"]) == 2


def test_timeout_fault_hangs_until_client_gives_up(server: SamplingServer) -> None:
    server.fail_next(kind="timeout", hang=5)

    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        chat(server, timeout=0.3)
    assert time.monotonic() - started < 2

    assert chat(server).status_code == 200
    statuses = [r.status for r in server.chat_requests()]
    assert statuses[1] == 200 and statuses[0] in (0, 504)  # 0: never answered


def test_short_timeout_fault_answers_504_to_a_patient_client(server: SamplingServer) -> None:
    server.fail_next(kind="timeout", hang=0.2)

    response = chat(server, timeout=5)

    assert response.status_code == 504
    assert server.chat_requests()[0].status == 504


def test_a_hang_works_in_a_process_holding_over_a_thousand_descriptors(
    server: SamplingServer,
) -> None:
    # select() refuses a descriptor past 1023: the server's hang raised ValueError once a
    # long test run held that many (connection pools, stores), and the client saw a reset.
    resource = pytest.importorskip("resource")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("this process may not open 1,200 descriptors")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        server.fail_next(kind="timeout", hang=0.2)
        assert chat(server, timeout=5).status_code == 504
    finally:
        for descriptor in held:
            os.close(descriptor)


def test_stop_releases_a_hanging_request() -> None:
    server = SamplingServer().start()
    server.fail_next(kind="timeout", hang=30)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            chat(server, timeout=10)
        except httpx.HTTPError as error:
            errors.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    server.stop()
    thread.join(timeout=5)

    assert not thread.is_alive()
    assert time.monotonic() - started < 2
    assert len(errors) == 1  # The connection was dropped, not answered.


def test_max_n_rejection_through_litellm() -> None:
    with SamplingServer(max_n=1) as server:
        with pytest.raises(litellm.BadRequestError, match="n must be at most 1"):
            litellm.completion(
                model="openai/mock-model",
                api_base=server.url,
                api_key="sk-test",
                messages=RANGE_PROMPT,
                n=2,
            )
        assert chat(server, n=1).status_code == 200
        assert [r.status for r in server.chat_requests()] == [400, 200]


def test_invalid_requests_get_openai_style_errors(server: SamplingServer) -> None:
    bad_json = httpx.post(f"{server.url}/chat/completions", content=b"{not json")
    no_messages = httpx.post(f"{server.url}/chat/completions", json={"model": "m"})
    unknown = httpx.get(f"{server.root_url}/v2/whatever")

    assert bad_json.status_code == 400 and bad_json.json()["error"]["message"]
    assert no_messages.status_code == 400
    assert "messages" in no_messages.json()["error"]["message"]
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert [r.status for r in server.requests] == [400, 400, 404]
    assert len(server.chat_requests()) == 2


def test_fail_next_validates_its_arguments(server: SamplingServer) -> None:
    with pytest.raises(ValueError, match="kind"):
        server.fail_next(kind="explode")
    with pytest.raises(ValueError, match="status"):
        server.fail_next(200)


# -- Endpoints, log, lifecycle --------------------------------------------------------


def test_endpoint_without_v1_and_models_listing(server: SamplingServer) -> None:
    response = httpx.post(
        f"{server.root_url}/chat/completions",
        json={"model": "other-model", "messages": RANGE_PROMPT},
    )
    models = httpx.get(f"{server.url}/models").json()
    models_root = httpx.get(f"{server.root_url}/models").json()

    assert response.status_code == 200
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} == {"mock-model", "other-model"}
    assert models_root == models
    assert server.chat_requests()[0].path == "/chat/completions"


def test_request_log_redacts_credentials(server: SamplingServer) -> None:
    httpx.post(
        f"{server.url}/chat/completions",
        json={"model": "m", "messages": RANGE_PROMPT},
        headers={"Authorization": "Bearer sk-secret", "api-key": "azure-secret", "X-Trace": "t1"},
    )

    (logged,) = server.requests
    assert logged.method == "POST" and logged.path == "/v1/chat/completions"
    assert logged.status == 200
    assert logged.body["messages"] == RANGE_PROMPT
    assert logged.headers["authorization"] == "***"
    assert logged.headers["api-key"] == "***"
    assert logged.headers["x-trace"] == "t1"
    assert "sk-secret" not in repr(server.requests)


def test_reset_clears_log_and_pending_faults(server: SamplingServer) -> None:
    chat(server)
    server.fail_next(500, count=3)

    server.reset()

    assert server.requests == []
    assert chat(server).status_code == 200


def test_concurrent_requests_are_all_answered_and_logged(server: SamplingServer) -> None:
    server.latency = 0.1
    results: list[str] = []
    lock = threading.Lock()
    client = httpx.Client(timeout=10)  # Shared, so 20 concurrent connections from one pool.

    def call() -> None:
        response = client.post(
            f"{server.url}/chat/completions",
            json={"model": "m", "messages": RANGE_PROMPT, "n": 2},
        )
        with lock:
            results.extend(contents(response))

    threads = [threading.Thread(target=call) for _ in range(20)]
    started = time.monotonic()
    with client:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    elapsed = time.monotonic() - started

    assert len(results) == 40 and len(set(results)) == 40
    assert len(server.chat_requests()) == 20
    assert all(r.status == 200 for r in server.requests)
    assert elapsed < 1.5  # Served in parallel: one by one it would take 20 x 0.1 s.


def test_latency_delays_each_answer(server: SamplingServer) -> None:
    server.latency = 0.2

    started = time.monotonic()
    chat(server)

    assert time.monotonic() - started >= 0.2


def test_lifecycle_start_is_idempotent_and_urls(server: SamplingServer) -> None:
    assert server.start() is server
    assert server.url == server.root_url + "/v1"
    assert server.root_url.startswith("http://127.0.0.1:")

    stopped = SamplingServer()
    with pytest.raises(RuntimeError):
        _ = stopped.url
    stopped.stop()  # Stopping a server that never started is harmless.


def test_main_serves_in_the_foreground_until_interrupted() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "mnimi_adapters.testing", "--port", "0", "--seed", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        base_url = line.split()[line.split().index("at") + 1]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        response = httpx.post(
            f"{base_url}/chat/completions", json={"model": "m", "messages": RANGE_PROMPT}
        )
        assert response.status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- The Responses API ---------------------------------------------------------------------


def responses(server: SamplingServer, **body: Any) -> httpx.Response:
    body.setdefault("model", "mock-model")
    return httpx.post(f"{server.url}/responses", json=body, timeout=5.0)


def test_responses_answer_like_chat_in_the_responses_format(server: SamplingServer) -> None:
    answer = responses(server, input="Pick a number between 1 and 1000.", instructions="Be brief")
    assert answer.status_code == 200
    body = answer.json()
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["id"].startswith("resp_") and body["instructions"] == "Be brief"
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert 1 <= int(message["content"][0]["text"]) <= 1000
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    again = responses(server, input=[{"role": "user", "content": "Pick between 1 and 1000."}])
    assert again.json()["output"][0]["content"][0]["text"] != message["content"][0]["text"]
    assert [r.path for r in server.requests] == ["/v1/responses", "/v1/responses"]
    assert server.chat_requests() == []


def test_responses_call_functions_cut_text_and_refuse_no_input(server: SamplingServer) -> None:
    tool = {"type": "function", **MAGIC_TOOL["function"]}
    called = responses(server, input="What is magic_function(3)?", tools=[tool]).json()
    [call] = called["output"]
    assert call["type"] == "function_call" and call["name"] == "magic_function"
    assert json.loads(call["arguments"]) == {"input": 3}
    result = {"type": "function_call_output", "call_id": call["call_id"], "output": "7"}
    summary = responses(server, input=[call, result], tools=[tool]).json()
    assert "The tool returned 7" in summary["output"][0]["content"][0]["text"]
    cut = responses(server, input="Tell me a story.", max_output_tokens=1).json()
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert responses(server).status_code == 400


# LiteLLM's own stream iterator warns while it serialises its usage: nothing of ours.
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_responses_stream_their_events(server: SamplingServer) -> None:
    streamed = responses(server, input="Tell me something.", stream=True)
    events = [
        json.loads(line.removeprefix("data: "))
        for line in streamed.text.splitlines()
        if line.startswith("data: ")
    ]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == events[-1]["response"]["output"][0]["content"][0]["text"]
    # LiteLLM reads the stream natively for a model it knows to stream.
    final = list(
        litellm.responses(
            model="openai/gpt-4o-mini",
            input="Tell me something.",
            api_base=server.url,
            api_key="sk-test",
            stream=True,
        )
    )[-1]
    assert final.type == "response.completed"
    assert server.requests[-1].body["stream"] is True
