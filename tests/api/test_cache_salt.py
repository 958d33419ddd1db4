"""cache_salt through the real server and the official openai client: the same prompt under another salt
reports usage.prompt_tokens_details.cached_tokens = 0 (a tenant cannot probe another's prompts), under
the same salt the prefix cache's blocks; an empty salt is a 400; the OpenAPI schema lists the field."""

import uuid

import openai
import pytest

from .conftest import MODEL

BLOCK = 16  # the test server's block_size


def long_prompt() -> str:
    """A prompt of several full blocks that no other test (nor an earlier run of this one) has sent."""
    return f"Reference {uuid.uuid4().hex}. " + "The harbour master logs every ship that enters. " * 6


def chat_cached(client: openai.OpenAI, prompt: str, salt: str | None) -> tuple[int, int]:
    extra = {} if salt is None else {"extra_body": {"cache_salt": salt}}
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=2, temperature=0, **extra
    )
    return r.usage.prompt_tokens_details.cached_tokens, r.usage.prompt_tokens


def completion_cached(client: openai.OpenAI, prompt: str, salt: str | None) -> tuple[int, int]:
    extra = {} if salt is None else {"extra_body": {"cache_salt": salt}}
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0, **extra)
    return r.usage.prompt_tokens_details.cached_tokens, r.usage.prompt_tokens


@pytest.mark.parametrize("send", [chat_cached, completion_cached], ids=["chat", "completions"])
def test_the_same_prompt_shares_cached_blocks_only_under_the_same_salt(client, send):
    prompt = long_prompt()
    cached, prompt_tokens = send(client, prompt, "tenant-a")
    assert cached == 0
    full = (prompt_tokens - 1) // BLOCK * BLOCK
    assert full >= 4 * BLOCK
    assert send(client, prompt, "tenant-b")[0] == 0  # another tenant learns nothing
    assert send(client, prompt, None)[0] == 0  # nor does a request without a salt
    assert send(client, prompt, "tenant-a")[0] == full  # the same tenant gets its blocks back
    assert send(client, prompt, None)[0] == full  # unsalted requests share among themselves


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_an_empty_salt_is_a_400_naming_it(http, path):
    body = {"model": MODEL, "max_tokens": 1, "cache_salt": ""}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"}
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "cache_salt" and "length >= 1" in error["message"], error


def test_the_openapi_schema_lists_cache_salt(http):
    components = http.get("/schema/openapi.json").json()["components"]["schemas"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        key = next(k for k in components if k.endswith(name) and ("Chat" in k) == ("Chat" in name))
        prop = components[key]["properties"]["cache_salt"]
        variants = prop.get("oneOf") or prop.get("anyOf") or [prop]
        string = next(v for v in variants if v.get("type") == "string")
        bounds = prop | string  # Litestar writes the length bounds beside the oneOf
        assert (bounds["minLength"], bounds["maxLength"]) == (1, 256), prop
