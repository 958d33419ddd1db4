"""POST /v1/chat/completions through the official openai client (and httpx for the raw stream)."""

import json

import jsonschema
import openai
import pydantic
import pytest

from inference.gguf.loader import read_metadata
from inference.text.grammar import GrammarSpec, GrammarVocabulary
from inference.text.tokenizer import Tokenizer

from .conftest import MODEL, sse_data

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def chat(client, messages=MESSAGES, max_tokens=6, **extra):
    return client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0, **extra
    )


def prompt_tokens(http, messages=MESSAGES) -> int:
    return http.post("/tokenize", json={"messages": messages}).json()["count"]


def test_response_shape_and_usage(client, http):
    r = chat(client)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert r.system_fingerprint.startswith("fp_")
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length" and choice.logprobs is None
    assert r.usage.prompt_tokens == prompt_tokens(http)
    assert r.usage.completion_tokens == 6 and r.usage.total_tokens == r.usage.prompt_tokens + 6
    raw = http.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 1, "temperature": 0}
    ).json()
    assert set(raw) == {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
    assert set(raw["choices"][0]) == {"index", "message", "logprobs", "finish_reason"}
    first_token = chat(client, max_tokens=1).choices[0].message.content
    assert first_token and r.choices[0].message.content.startswith(first_token)
    assert raw["choices"][0]["message"] == {"role": "assistant", "content": first_token, "refusal": None}


def test_finishes_with_stop_at_end_of_turn(client):
    r = chat(client, messages=[{"role": "user", "content": "Say OK."}], max_tokens=64)
    assert r.choices[0].finish_reason == "stop"
    assert "<|im_end|>" not in r.choices[0].message.content
    assert r.usage.completion_tokens <= 64


def test_max_completion_tokens(client):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_stream_equals_non_stream_and_follows_the_rules(client, http):
    whole = chat(client, max_tokens=8)
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        data = sse_data(r)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:-1])
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert content == whole.choices[0].message.content
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]
    assert finishes[-1] == whole.choices[0].finish_reason and all(f is None for f in finishes[:-1])
    assert chunks[-1]["choices"] == []
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")  # not cached_tokens: order-dependent
    assert {k: chunks[-1]["usage"][k] for k in counts} == whole.usage.model_dump(include=set(counts))


def test_stream_through_the_client(client):
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks)
        == chat(client, max_tokens=5).choices[0].message.content
    )


def test_n_choices(client):
    r = chat(client, n=3, max_tokens=4)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) == 1  # greedy: all equal
    assert r.usage.completion_tokens == 12


def test_stream_n_choices_each_get_role_and_finish(client):
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0, n=2, stream=True
        )
    )
    roles = [c.choices[0].index for c in chunks if c.choices[0].delta.role]
    finishes = [c.choices[0].index for c in chunks if c.choices[0].finish_reason]
    assert sorted(roles) == [0, 1] and sorted(finishes) == [0, 1]
    for i in (0, 1):
        last = max(k for k, c in enumerate(chunks) if c.choices[0].index == i)
        assert chunks[last].choices[0].finish_reason == "length"


def test_logprobs(client):
    r = chat(client, logprobs=True, top_logprobs=3, max_tokens=5)
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert [x.logprob for x in t.top_logprobs] == sorted(
            (x.logprob for x in t.top_logprobs), reverse=True
        )


def test_logprobs_stream_equal_non_stream(client):
    whole = chat(client, logprobs=True, top_logprobs=2, max_tokens=4).choices[0].logprobs.content
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=4,
            temperature=0,
            logprobs=True,
            top_logprobs=2,
            stream=True,
        )
    )
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in whole]


def test_logprobs_without_top(client):
    content = chat(client, logprobs=True, max_tokens=2).choices[0].logprobs.content
    assert len(content) == 2 and all(t.top_logprobs == [] for t in content)


def test_system_developer_assistant_tool_and_parts(client, http):
    messages = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]},
        {"role": "assistant", "content": "Hi!"},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        {"role": "user", "content": "Thanks"},
    ]
    r = chat(client, messages=messages, max_tokens=2)
    assert r.usage.prompt_tokens == prompt_tokens(http, messages)


def test_seed_stop_penalties_and_extras(client):
    def sampled(seed=99):
        return client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=6,
            temperature=1.0,
            seed=seed,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            top_p=0.9,
            extra_body={"top_k": 50, "min_p": 0.05, "repetition_penalty": 1.1},
        )

    a, b = sampled(), sampled()
    assert a.choices[0].message.content == b.choices[0].message.content
    others = {sampled(seed).choices[0].message.content for seed in (100, 101, 102)}
    assert others - {a.choices[0].message.content}, (
        "every seed gives seed 99's text: seed or temperature ignored"
    )
    text = chat(client, max_tokens=8).choices[0].message.content
    stop = text[len(text) // 2 :][:2]
    r = chat(client, max_tokens=8, stop=stop)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == text[: text.index(stop)]


def test_response_format_text_and_logit_bias(client, http):
    (token,) = http.post("/tokenize", json={"prompt": " Paris"}).json()["tokens"]
    r = chat(client, max_tokens=2, response_format={"type": "text"}, logit_bias={str(token): 100})
    assert r.choices[0].message.content == " Paris Paris"


JSON_MESSAGES = [
    {"role": "system", "content": "You answer in JSON."},
    {"role": "user", "content": "Give the capital and population of France as a JSON object."},
]


def test_json_object_mode_through_the_client(client, smollm2_path):
    """response_format json_object: each of n sampled choices that stops is one JSON object; greedy
    streamed text equals the non-streamed text."""
    r = client.chat.completions.create(
        model=MODEL,
        messages=JSON_MESSAGES,
        max_tokens=64,
        n=4,
        temperature=1.0,
        seed=11,
        response_format={"type": "json_object"},
    )
    stopped = [c.message.content for c in r.choices if c.finish_reason == "stop"]
    assert len(stopped) >= 2 and all(isinstance(json.loads(text), dict) for text in stopped)
    greedy = dict(model=MODEL, messages=JSON_MESSAGES, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**greedy, response_format={"type": "json_object"})
    stream = client.chat.completions.create(**greedy, response_format={"type": "json_object"}, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == whole.choices[0].message.content
    assert json_prefix(streamed, smollm2_path)  # cut by max_tokens, yet a JSON object so far


def json_prefix(text: str, model_path) -> bool:
    """text could still become a JSON object: the json_object grammar takes every one of its tokens."""
    tok = Tokenizer.from_metadata(read_metadata(model_path))
    c = GrammarVocabulary(tok).constraint(GrammarSpec(kind="json_object"))
    for t in tok.encode(text, add_bos=False):
        if not c.allowed()[t]:
            return False
        c.advance(t)
    return True


class Capital(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=24)
    country: str = pydantic.Field(max_length=24)
    population: int = pydantic.Field(ge=0, le=100_000_000)  # unbounded, SmolLM2 repeats a digit forever


def test_parse_with_a_pydantic_model(client):
    """client.chat.completions.parse: the schema goes out as json_schema (strict), the answer comes
    back as a Capital."""
    r = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
        response_format=Capital,
        max_tokens=120,
        temperature=0,
    )
    (choice,) = r.choices
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(choice.message.parsed, Capital)
    assert Capital.model_validate_json(choice.message.content) == choice.message.parsed


STRICT_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "pattern": "^[A-Z][a-z]{1,15}$"},
        "population": {"type": "integer", "minimum": 1000, "maximum": 40000000},
        "kind": {"type": "string", "enum": ["capital", "city", "town"]},
        "districts": {
            "type": "array",
            "items": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": 20},
                "minItems": 1,
                "maxItems": 3,
            },
            "maxItems": 3,
        },
        "tags": {"type": "array", "items": {"enum": ["old", "big", "coastal"]}, "maxItems": 3},
    },
    "required": ["city", "population", "kind", "districts", "tags"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_strict_schema_outputs_always_validate(client, seed):
    """temperature 1.0, n = 4: every choice that finishes with "stop" validates against a schema with
    nested arrays, enums, a string pattern and integer bounds (jsonschema is the judge)."""
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": STRICT_SCHEMA, "strict": True},
        },
        max_tokens=160,
        n=4,
        temperature=1.0,
        seed=seed,
    )
    stopped = [c.message.content for c in r.choices if c.finish_reason == "stop"]
    assert len(stopped) >= 2, [c.message.content for c in r.choices]
    for text in stopped:
        jsonschema.validate(json.loads(text), STRICT_SCHEMA)


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "foo"}, "Invalid type: foo"),
        ({"type": "integer", "minimum": 5, "maximum": 2}, "minimum (5) is greater than maximum (2)"),
        ({"type": "string", "pattern": "("}, "unclosed group"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "does not exist"),
    ],
)
def test_a_schema_the_library_rejects_is_a_400(client, schema, reason):
    fmt = {"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, response_format=fmt)
    body = err.value.body
    assert err.value.status_code == 400 and body["param"] == "response_format", body
    assert reason in body["message"], body


def test_usage_reports_cached_prompt_tokens(client):
    """OpenAI's usage.prompt_tokens_details.cached_tokens: 0 for a new prompt; the prefix cache's
    full blocks when the same conversation comes again (n = 2 choices count them once), streamed too."""
    messages = [
        {"role": "system", "content": "You are the help desk of a small library in a seaside town. " * 4},
        {"role": "user", "content": "When do you open?"},
    ]
    first = chat(client, messages=messages, max_tokens=3)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    second = chat(client, messages=messages, max_tokens=3, n=2)
    expected = (first.usage.prompt_tokens - 1) // 16 * 16  # the test server's block_size is 16
    assert second.usage.prompt_tokens_details.cached_tokens == expected > 0
    assert second.choices[0].message.content == first.choices[0].message.content
    usage = {"include_usage": True}
    *_, last = list(chat(client, messages=messages, max_tokens=3, stream=True, stream_options=usage))
    assert last.usage.prompt_tokens_details.cached_tokens == expected
