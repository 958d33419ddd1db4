"""Protocol decoding and translation into AdapterForwardConfig, with SmolLM2's real tokenizer and template."""

import functools
import json

import msgspec
import pytest

from app.errors import APIError, request_error_from_msgspec
from app.protocol import ChatCompletionRequest, CompletionRequest
from app.serve import served_model
from app.settings import Settings
from app.translate import ServedModel, chat_plan, completion_plan
from inference.errors import ContextLengthError, RequestError
from inference.text.grammar import GrammarSpec


@functools.cache
def _served(path) -> ServedModel:
    """The model as `gguf-serve serve` builds it (app.serve.served_model), from these settings."""
    settings = Settings(
        model=str(path), served_model_name="smollm2-135m", max_num_seqs=8, kv_cache_tokens=16384
    )
    return served_model(settings, path)


@pytest.fixture(scope="module")
def model(smollm2_path) -> ServedModel:
    return _served(smollm2_path)


def completion(**fields) -> CompletionRequest:
    return msgspec.json.decode(json.dumps({"model": "smollm2-135m", **fields}), type=CompletionRequest)


def chat(**fields) -> ChatCompletionRequest:
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], **fields}
    return msgspec.json.decode(json.dumps(body), type=ChatCompletionRequest)


def decode_error(body: dict, type_=ChatCompletionRequest) -> RequestError:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.json.decode(json.dumps(body), type=type_)
    return request_error_from_msgspec(info.value)


# -- decoding errors name the parameter ------------------------------------------------------------

MSG = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "m", "messages": MSG, "temprature": 1}, "temprature", "unrecognized request argument"),
        ({"model": "m", "messages": MSG, "n": "2"}, "n", "Expected `int | null`, got `str`"),
        ({"model": "m", "messages": MSG, "temperature": 3}, "temperature", "<= 2.0"),
        (
            {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            "Invalid value",
        ),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content", "missing required field"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x", "foo": 1}]},
            "messages[0].foo",
            "unrecognized",
        ),
        ({"model": "m"}, "messages", "missing required field"),
        ({"messages": MSG}, "model", "missing required field"),
        ({"model": "m", "messages": []}, "messages", "length >= 1"),
        ({"model": "m", "messages": MSG, "top_logprobs": 21}, "top_logprobs", "<= 20"),
        ({"model": "m", "messages": MSG, "stop": 5}, "stop", "Expected `str | array | null`"),
        (
            {"model": "m", "messages": MSG, "stream_options": {"include_usage": True, "x": 1}},
            "stream_options.x",
            "unrecognized request argument supplied: stream_options.x",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            "messages[0].content[0].type",
            "Invalid value",
        ),
    ],
)
def test_decoding_errors_name_the_parameter(body, param, words):
    err = request_error_from_msgspec(_decode_error(body))
    assert err.param == param
    assert words in err.message


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    [
        (ChatCompletionRequest, {"messages": MSG, "n": None, "stream": None, "logprobs": None}, (1, False)),
        (CompletionRequest, {"prompt": "x", "n": None, "stream": None, "echo": None}, (1, False)),
        (CompletionRequest, {"prompt": "x", "n": 3, "stream": True, "echo": True}, (3, True)),
    ],
)
def test_nullable_openai_fields_take_their_default(kind, body, expected):
    """OpenAI documents n, stream, echo and chat logprobs as "or null"; the openai client sends None so."""
    req = msgspec.json.decode(json.dumps({"model": "m", **body}), type=kind)
    flag = req.logprobs if kind is ChatCompletionRequest else req.echo
    assert (req.n, req.stream) == expected and flag is expected[1]


def _decode_error(body):
    try:
        msgspec.json.decode(json.dumps(body), type=ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        return exc
    raise AssertionError("decoded")


def test_invalid_json_is_a_decode_error():
    with pytest.raises(msgspec.DecodeError) as info:
        msgspec.json.decode(b'{"model": ', type=CompletionRequest)
    err = request_error_from_msgspec(info.value)
    assert err.param is None and "not valid JSON" in err.message


# -- completions -----------------------------------------------------------------------------------


def test_string_prompt(model):
    plan = completion_plan(completion(prompt="Hello world", max_tokens=5, temperature=0), model, "cmpl-x")
    (cfg,) = plan.configs
    assert cfg.request_id == "cmpl-x-0"
    assert cfg.prompt_ids == (19556, 905)
    assert cfg.max_tokens == 5 and cfg.sampling.temperature == 0.0
    assert plan.echo is None and plan.logprobs is None


@pytest.mark.parametrize(
    ("prompt", "ids"),
    [
        (["Hello world", "Hello"], [(19556, 905), (19556,)]),
        ([19556, 905], [(19556, 905)]),
        ([[19556], [905, 905]], [(19556,), (905, 905)]),
    ],
)
def test_prompt_forms(model, prompt, ids):
    plan = completion_plan(completion(prompt=prompt, n=2), model, "cmpl-y")
    assert [c.prompt_ids for c in plan.configs] == ids
    assert [c.request_id for c in plan.configs] == [f"cmpl-y-{i}" for i in range(len(ids))]
    assert all(c.n == 2 for c in plan.configs)


def test_defaults_follow_openai(model):
    cfg = completion_plan(completion(prompt="x"), model, "c").configs[0]
    s = cfg.sampling
    assert cfg.max_tokens == 16 and cfg.n == 1 and cfg.stop == ()
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty) == (1.0, 1.0, 0, 0.0, 1.0)
    assert (s.presence_penalty, s.frequency_penalty, s.logit_bias, s.seed, s.logprobs) == (
        0.0,
        0.0,
        {},
        None,
        None,
    )


def test_every_sampling_parameter_is_carried(model):
    req = completion(
        prompt="x",
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"905": -100, "42": 5},
        seed=7,
        logprobs=3,
        echo=True,
        stop=["\n", "END"],
        max_tokens=9,
        user="u1",
        ignore_eos=True,
        stop_token_ids=[2],
    )
    plan = completion_plan(req, model, "c")
    cfg = plan.configs[0]
    s = cfg.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty) == (0.5, 0.9, 40, 0.05, 1.1)
    assert (s.presence_penalty, s.frequency_penalty, s.seed, s.logprobs) == (0.5, -0.5, 7, 3)
    assert s.logit_bias == {905: -100.0, 42: 5.0}
    assert cfg.stop == ("\n", "END") and cfg.max_tokens == 9 and cfg.prompt_logprobs == 3
    assert cfg.ignore_eos and cfg.stop_token_ids == (2,)
    assert plan.echo == ("x",) and plan.logprobs == 3


def test_negative_seed_maps_into_range(model):
    s = completion_plan(completion(prompt="x", seed=-1), model, "c").configs[0].sampling
    assert s.seed == (1 << 63) - 1


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"prompt": "x", "suffix": "y"}, "suffix", "not supported"),
        ({"prompt": "x", "best_of": 2}, "best_of", "not supported"),
        ({"prompt": []}, "prompt", "must not be empty"),
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": ["a", 1]}, "prompt", "not a mix"),
        ({"prompt": [[]]}, "prompt[0]", "must not be empty"),
        ({"prompt": [49152]}, "prompt", "outside the vocabulary"),
        ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias", "not a token id"),
        ({"prompt": "x", "logit_bias": {"99999": 1}}, "logit_bias", "outside the vocabulary"),
        ({"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias", "logit_bias[5] = 101.0 is greater"),
        ({"prompt": "x", "stop": ""}, "stop", "empty"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", "only allowed"),
        ({"prompt": ["a", "b", "c"], "n": 3}, "n", "max_num_seqs"),
        ({"prompt": "x", "max_tokens": 8192}, "prompt", "maximum context length is 8192 tokens"),
        ({"prompt": "x", "stop_token_ids": [60000]}, "stop_token_ids", "outside the vocabulary"),
    ],
)
def test_completion_request_errors(model, fields, param, words):
    with pytest.raises(RequestError) as info:
        completion_plan(completion(**fields), model, "c")
    assert info.value.param == param
    assert words in info.value.message


def test_context_error_has_openai_code_and_wording(model):
    with pytest.raises(ContextLengthError) as info:
        completion_plan(completion(prompt="Hello world", max_tokens=8191), model, "c")
    assert info.value.code == "context_length_exceeded"
    assert info.value.message == (
        "This model's maximum context length is 8192 tokens, however you requested 8193 tokens "
        "(2 in your prompt; 8191 for the completion). Please reduce your prompt; or completion length."
    )


def test_unknown_model_is_404(model, smollm2_path):
    with pytest.raises(APIError) as info:
        completion_plan(completion(prompt="x", model="gpt-4"), model, "c")
    assert (info.value.status, info.value.param, info.value.code) == (404, "model", "model_not_found")
    completion_plan(completion(prompt="x", model=str(smollm2_path)), model, "c")  # the --model value


@pytest.mark.parametrize(
    ("model_setting", "served_name", "name", "aliases"),
    [
        ("smollm2-135m", "", "smollm2-135m", set()),  # a registry key is the name
        ("{link}", "", "my-model", {"{link}"}),  # a file: its stem, and the path as given
        ("{link}", "team/model", "team/model", {"{link}", "my-model"}),  # served_model_name wins
    ],
)
def test_model_names_and_aliases(smollm2_path, tmp_path, model_setting, served_name, name, aliases):
    link = tmp_path / "my-model.gguf"
    link.symlink_to(smollm2_path)
    settings = Settings(model=model_setting.format(link=link), served_model_name=served_name)
    served = served_model(settings, link if model_setting == "{link}" else smollm2_path)
    assert served.name == name
    assert served.aliases == {a.format(link=link) for a in aliases}
    for accepted in (None, name, *served.aliases):
        served.check_name(accepted)
    for refused in {"gpt-4", "", "smollm2-135m", str(smollm2_path), "my-model", str(link)} - {
        name,
        *served.aliases,
    }:
        with pytest.raises(APIError) as info:
            served.check_name(refused)
        assert info.value.status == 404 and f"This server serves `{name}`" in info.value.message


# -- chat ------------------------------------------------------------------------------------------


def test_chat_renders_the_template(model):
    plan = chat_plan(
        chat(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ]
        ),
        model,
        "chatcmpl-1",
    )
    text = model.tokenizer.decode(list(plan.config.prompt_ids))
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert plan.config.prompt_ids[0] == model.tokenizer.special_token_id("<|im_start|>")
    assert plan.config.max_tokens == 8192 - len(
        plan.config.prompt_ids
    )  # no max_tokens: the rest of the context
    assert plan.top_logprobs is None


def test_developer_role_renders_as_system(model):
    a = chat_plan(chat(messages=[{"role": "developer", "content": "Be brief."}, *MSG]), model, "a")
    b = chat_plan(chat(messages=[{"role": "system", "content": "Be brief."}, *MSG]), model, "b")
    assert a.config.prompt_ids == b.config.prompt_ids


def test_chat_parameters(model):
    plan = chat_plan(
        chat(
            max_completion_tokens=7,
            logprobs=True,
            top_logprobs=4,
            n=2,
            seed=3,
            stop="x",
            response_format={"type": "text"},
            stream=True,
            stream_options={"include_usage": True},
        ),
        model,
        "c",
    )
    cfg = plan.config
    assert (cfg.max_tokens, cfg.n, cfg.sampling.seed, cfg.stop, cfg.sampling.logprobs) == (7, 2, 3, ("x",), 4)
    assert plan.top_logprobs == 4 and plan.include_usage and plan.stream


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "Reply in JSON."}],
        [{"role": "system", "content": "Answer as json"}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": [{"type": "text", "text": "a Json object"}]}],
    ],
)
def test_chat_json_object_mode(model, messages):
    plan = chat_plan(chat(messages=messages, response_format={"type": "json_object"}), model, "c")
    assert plan.config.grammar == GrammarSpec(kind="json_object", param="response_format")
    assert chat_plan(chat(messages=messages), model, "c").config.grammar is None
    text = chat(messages=messages, response_format={"type": "text"})
    assert chat_plan(text, model, "c").config.grammar is None


def test_chat_json_schema_becomes_a_grammar(model):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "a_b-1", "schema": schema, "strict": True}}
    plan = chat_plan(chat(response_format=fmt), model, "c")
    assert plan.config.grammar.kind == "json_schema" and json.loads(plan.config.grammar.source) == schema
    no_schema = {"type": "json_schema", "json_schema": {"name": "any"}}  # any JSON value
    assert chat_plan(chat(response_format=no_schema), model, "c").config.grammar.source == "{}"


ARITHMETIC_GBNF = 'root ::= term ("+" term)*\nterm ::= [0-9]+'


@pytest.mark.parametrize(
    ("body", "spec"),
    [
        ({"structured_outputs": {"regex": "[a-z]+"}}, GrammarSpec(kind="regex", source="[a-z]+")),
        ({"structured_outputs": {"choice": ["a", "b"]}}, GrammarSpec(kind="choice", source='["a","b"]')),
        ({"structured_outputs": {"json": '{"type":"integer"}'}},
         GrammarSpec(kind="json_schema", source='{"type":"integer"}')),
        ({"structured_outputs": {"json": True, "disable_any_whitespace": True}},
         GrammarSpec(kind="json_schema", source='{"x-guidance":{"whitespace_flexible":false}}')),
        ({"structured_outputs": {"json_object": True}}, GrammarSpec(kind="json_object")),
        ({"structured_outputs": {"json_object": True, "whitespace_pattern": " ?"}}, GrammarSpec(
            kind="json_schema", source='{"type":"object","x-guidance":{"whitespace_pattern":" ?"}}')),
        ({"structured_outputs": {"grammar": "start: /[0-9]+/"}},
         GrammarSpec(kind="lark", source="start: /[0-9]+/")),
        ({"structured_outputs": {"grammar": ARITHMETIC_GBNF}},
         GrammarSpec(kind="lark", source='%llguidance {}\n\nstart: TERM ("+" TERM)*\nTERM: /[0-9]/+\n')),
        ({"grammar": ARITHMETIC_GBNF},
         GrammarSpec(kind="lark", source='%llguidance {}\n\nstart: TERM ("+" TERM)*\nTERM: /[0-9]/+\n')),
        ({"grammar": "%llguidance {}\nstart: /[0-9]+/"},
         GrammarSpec(kind="lark", source="%llguidance {}\nstart: /[0-9]+/")),
        ({"grammar": ""}, None),
    ],
)  # fmt: skip
def test_structured_outputs_and_grammar_become_a_grammar(model, body, spec):
    """The field that asked is each spec's param (named in its errors, mid-output ones included)."""
    param = "grammar" if "grammar" in body else f"structured_outputs.{next(iter(body['structured_outputs']))}"
    expected = None if spec is None else msgspec.structs.replace(spec, param=param)
    assert chat_plan(chat(**body), model, "c").config.grammar == expected
    plan = completion_plan(completion(prompt=["a", "b"], **body), model, "p")
    assert [cfg.grammar for cfg in plan.configs] == [expected, expected]


def test_chat_logprobs_without_top(model):
    plan = chat_plan(chat(logprobs=True, max_tokens=3), model, "c")
    assert plan.top_logprobs == 0 and plan.config.sampling.logprobs == 0 and plan.config.max_tokens == 3


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "does not render tool"),
        ({"tool_choice": "auto"}, "tool_choice", "only allowed when tools are specified"),
        ({"tool_choice": "none"}, "tool_choice", "only allowed when tools are specified"),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
                    },
                ]
            },
            "messages[1].tool_calls",
            "does not render tool calls",
        ),
        ({"functions": [{"name": "f"}]}, "functions", "not supported"),
        ({"function_call": "auto"}, "function_call", "not supported"),
        ({"audio": {"voice": "x"}}, "audio", "not supported"),
        ({"modalities": ["text", "audio"]}, "modalities", "not supported"),
        ({"response_format": {"type": "json_object"}}, "messages", "must contain the word 'json'"),
        (
            {
                "response_format": {"type": "json_object"},
                "ignore_eos": True,
                "messages": [MSG[0] | {"content": "json"}],
            },
            "ignore_eos",
            "cannot be combined",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "foo"}},
                }
            },
            "response_format",
            "Invalid type: foo",
        ),
        ({"top_logprobs": 2}, "top_logprobs", "requires logprobs"),
        (
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}]},
            "messages[1].content",
            "needs content or tool_calls",
        ),
        ({"n": 9}, "n", "max_num_seqs"),
        ({"max_tokens": 3, "max_completion_tokens": 3}, "max_tokens", "not both"),
        ({"max_completion_tokens": 8190}, "messages", "in the messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0]",
            "image content",
        ),
    ],
)
def test_chat_request_errors(model, fields, param, words):
    with pytest.raises(RequestError) as info:
        chat_plan(chat(**fields), model, "c")
    assert info.value.param == param
    assert words in info.value.message
