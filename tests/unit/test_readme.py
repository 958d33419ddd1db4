"""The README a first-time user reads: Python version and a venv before the first command, the CI test
command intact, docs/deploy.md linked, and a table row for every OpenAI request field."""

import re
from pathlib import Path

import msgspec

from app.protocol import ChatCompletionRequest, CompletionRequest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

# OpenAI's documented request bodies (API reference, chat/create and completions/create)
OPENAI_CHAT = (
    "messages model audio frequency_penalty function_call functions logit_bias logprobs "
    "max_completion_tokens "
    "max_tokens metadata modalities n parallel_tool_calls prediction presence_penalty prompt_cache_key "
    "reasoning_effort response_format safety_identifier seed service_tier stop store stream stream_options "
    "temperature tool_choice tools top_logprobs top_p user verbosity web_search_options"
).split()
OPENAI_COMPLETIONS = (
    "model prompt best_of echo frequency_penalty logit_bias logprobs max_tokens n presence_penalty seed stop "
    "stream stream_options suffix temperature top_p user"
).split()
VLLM_EXTRAS = ("top_k", "min_p", "repetition_penalty", "ignore_eos", "stop_token_ids", "cache_salt")


def fenced_commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, re.S)


def test_python_version_and_a_venv_before_the_first_command():
    assert "Python ≥ 3.11" in README
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.11"' in pyproject
    first = fenced_commands()[0]
    assert first.strip() == "python3 -m venv .venv && source .venv/bin/activate"


def test_the_two_commands_and_the_ci_test_command():
    blocks = [b.strip() for b in fenced_commands()]
    assert blocks[1] == "pip install -e . && gguf-serve serve"
    # .ci/run takes the 3rd line from the marker: the marker, the fence, the command
    lines = README.splitlines()
    marker = lines.index("<!-- test-command -->")
    assert lines[marker + 1] == "```bash"
    assert lines[marker + 2] == "pip install -e '.[test,deploy]' && pytest"


def test_links_the_deploy_guide():
    assert "(docs/deploy.md)" in README and (ROOT / "docs" / "deploy.md").is_file()


def _table_fields() -> set[str]:
    start = README.index("### OpenAI request fields")
    rows = [line for line in README[start:].splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}


def test_every_openai_request_field_has_a_row():
    assert set(OPENAI_CHAT) | set(OPENAI_COMPLETIONS) <= _table_fields()
    for name in VLLM_EXTRAS:
        assert f"`{name}`" in README


def test_the_server_knows_every_openai_field():
    """None of OpenAI's fields is "unrecognized": each is a field of the request Struct."""
    chat = {f.encode_name for f in msgspec.inspect.type_info(ChatCompletionRequest).fields}
    completions = {f.encode_name for f in msgspec.inspect.type_info(CompletionRequest).fields}
    assert set(OPENAI_CHAT) - chat == set()
    assert set(OPENAI_COMPLETIONS) - completions == set()
