"""cache_salt (vLLM's request field): the salt is mixed into the first KV block's hash, so requests share
cached prefix blocks only when they carry the same salt (or both none), and never across salts."""

import pytest

from inference.adapter import InferenceAdapter
from inference.engine.block_manager import block_hashes, salted_root
from inference.engine.engine import Engine, EngineConfig
from inference.forward_config import AdapterForwardConfig, SamplingParams
from tests.unit.gguf_fixtures import write_tiny_model

BLOCK = 16
PROMPT = tuple(range(40, 80))  # 40 tokens: two full blocks can come from the cache (the last token never)
CACHED = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> InferenceAdapter:
    return InferenceAdapter.load(write_tiny_model(tmp_path_factory.mktemp("salt") / "tiny.gguf"))


def cached_tokens(engine: Engine, request_id: str, salt: str | None) -> tuple[int, list[int]]:
    """(prompt tokens the prefix cache supplied, greedy output) of one request run to its end."""
    engine.add_request(
        AdapterForwardConfig(
            request_id=request_id, prompt_ids=PROMPT, sampling=SamplingParams(temperature=0.0), max_tokens=4,
            ignore_eos=True, cache_salt=salt,
        )
    )  # fmt: skip
    events = []
    while engine.has_unfinished():
        events += engine.step()
    return events[-1].cached_tokens, [t for e in events for t in e.token_ids]


def test_requests_share_cached_blocks_only_under_the_same_salt(tiny):
    engine = Engine(tiny.loaded, EngineConfig(block_size=BLOCK, kv_cache_tokens=1024))
    first, expected = cached_tokens(engine, "a1", "tenant-a")
    assert first == 0
    sequence = [("b1", "tenant-b", 0), ("a2", "tenant-a", CACHED), ("n1", None, 0), ("n2", None, CACHED)]
    sequence += [("b2", "tenant-b", CACHED), ("c1", "tenant-a ", 0)]  # a salt differs by one character
    for request_id, salt, want in sequence:
        got, tokens = cached_tokens(engine, request_id, salt)
        assert got == want, (request_id, salt)
        assert tokens == expected  # the salt never changes what is generated
    assert engine.stats().cached_prompt_tokens == 3 * CACHED


def test_the_salt_changes_every_block_hash_and_only_through_the_first():
    plain = block_hashes(PROMPT, BLOCK)
    a, b = (block_hashes(PROMPT, BLOCK, parent=salted_root(s)) for s in ("a", "b"))
    assert len(plain) == len(a) == len(b) == 2
    assert not set(plain) & set(a) and not set(a) & set(b)  # the chain carries the salt to every block
    assert salted_root(None) == b"" and salted_root("a") == salted_root("a") != salted_root("b")
    assert block_hashes(PROMPT, BLOCK, start=1, parent=a[0]) == a[1:]
