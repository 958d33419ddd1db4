"""AdapterForwardConfig.validate: every bad value raises RequestError naming its `param`."""

import math

import msgspec
import pytest

from inference.errors import ContextLengthError, RequestError
from inference.forward_config import AdapterForwardConfig, SamplingParams
from inference.text.grammar import GrammarSpec

VOCAB, CONTEXT = 1000, 64


def make(sampling: dict | None = None, **changes) -> AdapterForwardConfig:
    fields = {"request_id": "r", "prompt_ids": (1, 2, 3), "max_tokens": 10, **changes}
    return AdapterForwardConfig(**fields, sampling=SamplingParams(**(sampling or {})))


def validate(cfg: AdapterForwardConfig) -> None:
    cfg.validate(vocab_size=VOCAB, context_length=CONTEXT)


BAD = [  # (request fields, sampling fields, param, message fragment)
    ({"prompt_ids": ()}, {}, "prompt", "prompt is empty"),
    ({"prompt_ids": (1, 1000, 2)}, {}, "prompt", "prompt token id 1000 at position 1 is outside"),
    ({"prompt_ids": (5, 6, -1)}, {}, "prompt", "prompt token id -1 at position 2"),
    ({"max_tokens": 0}, {}, "max_tokens", "max_tokens = 0 must be at least 1"),
    (
        {"ignore_eos": True, "grammar": GrammarSpec(kind="json_object")},
        {},
        "ignore_eos",
        "cannot be combined with response_format json_object",
    ),
    ({"max_tokens": -5}, {}, "max_tokens", "max_tokens = -5"),
    ({"n": 0}, {}, "n", "n = 0 is less than the minimum of 1"),
    ({"n": 129}, {}, "n", "n = 129 is greater than the maximum of 128"),
    ({}, {"temperature": -0.1}, "temperature", "temperature = -0.1 is less than the minimum of 0"),
    ({}, {"temperature": 2.5}, "temperature", "temperature = 2.5 is greater than the maximum of 2"),
    ({}, {"temperature": math.nan}, "temperature", "is not a number in [0, 2]"),
    ({}, {"top_p": 0.0}, "top_p", "top_p = 0.0 must be in (0, 1]"),
    ({}, {"top_p": 1.01}, "top_p", "top_p = 1.01"),
    ({}, {"top_k": -1}, "top_k", "top_k = -1 must be >= 0"),
    ({}, {"min_p": -0.1}, "min_p", "less than the minimum of 0"),
    ({}, {"min_p": 1.5}, "min_p", "greater than the maximum of 1"),
    ({}, {"repetition_penalty": 0.0}, "repetition_penalty", "repetition_penalty = 0.0 must be in (0, 10]"),
    ({}, {"repetition_penalty": 10.5}, "repetition_penalty", "must be in (0, 10]"),
    ({}, {"repetition_penalty": math.inf}, "repetition_penalty", "must be in (0, 10]"),
    ({}, {"presence_penalty": 2.5}, "presence_penalty", "greater than the maximum of 2"),
    ({}, {"frequency_penalty": -2.1}, "frequency_penalty", "less than the minimum of -2"),
    ({}, {"logit_bias": {1000: 1.0}}, "logit_bias", "logit_bias token id 1000 is outside the vocabulary"),
    ({}, {"logit_bias": {-1: 1.0}}, "logit_bias", "token id -1"),
    (
        {},
        {"logit_bias": {5: 101.0}},
        "logit_bias",
        "logit_bias[5] = 101.0 is greater than the maximum of 100",
    ),
    ({}, {"logit_bias": {5: -100.5}}, "logit_bias", "less than the minimum of -100"),
    ({}, {"logit_bias": dict.fromkeys(range(VOCAB), -100.0)}, "logit_bias", "bans all 1000 tokens"),
    ({}, {"logprobs": -1}, "logprobs", "logprobs = -1 is less than the minimum of 0"),
    ({}, {"logprobs": 21}, "logprobs", "greater than the maximum of 20"),
    ({"stop": ("ok", "")}, {}, "stop", "stop string 1 is empty"),
    ({"stop": tuple("abcdefghijklmnopq")}, {}, "stop", "17 stop strings given; at most 16"),
    ({"stop_token_ids": (2, 1000)}, {}, "stop_token_ids", "stop token id 1000 is outside"),
    ({"prompt_logprobs": 21}, {}, "prompt_logprobs", "greater than the maximum of 20"),
    ({"max_tokens": 62}, {}, "messages", "maximum context length is 64 tokens"),
]


@pytest.mark.parametrize(("changes", "sampling", "param", "fragment"), BAD)
def test_bad_config_names_param(changes, sampling, param, fragment):
    with pytest.raises(RequestError) as err:
        validate(make(sampling, **changes))
    assert err.value.param == param
    assert fragment in err.value.message, err.value.message


def test_context_length_message_names_both_numbers():
    with pytest.raises(ContextLengthError) as err:
        validate(make(prompt_ids=tuple(range(40)), max_tokens=30))
    assert err.value.message == (
        "This model's maximum context length is 64 tokens. However, you requested 70 tokens "
        "(40 in the messages, 30 in the completion). Please reduce the length of the messages or completion."
    )
    assert err.value.code == "context_length_exceeded"


def test_only_the_context_error_is_a_context_length_error():
    with pytest.raises(RequestError) as err:
        validate(make(max_tokens=0))
    assert not isinstance(err.value, ContextLengthError)


@pytest.mark.parametrize(
    ("changes", "sampling"),
    [
        ({}, {}),
        ({"max_tokens": 61, "n": 128}, {"temperature": 0.0, "top_p": 1.0, "min_p": 1.0, "logprobs": 20}),
        ({"prompt_ids": (0, VOCAB - 1)}, {"temperature": 2.0, "top_p": 1e-6, "top_k": 10**6, "min_p": 0.0}),
        ({}, {"presence_penalty": -2.0, "frequency_penalty": 2.0, "repetition_penalty": 1e-3, "logprobs": 0}),
        ({}, {"logit_bias": {0: -100.0, VOCAB - 1: 100.0}, "seed": -7}),
        ({"stop": tuple("abcdefghijklmnop"), "stop_token_ids": (0, VOCAB - 1), "prompt_logprobs": 0}, {}),
    ],
)
def test_values_on_the_bounds_are_accepted(changes, sampling):
    cfg = make(sampling, **changes)
    validate(cfg)  # raises nothing; test_each_bound_is_the_edge shows that one step beyond is refused
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(cfg), type=AdapterForwardConfig) == cfg


# (field, a value on the bound, the nearest value beyond it, a sampling field?); prompt_ids has 3 tokens
EDGES = [
    ("n", 128, 129, False),
    ("n", 1, 0, False),
    ("max_tokens", 61, 62, False),  # 3 + 61 = the context of 64
    ("max_tokens", 1, 0, False),
    ("temperature", 2.0, 2.0001, True),
    ("temperature", 0.0, -1e-9, True),
    ("top_p", 1.0, 1.0001, True),
    ("min_p", 1.0, 1.0001, True),
    ("min_p", 0.0, -1e-9, True),
    ("top_k", 0, -1, True),
    ("presence_penalty", -2.0, -2.0001, True),
    ("frequency_penalty", 2.0, 2.0001, True),
    ("logprobs", 20, 21, True),
    ("logprobs", 0, -1, True),
    ("prompt_logprobs", 20, 21, False),
    ("stop", tuple("abcdefghijklmnop"), tuple("abcdefghijklmnopq"), False),
    ("stop_token_ids", (VOCAB - 1,), (VOCAB,), False),
    ("prompt_ids", (0, VOCAB - 1), (0, VOCAB), False),
    ("cache_salt", "s" * 256, "s" * 257, False),
    ("cache_salt", "s", "", False),
]


@pytest.mark.parametrize(("field", "at", "beyond", "in_sampling"), EDGES)
def test_each_bound_is_the_edge(field, at, beyond, in_sampling):
    def config(value):
        return make({field: value}) if in_sampling else make(**{field: value})

    validate(config(at))
    with pytest.raises(RequestError) as err:
        validate(config(beyond))
    expected = {"max_tokens": "messages" if beyond else "max_tokens", "prompt_ids": "prompt"}.get(
        field, field
    )
    assert err.value.param == expected, err.value.message
