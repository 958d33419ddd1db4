"""Invalid requests: the right status, the OpenAI error envelope naming the parameter; still serving after."""

import httpx
import openai
import pytest

from .conftest import API_KEY, MODEL

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MSG = [{"role": "user", "content": "Hi"}]


def chat(**fields):
    return {"model": MODEL, "messages": MSG, "max_tokens": 2, **fields}


def completion(**fields):
    return {"model": MODEL, "prompt": "Hi", "max_tokens": 2, **fields}


# OpenAI's error `type` for each status these cases produce
OPENAI_TYPES = {400: "invalid_request_error", 404: "invalid_request_error"}

# (path, JSON body, status, param, code or None, words in the message)
CASES = [
    (CHAT, chat(temprature=0.5), 400, "temprature", "unknown_parameter", "unrecognized request argument"),
    (COMPLETIONS, completion(foo=1), 400, "foo", "unknown_parameter", "unrecognized"),
    (CHAT, chat(n="2"), 400, "n", "invalid_value", "Expected `int | null`, got `str`"),
    (CHAT, chat(n=0), 400, "n", "invalid_value", ">= 1"),
    (CHAT, chat(n=9), 400, "n", None, "max_num_seqs = 8"),
    (CHAT, chat(temperature=2.5), 400, "temperature", "invalid_value", "<= 2.0"),
    (COMPLETIONS, completion(temperature=-0.1), 400, "temperature", "invalid_value", ">= 0.0"),
    (CHAT, chat(top_p=0), 400, "top_p", "invalid_value", "> 0.0"),
    (COMPLETIONS, completion(top_p=1.5), 400, "top_p", "invalid_value", "<= 1.0"),
    (CHAT, chat(max_tokens=0), 400, "max_tokens", "invalid_value", ">= 1"),
    (COMPLETIONS, completion(max_tokens=-5), 400, "max_tokens", "invalid_value", ">= 1"),
    (CHAT, chat(max_completion_tokens=3), 400, "max_tokens", None, "not both"),
    (COMPLETIONS, completion(logprobs=6), 400, "logprobs", "invalid_value", "<= 5"),
    (CHAT, chat(logprobs=True, top_logprobs=21), 400, "top_logprobs", "invalid_value", "<= 20"),
    (CHAT, chat(top_logprobs=2), 400, "top_logprobs", None, "requires logprobs"),
    (
        CHAT,
        chat(messages=[*MSG, {"role": "assistant"}, *MSG]),
        400,
        "messages[1].content",
        None,
        "needs content or tool_calls",
    ),
    (CHAT, chat(presence_penalty=2.5), 400, "presence_penalty", "invalid_value", "<= 2.0"),
    (COMPLETIONS, completion(frequency_penalty=-3), 400, "frequency_penalty", "invalid_value", ">= -2.0"),
    (CHAT, chat(logit_bias={"paris": 5}), 400, "logit_bias", None, "not a token id"),
    (CHAT, chat(logit_bias={"5": 200}), 400, "logit_bias", None, "logit_bias[5] = 200.0 is greater"),
    (COMPLETIONS, completion(stop=5), 400, "stop", "invalid_value", "Expected `str | array | null`"),
    (COMPLETIONS, completion(stop=["x"] * 17), 400, "stop", "invalid_value", "length <= 16"),
    (CHAT, chat(seed=1.5), 400, "seed", "invalid_value", "Expected `int | null`, got `float`"),
    (COMPLETIONS, completion(echo="yes"), 400, "echo", "invalid_value", "Expected `bool | null`"),
    (CHAT, chat(top_k=-2), 400, "top_k", "invalid_value", ">= -1"),
    (CHAT, chat(min_p=1.5), 400, "min_p", "invalid_value", "<= 1.0"),
    (COMPLETIONS, completion(repetition_penalty=0), 400, "repetition_penalty", "invalid_value", "> 0.0"),
    (CHAT, chat(messages=[]), 400, "messages", "invalid_value", "length >= 1"),
    (
        CHAT,
        chat(messages=[{"role": "robot", "content": "x"}]),
        400,
        "messages[0].role",
        "invalid_value",
        "Invalid value",
    ),
    (
        CHAT,
        chat(messages=[{"role": "user"}]),
        400,
        "messages[0].content",
        "invalid_value",
        "missing required field",
    ),
    (
        CHAT,
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        "messages[0].content[0]",
        "unsupported_content",
        "image content is not supported",
    ),
    (CHAT, {"messages": MSG}, 400, "model", "invalid_value", "missing required field `model`"),
    (COMPLETIONS, {"model": MODEL}, 400, "prompt", "invalid_value", "missing required field `prompt`"),
    (COMPLETIONS, completion(prompt=["a", 1]), 400, "prompt", None, "not a mix"),
    (COMPLETIONS, completion(prompt=[49152]), 400, "prompt", None, "outside the vocabulary"),
    (COMPLETIONS, completion(prompt=""), 400, "prompt", None, "must not be empty"),
    (COMPLETIONS, completion(suffix="x"), 400, "suffix", "unsupported_parameter", "not supported"),
    (COMPLETIONS, completion(best_of=2), 400, "best_of", "unsupported_parameter", "not supported"),
    (
        CHAT,
        chat(tools=[{"type": "function", "function": {"name": "f"}}]),
        400,
        "tools",
        None,
        "chat template does not render tool definitions",
    ),
    (CHAT, chat(tool_choice="auto"), 400, "tool_choice", None, "only allowed when tools are specified"),
    (CHAT, chat(functions=[{"name": "f"}]), 400, "functions", "unsupported_parameter", "not supported"),
    (
        CHAT,
        chat(audio={"voice": "alloy", "format": "wav"}),
        400,
        "audio",
        "unsupported_parameter",
        "audio is not supported by this server",
    ),
    (
        CHAT,
        chat(response_format={"type": "json_object"}),
        400,
        "messages",
        None,
        "must contain the word 'json'",
    ),
    (
        CHAT,
        chat(
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}
        ),
        400,
        "response_format",
        None,
        "json_schema grammar is invalid: Invalid type: foo",
    ),
    (
        CHAT,
        chat(stream_options={"include_usage": True}),
        400,
        "stream_options",
        None,
        "only allowed when stream",
    ),
    (
        COMPLETIONS,
        completion(max_tokens=8192),
        400,
        "prompt",
        "context_length_exceeded",
        "This model's maximum context length is 8192 tokens, however you requested 8193 tokens",
    ),
    (
        CHAT,
        chat(max_tokens=None, max_completion_tokens=8190),
        400,
        "messages",
        "context_length_exceeded",
        "This model's maximum context length is 8192 tokens. However, you requested",
    ),
    (CHAT, chat(model="gpt-4o"), 404, "model", "model_not_found", "The model `gpt-4o` does not exist"),
    (
        "/tokenize",
        {"prompt": "x", "messages": MSG},
        400,
        "prompt",
        None,
        "exactly one of prompt and messages",
    ),
    ("/detokenize", {"tokens": [49152]}, 400, "tokens", None, "outside the vocabulary"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens[0]", "invalid_value", ">= 0"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code", "words"),
    CASES,
    ids=[f"{i}-{c[3]}" for i, c in enumerate(CASES)],
)
def test_invalid_request(http, path, body, status, param, code, words):
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert words in error["message"]
    assert error["type"] == OPENAI_TYPES[status]
    assert "Traceback" not in r.text


RAW_CASES = [
    # (method, path, headers, content, status, words)
    ("POST", CHAT, {"content-type": "application/json"}, b'{"model": ', 400, "not valid JSON"),
    ("POST", CHAT, {"content-type": "application/json"}, b"[1, 2]", 400, "Expected `object`, got `array`"),
    ("POST", CHAT, {"content-type": "application/json"}, b"", 400, "body is empty"),
    ("POST", CHAT, {"content-type": "text/plain"}, b"{}", 415, "Content-Type must be application/json"),
    ("POST", COMPLETIONS, {}, b'{"model": "x"}', 415, "got none"),
    (
        "POST",
        "/v1/embeddings",
        {"content-type": "application/json"},
        b"{}",
        404,
        "Invalid URL (POST /v1/embeddings)",
    ),
    ("GET", COMPLETIONS, {}, b"", 405, "Method GET is not allowed"),
    ("DELETE", "/v1/models", {}, b"", 405, "Method DELETE is not allowed"),
    ("GET", "/v1/models/gpt-4o", {}, b"", 404, "The model `gpt-4o` does not exist"),
]


@pytest.mark.parametrize(("method", "path", "headers", "content", "status", "words"), RAW_CASES)
def test_invalid_http(http, method, path, headers, content, status, words):
    r = http.request(method, path, headers=headers, content=content)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    if status == 405:
        assert "allow" in r.headers


def test_body_over_the_limit_is_413(http):
    big = b'{"model": "' + b"x" * (4 * 1024 * 1024 + 10) + b'"}'
    r = http.post(CHAT, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "too large" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("auth", "code"),
    [(None, "missing_api_key"), ("Bearer nope", "invalid_api_key"), (f"Basic {API_KEY}", "missing_api_key")],
)
def test_api_key_required(server, auth, code):
    headers = {"Authorization": auth} if auth else {}
    r = httpx.post(f"{server.url}{CHAT}", json=chat(), headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == code
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 401


def test_health_and_metrics_are_public(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MSG, temperature=5)
    assert info.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MSG)
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_still_serving_after_the_errors(client):
    r = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2, temperature=0)
    assert r.usage.completion_tokens == 2
