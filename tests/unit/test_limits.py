"""Request limits are written once, in inference/limits.py: decoding a request (app/protocol.py, which puts
them in the OpenAPI schema) and AdapterForwardConfig.validate enforce the very same numbers; the API
boundary validates each config once, and the engine only asserts."""

import ast
import json
from pathlib import Path

import msgspec
import pytest

from app.errors import request_error_from_msgspec
from app.protocol import ChatCompletionRequest, CompletionRequest
from app.serve import served_model
from app.settings import Settings
from app.translate import completion_plan
from inference import limits
from inference.adapter import InferenceAdapter
from inference.engine.engine import Engine, EngineConfig
from inference.errors import RequestError
from inference.forward_config import AdapterForwardConfig, SamplingParams
from tests.unit.gguf_fixtures import write_tiny_model

ROOT = Path(__file__).resolve().parents[2]
# every module that checks or uses a request limit
USERS = ("app/protocol.py", "app/translate.py", "inference/forward_config.py", "inference/engine/sampler.py")


@pytest.mark.parametrize("path", USERS)
def test_no_other_module_writes_a_limit(path):
    tree = ast.parse((ROOT / path).read_text())
    names = {
        t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if hasattr(t, "id")
    }
    assert {n for n in names if n.startswith("MAX_") or n.endswith("_LIMIT")} == set(), path


VOCAB, CONTEXT = 4096, 512  # more ids than logit_bias may name


def decode(body: dict, kind=CompletionRequest) -> None:
    base = {"model": "m", "prompt": "x"} if kind is CompletionRequest else {"model": "m", "messages": []}
    base |= {"messages": [{"role": "user", "content": "x"}]} if kind is ChatCompletionRequest else {}
    try:
        msgspec.json.decode(json.dumps(base | body), type=kind)
    except msgspec.ValidationError as exc:
        raise request_error_from_msgspec(exc) from None


def validate(sampling: dict | None = None, **fields) -> None:
    cfg = AdapterForwardConfig(
        request_id="r", prompt_ids=(1, 2), max_tokens=4, sampling=SamplingParams(**(sampling or {})), **fields
    )
    cfg.validate(vocab_size=VOCAB, context_length=CONTEXT)


def bias(count: int, value: float = 1.0) -> dict[str, float]:
    return {str(i): value for i in range(count)}


# (limit, the request body at it, at it + 1 step, the config at it, at it + 1 step, param); None: that side
# has no such field (completions' logprobs <= 5 is the endpoint's; the engine allows MAX_LOGPROBS)
L = limits
EDGES = [
    ("MAX_N", {"n": L.MAX_N}, {"n": L.MAX_N + 1}, {"n": L.MAX_N}, {"n": L.MAX_N + 1}, "n"),
    (
        "MAX_STOP_STRINGS",
        {"stop": ["s"] * L.MAX_STOP_STRINGS},
        {"stop": ["s"] * (L.MAX_STOP_STRINGS + 1)},
        {"stop": ("s",) * L.MAX_STOP_STRINGS},
        {"stop": ("s",) * (L.MAX_STOP_STRINGS + 1)},
        "stop",
    ),
    (
        "MAX_STOP_CHARS",
        {"stop": "s" * L.MAX_STOP_CHARS},
        {"stop": "s" * (L.MAX_STOP_CHARS + 1)},
        {"stop": ("s" * L.MAX_STOP_CHARS,)},
        {"stop": ("s" * (L.MAX_STOP_CHARS + 1),)},
        "stop",
    ),
    (
        "MAX_STOP_TOKEN_IDS",
        {"stop_token_ids": [3] * L.MAX_STOP_TOKEN_IDS},
        {"stop_token_ids": [3] * (L.MAX_STOP_TOKEN_IDS + 1)},
        {"stop_token_ids": (3,) * L.MAX_STOP_TOKEN_IDS},
        {"stop_token_ids": (3,) * (L.MAX_STOP_TOKEN_IDS + 1)},
        "stop_token_ids",
    ),
    (
        "MAX_COMPLETION_LOGPROBS",
        {"logprobs": L.MAX_COMPLETION_LOGPROBS},
        {"logprobs": L.MAX_COMPLETION_LOGPROBS + 1},
        None,
        None,
        "logprobs",
    ),
    (
        "MAX_LOGPROBS",
        {"logprobs": True, "top_logprobs": L.MAX_LOGPROBS},
        {"logprobs": True, "top_logprobs": L.MAX_LOGPROBS + 1},
        {"sampling": {"logprobs": L.MAX_LOGPROBS}},
        {"sampling": {"logprobs": L.MAX_LOGPROBS + 1}},
        "top_logprobs",
    ),
    (
        "MAX_LOGIT_BIAS_TOKENS",
        {"logit_bias": bias(L.MAX_LOGIT_BIAS_TOKENS)},
        {"logit_bias": bias(L.MAX_LOGIT_BIAS_TOKENS + 1)},
        {"sampling": {"logit_bias": dict.fromkeys(range(L.MAX_LOGIT_BIAS_TOKENS), 1.0)}},
        {"sampling": {"logit_bias": dict.fromkeys(range(L.MAX_LOGIT_BIAS_TOKENS + 1), 1.0)}},
        "logit_bias",
    ),
    (
        "MAX_LOGIT_BIAS",
        None,
        None,
        {"sampling": {"logit_bias": {5: L.MAX_LOGIT_BIAS}}},
        {"sampling": {"logit_bias": {5: L.MAX_LOGIT_BIAS + 0.5}}},
        "logit_bias",
    ),
    (
        "MAX_CACHE_SALT_CHARS",
        {"cache_salt": "s" * L.MAX_CACHE_SALT_CHARS},
        {"cache_salt": "s" * (L.MAX_CACHE_SALT_CHARS + 1)},
        {"cache_salt": "s" * L.MAX_CACHE_SALT_CHARS},
        {"cache_salt": "s" * (L.MAX_CACHE_SALT_CHARS + 1)},
        "cache_salt",
    ),
]


@pytest.mark.parametrize(("limit", "body_at", "body_beyond", "config_at", "config_beyond", "param"), EDGES)
def test_decoding_and_validation_stop_at_the_same_limit(
    limit, body_at, body_beyond, config_at, config_beyond, param
):
    assert isinstance(getattr(limits, limit), int | float)
    if body_at is not None:
        kind = ChatCompletionRequest if "top_logprobs" in body_at else CompletionRequest
        decode(body_at, kind)
        with pytest.raises(RequestError) as err:
            decode(body_beyond, kind)
        assert err.value.param.split("[")[0] == param, err.value.message
    if config_at is not None:
        validate(**config_at)
        with pytest.raises(RequestError) as err:
            validate(**config_beyond)
        assert err.value.param in (param, "logprobs"), err.value.message


# -- validated once, at the API boundary; the engine asserts -------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_model(tmp_path_factory.mktemp("limits") / "tiny.gguf")
    settings = Settings(model=str(path), served_model_name="tiny", max_num_seqs=4, kv_cache_tokens=1024)
    return served_model(settings, path), InferenceAdapter.load(path)


def test_a_request_is_validated_once_from_the_api_to_the_engine(tiny, monkeypatch):
    served, adapter = tiny
    calls = []
    original = AdapterForwardConfig.validate

    def counted(self, **kwargs):
        calls.append(self.request_id)
        return original(self, **kwargs)

    monkeypatch.setattr(AdapterForwardConfig, "validate", counted)
    request = msgspec.convert(
        {"model": "tiny", "prompt": ["hi there", "the sea"], "max_tokens": 3}, CompletionRequest
    )
    plan = completion_plan(request, served, "cmpl-1")
    engine = Engine(adapter.loaded, EngineConfig(max_num_seqs=4, kv_cache_tokens=1024))
    for cfg in plan.configs:
        engine.add_request(cfg)
    while engine.has_unfinished():
        engine.step()
    assert calls == ["cmpl-1-0", "cmpl-1-1"]


@pytest.mark.parametrize(
    "change",
    [{"prompt_ids": ()}, {"prompt_ids": (1, 273)}, {"max_tokens": 0}, {"n": 5}, {"max_tokens": 2000}],
)
def test_the_engine_asserts_what_the_boundary_checked(tiny, change):
    engine = Engine(tiny[1].loaded, EngineConfig(max_num_seqs=4, kv_cache_tokens=1024))
    cfg = AdapterForwardConfig(**{"request_id": "bad", "prompt_ids": (1, 2, 3), "max_tokens": 4, **change})
    with pytest.raises(AssertionError):
        engine.add_request(cfg)
    assert not engine.has_unfinished()
