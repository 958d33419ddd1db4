"""Fuzzed request bodies against one real server: none gets a 5xx, every error is an OpenAI envelope,
and the server is healthy after. Bodies: every field of every request Struct with values of the wrong
type (and huge numbers), JSON nested 10,000 deep at every field, invalid UTF-8 inside strings, and
random byte flips, deletions and insertions of valid bodies."""

import asyncio
import json
import random
import time

import httpx
import msgspec
import pytest

from app.protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest

from .conftest import API_KEY, MODEL

CHAT = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"},
    ],
    "max_tokens": 1,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": ["\n"],
    "logit_bias": {"1": 2.0},
    "seed": 3,
    "logprobs": True,
    "top_logprobs": 2,
    "stream": True,
    "stream_options": {"include_usage": True},
}
COMPLETION = {
    "model": MODEL,
    "prompt": ["Hello", "Hi"],
    "max_tokens": 1,
    "echo": True,
    "logprobs": 1,
    "stop_token_ids": [2],
    "top_k": 5,
    "min_p": 0.1,
    "repetition_penalty": 1.1,
}
COMPLETION_IDS = {"model": MODEL, "prompt": [[1, 2, 3]], "max_tokens": 1, "n": 2, "ignore_eos": True}
TOKENIZE = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "return_token_strs": True}
DETOKENIZE = {"model": MODEL, "tokens": [1, 2, 3]}

# (path, seed body, the Struct its top-level fields come from, nested fields to mutate too)
SEEDS = [
    (
        "/v1/chat/completions",
        CHAT,
        ChatCompletionRequest,
        [
            ("messages", 0, "role"),
            ("messages", 0, "content"),
            ("messages", 1, "name"),
            ("messages", 1, "content", 0),
            ("messages", 1, "content", 0, "type"),
            ("messages", 1, "content", 0, "text"),
            ("messages", 0),
            ("stop", 0),
            ("logit_bias", "1"),
            ("stream_options", "include_usage"),
        ],
    ),
    ("/v1/completions", COMPLETION, CompletionRequest, [("prompt", 0), ("stop_token_ids", 0)]),
    ("/v1/completions", COMPLETION_IDS, CompletionRequest, [("prompt", 0), ("prompt", 0, 0)]),
    ("/tokenize", TOKENIZE, TokenizeRequest, [("messages", 0, "content"), ("messages", 0, "role")]),
    ("/detokenize", DETOKENIZE, DetokenizeRequest, [("tokens", 0)]),
]

# JSON values of every type, huge and odd numbers among them (raw bytes: json.dumps cannot write 1e999)
WRONG = [
    b"null", b"true", b"0", b"-1", b"1.5", b"18446744073709551616", b"-1" + b"0" * 30, b"9" * 5000,
    b"1e999", b"-1e308", b'""', b'"x"', b"[]", b"[[1e999]]", b"{}", b'{"type": "text"}',
]  # fmt: skip
INVALID_UTF8 = [b"\xff", b"\xc3", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"]
DEPTH = 10_000
SLOT = "\x00slot\x00"
SLOT_JSON = json.dumps(SLOT).encode()
MAX_TOKENS = 2  # valid bodies generate at most this many tokens per choice


def _with(body: dict, path: tuple, value) -> dict:
    """A deep copy of `body` with the item at `path` set to `value`."""
    body = json.loads(json.dumps(body))
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return body


def _slotted(body: dict, path: tuple, raw: bytes) -> bytes:
    return json.dumps(_with(body, path, SLOT)).encode().replace(SLOT_JSON, raw)


def _fields(struct: type, nested: list[tuple]) -> list[tuple]:
    return [(f.encode_name,) for f in msgspec.structs.fields(struct)] + [("zz_unknown",)] + nested


def decodes(struct: type, body: bytes) -> bool:
    """Whether the body decodes into `struct` (so the value set was not of a wrong type)."""
    try:
        msgspec.json.decode(body, type=struct)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return False
    return True


def wrong_type_bodies() -> list[tuple[str, bytes]]:
    """Every field (top-level and nested) set to each value of WRONG that its type does not accept."""
    bodies = [
        (path, struct, _slotted(seed, field, raw))
        for path, seed, struct, nested in SEEDS
        for field in _fields(struct, nested)
        for raw in WRONG
    ]
    return [(path, body) for path, struct, body in bodies if not decodes(struct, body)]


def nested_bodies() -> list[tuple[str, bytes]]:
    arrays = b"[" * DEPTH + b"]" * DEPTH
    objects = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH
    out = [(path, raw) for path, *_ in SEEDS[:2] for raw in (arrays, objects)]
    for path, seed, struct, nested in SEEDS:
        for field in _fields(struct, nested):
            out += [(path, _slotted(seed, field, arrays)), (path, _slotted(seed, field, objects))]
    return out


def invalid_utf8_bodies() -> list[tuple[str, bytes]]:
    """Invalid UTF-8 inside every string of every seed (keys and values)."""
    out = []
    for path, seed, *_ in SEEDS:
        raw = json.dumps(seed).encode()
        quotes = [i for i, c in enumerate(raw) if c == ord('"')]
        for start in quotes[::2]:  # the opening quote of each string
            for bad in INVALID_UTF8:
                out.append((path, raw[: start + 1] + bad + raw[start + 1 :]))
    return out


def random_bodies(rng: random.Random, per_seed: int) -> list[tuple[str, bytes]]:
    out = []
    for path, seed, *_ in SEEDS:
        raw = json.dumps(seed).encode()
        for n in range(per_seed):
            b = bytearray(raw)
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                i = rng.randrange(len(b) + 1)
                op = n % 4
                if op == 0 and i < len(b):  # flip
                    b[i] ^= 1 << rng.randrange(8)
                elif op == 1:  # delete
                    del b[i : i + rng.randrange(1, 6)]
                elif op == 2:  # insert
                    b[i:i] = rng.choice(
                        [b",", b"{", b"[", b'"', b"0", b"-", b"e9", b"null", b"\\", b":", b"}"]
                    )
                else:  # invalid UTF-8 anywhere
                    b[i:i] = rng.choice(INVALID_UTF8)
            out.append((path, bytes(b)))
    return out


def capped(path: str, body: bytes) -> bytes:
    """A body that happens to be valid JSON gets max_tokens <= MAX_TOKENS (only if it needs it), so
    whatever generates finishes quickly; every other body goes as it is."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(data, dict) or not path.startswith("/v1/"):
        return body
    keys = ["max_tokens"] + (["max_completion_tokens"] if "chat" in path else [])
    values = [data.get(k) for k in keys]
    if all(v is None for v in values):
        data["max_tokens"] = MAX_TOKENS
    for k, v in zip(keys, values, strict=True):
        if type(v) is int and v > MAX_TOKENS:
            data[k] = MAX_TOKENS
    return json.dumps(data).encode() if [data.get(k) for k in keys] != values else body


def all_bodies() -> dict[str, list[tuple[str, bytes]]]:
    rng = random.Random(13)
    return {
        "wrong type": wrong_type_bodies(),
        "nested": nested_bodies(),
        "invalid utf-8": invalid_utf8_bodies(),
        "random": random_bodies(rng, per_seed=160),
    }


def is_envelope(response: httpx.Response) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error.get("message"), str) and error["message"] != "" and isinstance(error["type"], str)


async def _send_all(url: str, bodies: list[tuple[str, str, bytes]]) -> list[tuple[str, str, bytes, int, str]]:
    """(kind, path, body, status, text) of every body, 8 in flight on one keep-alive client."""
    gate = asyncio.Semaphore(8)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:

        async def one(kind: str, path: str, body: bytes):
            async with gate:
                r = await client.post(path, content=capped(path, body))
                return kind, path, body, r.status_code, r if r.status_code >= 300 else None

        return await asyncio.gather(*(one(*b) for b in bodies))


@pytest.mark.slow
def test_no_body_gets_a_5xx(server):
    bodies = [(kind, path, body) for kind, items in all_bodies().items() for path, body in items]
    assert len(bodies) >= 2000
    start = time.monotonic()
    results = asyncio.run(_send_all(server.url, bodies))
    elapsed = time.monotonic() - start

    server_errors = [(k, p, b[:120], s, r.text[:200]) for k, p, b, s, r in results if s >= 500]
    assert not server_errors, f"{len(server_errors)} of {len(bodies)} bodies got a 5xx: {server_errors[:5]}"
    not_envelopes = [
        (k, p, b[:120], s, r.text[:200]) for k, p, b, s, r in results if r and not is_envelope(r)
    ]
    assert not not_envelopes, f"errors outside the OpenAI envelope: {not_envelopes[:5]}"
    for kind in ("wrong type", "nested", "invalid utf-8"):  # never valid: each one is a 400
        statuses = {s for k, _, _, s, _ in results if k == kind}
        assert statuses == {400}, (kind, statuses)
    assert server.health() == 200
    print(f"{len(bodies)} bodies in {elapsed:.1f} s")


def test_invalid_utf8_is_a_400_that_says_where(http):
    body = json.dumps({"model": MODEL, "prompt": "ab", "max_tokens": 1}).encode()
    at = body.index(b"ab")
    r = http.post("/v1/completions", content=body[:at] + b"\xff" + body[at:], headers=_json())
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": f"the request body is not valid UTF-8: byte 0xff at offset {at} (invalid start byte)",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_json",
    }


def test_deep_nesting_is_a_400(http):
    # `prediction` is decoded as any JSON (tool_choice was, until it got its type): nesting reaches the limit
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "prediction": 0})
    nested = body.replace('"prediction": 0', '"prediction": ' + "[" * DEPTH + "]" * DEPTH)
    r = http.post("/v1/chat/completions", content=nested, headers=_json())
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"
    assert r.json()["error"]["message"].startswith("the request body nests arrays or objects too deeply")


def test_huge_top_k_is_not_an_overflow(http):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1, "top_k": 10**30, "temperature": 0}
    greedy = {**body, "top_k": 0}
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert (
        r.json()["choices"][0]["text"]
        == http.post("/v1/completions", json=greedy).json()["choices"][0]["text"]
    )


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}
