"""Tool calling through the official openai client against the real server with Qwen2.5-Coder-0.5B on the
cpu backend (its template writes Hermes <tool_call> calls): tool_choice none / auto / required / named,
streamed deltas that assemble to the whole response, a tool-result round trip, and the 400s."""

import json

import httpx
import jsonschema
import openai
import pytest

from inference.gguf.loader import read_metadata
from inference.text.tokenizer import Tokenizer

from .conftest import API_KEY, start_server

MODEL = "qwen2.5-coder-0.5b"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z]+$"}},
    "required": ["timezone"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "The time in a zone", "parameters": TIME},
    },
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture(scope="module")
def qwen_server(qwen05_path, tmp_path_factory):
    srv = start_server(
        qwen05_path,
        tmp_path_factory.mktemp("tools"),
        served_model_name=MODEL,
        backend="cpu",
        max_num_seqs=4,
        kv_cache_tokens=4096,
        request_timeout_s=300,
        shutdown_grace_s=5,
    )
    srv.wait_health(200)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(qwen_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{qwen_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(qwen_server):
    with httpx.Client(
        base_url=qwen_server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300
    ) as c:
        yield c


@pytest.fixture(scope="module")
def tool_call_token(qwen05_path) -> int:
    return Tokenizer.from_metadata(read_metadata(qwen05_path)).special_token_id("<tool_call>")


def create(client, **fields):
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 48, "temperature": 0, "seed": 1}
    return client.chat.completions.create(**{**body, **fields})


def assert_valid(call) -> None:
    """An OpenAI tool call whose arguments are a JSON string that validates against its function's schema."""
    assert call.type == "function" and call.id.startswith("call_") and len(call.id) > len("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def complete_calls(choice) -> list:
    """The calls of a choice, less the last when max_tokens cut the output inside it."""
    calls = choice.message.tool_calls or []
    return calls[:-1] if choice.finish_reason == "length" else calls


def test_required_forces_one_valid_call(client):
    r = create(client, tool_choice="required", parallel_tool_calls=False)
    (choice,) = r.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert_valid(call)
    assert json.loads(call.function.arguments)["city"] == "Paris"


def test_a_named_function_is_the_one_called(client):
    """Asked for the weather, the model must still call get_time: the grammar allows no other name."""
    named = {"type": "function", "function": {"name": "get_time"}}
    r = create(client, tool_choice=named, parallel_tool_calls=False)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_time" and r.choices[0].finish_reason == "tool_calls"
    assert_valid(call)


def test_required_calls_are_valid_at_temperature_1(client):
    r = create(client, tool_choice="required", temperature=1.0, seed=3, n=3, max_tokens=40)
    for choice in r.choices:
        assert choice.message.tool_calls, choice.message.content
        assert choice.finish_reason in ("tool_calls", "length")
        for call in complete_calls(choice):
            assert_valid(call)


def test_auto_answers_in_text_when_the_model_does_not_call(client):
    r = create(client, messages=[{"role": "user", "content": "Write a haiku about the sea."}], max_tokens=24)
    (choice,) = r.choices
    assert choice.finish_reason in ("stop", "length") and choice.message.tool_calls is None
    assert choice.message.content


def test_auto_a_call_the_model_begins_is_valid(client, tool_call_token):
    """logit_bias makes the model open a call (this small model does not by itself); at temperature 1 the
    lazy grammar must still make every call it begins valid JSON for one of the tools."""
    bias = {str(tool_call_token): 100}
    r = create(
        client, temperature=1.0, seed=5, n=3, logit_bias=bias, max_tokens=40, parallel_tool_calls=False
    )
    for choice in r.choices:
        assert choice.message.tool_calls, choice.message.content
        for call in complete_calls(choice):
            assert_valid(call)


def test_none_renders_the_tools_and_calls_nothing(client, tool_call_token, http):
    r = create(client, tool_choice="none", logit_bias={str(tool_call_token): 100}, max_tokens=24)
    (choice,) = r.choices
    assert choice.message.tool_calls is None and choice.message.content.startswith("<tool_call>")
    assert choice.finish_reason != "tool_calls"
    plain = http.post("/tokenize", json={"model": MODEL, "messages": ASK}).json()["count"]
    assert r.usage.prompt_tokens > plain + 100  # the tool definitions are in the prompt


def assemble(stream) -> tuple[list[dict], str | None, str]:
    """The calls, finish_reason and content a stream assembles to; checks OpenAI's delta rules."""
    calls: list[dict] = []
    finish, content = None, ""
    for chunk in stream:
        (choice,) = chunk.choices
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or ():
            if d.index == len(calls):  # a call's first delta: index, id, type, name, empty arguments
                assert d.id.startswith("call_") and d.type == "function" and d.function.arguments == ""
                calls.append({"id": d.id, "name": d.function.name, "arguments": ""})
            else:
                assert d.index == len(calls) - 1 and d.id is None and d.function.name is None
                calls[-1]["arguments"] += d.function.arguments
        finish = choice.finish_reason or finish
    return calls, finish, content


@pytest.mark.parametrize("choice", [{"type": "function", "function": {"name": "get_time"}}])
def test_stream_assembles_to_the_non_streamed_call(client, choice):
    whole = create(client, tool_choice=choice, parallel_tool_calls=False, seed=7)
    calls, finish, content = assemble(
        create(client, tool_choice=choice, parallel_tool_calls=False, seed=7, stream=True)
    )
    expected = [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls]
    assert [(c["name"], c["arguments"]) for c in calls] == expected
    assert finish == whole.choices[0].finish_reason == "tool_calls" and content == ""
    assert len([c for c in calls if len(c["arguments"]) > 0]) == len(calls)


ROUND_TRIP = [
    *ASK,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc123",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_abc123", "content": '{"temperature": 17, "sky": "light rain"}'},
]


def test_the_clients_own_message_goes_back_with_the_result(client):
    """The README's flow: the response's message object appended as it is, then the tool's result."""
    first = create(client, tool_choice="required", parallel_tool_calls=False, max_tokens=40)
    message = first.choices[0].message
    (call,) = message.tool_calls
    messages = [*ASK, message, {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 17}'}]
    r = create(client, messages=messages, max_tokens=16)
    assert r.choices[0].message.content or r.choices[0].message.tool_calls
    assert r.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens


def test_a_tool_result_round_trip(client, http):
    r = create(client, messages=ROUND_TRIP, tool_choice="none", max_tokens=24)
    (choice,) = r.choices
    assert (
        choice.finish_reason in ("stop", "length")
        and choice.message.content
        and not choice.message.tool_calls
    )
    ids = http.post("/tokenize", json={"model": MODEL, "messages": ROUND_TRIP}).json()["tokens"]
    prompt = http.post("/detokenize", json={"model": MODEL, "tokens": ids}).json()["prompt"]
    # the call as the template writes it (arguments as an object, not a JSON string), then the result
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
    result = '<tool_response>\n{"temperature": 17, "sky": "light rain"}\n</tool_response>'
    assert call in prompt and result in prompt and prompt.index(call) < prompt.index(result)


BAD_NAME = [{"type": "function", "function": {"name": "get weather"}}]
BAD_SCHEMA = [
    {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "wat"}}}},
    }
]
NOT_OBJECT = [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"tools": BAD_NAME}, "tools[0].function.name", "matching regex"),
        ({"tools": BAD_SCHEMA}, "tools[0].function.parameters", "Invalid type: wat"),
        ({"tools": NOT_OBJECT}, "tools[0].function.parameters", "must be a JSON Schema of an object"),
        ({"tools": TOOLS + TOOLS[:1]}, "tools[2].function.name", "appears twice"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "not among the tools",
        ),
        ({"tools": None, "tool_choice": "required"}, "tool_choice", "only allowed when tools are specified"),
        ({"tool_choice": "sometimes"}, "tool_choice", "Invalid enum value 'sometimes'"),
        (
            {
                "response_format": {"type": "json_object"},
                "messages": [{"role": "user", "content": "JSON please"}],
            },
            "response_format",
            "cannot constrain the output",
        ),
        ({"structured_outputs": {"regex": "[a-z]+"}}, "structured_outputs", "cannot constrain the output"),
        ({"grammar": 'root ::= "yes"'}, "grammar", "cannot constrain the output"),
        (
            {
                "messages": [
                    *ROUND_TRIP[:1],
                    {
                        **ROUND_TRIP[1],
                        "tool_calls": [
                            {
                                **ROUND_TRIP[1]["tool_calls"][0],
                                "function": {"name": "get_weather", "arguments": "{city"},
                            }
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
            "not valid JSON",
        ),
    ],
)
def test_bad_tool_requests_are_400_naming_the_param(http, fields, param, words):
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 4, **fields}
    body = {k: v for k, v in body.items() if v is not None}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_tools_are_in_the_openapi_schema(http):
    schemas = http.get("/schema/openapi.json").json()["components"]["schemas"]
    fields = schemas["ChatCompletionRequest"]["properties"]
    assert {"tools", "tool_choice", "parallel_tool_calls"} <= set(fields)
    assert "FunctionDefinition" in json.dumps(schemas) and "NamedToolChoice" in json.dumps(schemas)
