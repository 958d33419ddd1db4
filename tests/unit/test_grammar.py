"""Structured outputs on llguidance. JSON mode (the json_object grammar) against Python's json module on
real tokenizations, the batched masks against a brute-force check of every token, random walks that must
parse when they end; the bridge (special tokens, end-of-generation ids, other vocabularies); schemas,
regexes, choices and Lark; bad grammars refused with the library's reason."""

import json
import random

import numpy as np
import pytest

from inference.errors import RequestError
from inference.gguf.loader import read_metadata
from inference.text.grammar import MAX_GAP, GrammarSpec, GrammarVocabulary, check_grammar
from inference.text.tokenizer import Tokenizer

JSON_OBJECT = GrammarSpec(kind="json_object")
DOCS = [
    {},
    {"a": 1},
    {"name": "Paris", "population": 2148000, "tags": ["capital", "city"], "area_km2": 105.4},
    {"a": [True, False, None, -0.5e3, 1e-7, 0, -0, 12.5e2], "b": {"c": {"d": [[], {}, [[1]]]}}},
    {"text": 'quote " backslash \\ slash / tab \t newline \n bell \x07 é 中文 🙂', "": ""},
    {"nested": [{"k": [1, {"x": "y"}]}, "s", 3.0]},
]


def parses_as_object(text: str) -> bool:
    """The independent judge: RFC JSON (no NaN / Infinity) whose top level is an object, and whose strings
    are Unicode (a lone surrogate escape such as \\ud83d, which the json module lets through, is not)."""

    def reject(name):
        raise ValueError(name)

    try:
        obj = json.loads(text, parse_constant=reject)
        json.dumps(obj, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError on a lone surrogate
    except ValueError:
        return False
    return isinstance(obj, dict)


@pytest.fixture(scope="module")
def tokenizer(smollm2_path) -> Tokenizer:
    return Tokenizer.from_metadata(read_metadata(smollm2_path))


@pytest.fixture(scope="module")
def vocab(tokenizer) -> GrammarVocabulary:
    return GrammarVocabulary(tokenizer)


def walk(vocab, tokenizer, text: str, spec: GrammarSpec = JSON_OBJECT):
    """(the constraint after text's tokens, tokens it took before refusing one, all tokens)."""
    ids = tokenizer.encode(text, add_bos=False)
    c = vocab.constraint(spec)
    for k, t in enumerate(ids):
        if not c.allowed()[t]:
            return c, k, ids
        c.advance(t)
    return c, len(ids), ids


def recognized(vocab, tokenizer, text: str) -> bool:
    c, taken, ids = walk(vocab, tokenizer, text)
    return taken == len(ids) and c.complete


# -- the json_object grammar -------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS)
@pytest.mark.parametrize("indent", [None, 0, 2, "\t"])
@pytest.mark.parametrize("ascii_only", [True, False])
def test_serialised_objects_are_accepted_and_every_prefix_is_viable(
    vocab, tokenizer, doc, indent, ascii_only
):
    """Every token of the text is allowed in turn, the output ends only after the last one."""
    text = json.dumps(doc, indent=indent, ensure_ascii=ascii_only)
    c = vocab.constraint(JSON_OBJECT)
    for t in tokenizer.encode(text, add_bos=False):
        assert not c.complete and c.allowed()[t], (text, tokenizer.token_bytes(t))
        c.advance(t)
    assert c.complete


@pytest.mark.parametrize(
    "text",
    [
        "[]", '"x"', "1", "true", "null", "", "{", '{"a"}', '{"a":}', '{"a":1,}', '{,"a":1}', "{'a':1}",
        '{"a":01}', '{"a":1.}', '{"a":.5}', '{"a":-}', '{"a":1e}', '{"a":1e+}', '{"a":+1}', '{"a":0x1}',
        '{"a":tru}', '{"a":True}', '{"a":NaN}', '{"a":Infinity}', '{"a":"\\x"}', '{"a":"\\u12g4"}',
        '{"a":"line\nbreak"}', '{"a":[1,]}', '{"a":[1 2]}', '{"a":{"b":1]}', '{"a":[1}}', '{}}', "{}{}",
        '{"a" 1}', '{"a"::1}', '{1:2}', "{} ", "\n{}\n", '{"a":"\\"}',
    ],
)  # fmt: skip
def test_invalid_or_non_object_texts_are_rejected(vocab, tokenizer, text):
    assert not parses_as_object(text) or text != text.strip()  # the judge agrees (bar trailing space)
    assert not recognized(vocab, tokenizer, text)


def test_whitespace_gaps_are_bounded(vocab, tokenizer):
    assert recognized(vocab, tokenizer, "{" + " " * MAX_GAP + "}")
    assert not recognized(vocab, tokenizer, "{" + " " * (MAX_GAP + 1) + "}")
    assert recognized(vocab, tokenizer, "{" + " " * MAX_GAP + '"a"' + "\n" * MAX_GAP + ":1}")


def test_whitespace_flexible_false_allows_no_whitespace_anywhere(vocab, tokenizer):
    """vLLM's disable_any_whitespace: no leading gap, none between tokens; the default allows both."""
    compact = GrammarSpec(
        kind="json_schema",
        source=json.dumps({"type": "object", "x-guidance": {"whitespace_flexible": False}}),
    )
    for text, default, strict in [
        ('{"a":[1,2]}', True, True),
        (' {"a":1}', True, False),
        ('{"a": 1}', True, False),
    ]:
        c, taken, ids = walk(vocab, tokenizer, text, compact)
        assert (taken == len(ids) and c.complete) == strict, text
        assert recognized(vocab, tokenizer, text) == default, text


def test_mutations_agree_with_the_json_module(vocab, tokenizer):
    """Random edits of valid documents: accepted exactly when json.loads gives an object (ASCII texts, no
    trailing whitespace and no gap over MAX_GAP, the two rules the recognizer adds)."""
    rng = random.Random(1234)
    alphabet = '{}[]",:.-+0123456789eEtrufalsn \n\\/abu'
    seeds = [json.dumps(d, indent=i) for d in DOCS for i in (None, 1)]
    agreed = accepted = 0
    for _ in range(600):
        chars = list(rng.choice(seeds).encode("ascii", "backslashreplace").decode())
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(chars) + 1)
            op = rng.random()
            if op < 0.4 and pos < len(chars):
                del chars[pos]
            elif op < 0.7:
                chars.insert(pos, rng.choice(alphabet))
            elif pos < len(chars):
                chars[pos] = rng.choice(alphabet)
        text = "".join(chars)
        if text != text.rstrip():
            continue
        expected = parses_as_object(text)
        assert recognized(vocab, tokenizer, text) == expected, text
        agreed += 1
        accepted += expected
    assert agreed > 500 and 20 < accepted < agreed - 20  # both outcomes were exercised


# -- token masks on a real vocabulary -----------------------------------------------------------------


def brute_force_mask(c, size: int) -> np.ndarray:
    """[V] the definition: each token on its own, asked of the matcher (validate_tokens)."""
    return np.array([c.matcher.validate_tokens([t]) == 1 for t in range(size)])


def test_masks_equal_a_brute_force_check_of_every_token(vocab, tokenizer):
    """Along a real tokenization, at states inside strings, escapes, numbers, literals and nested
    containers, the batched mask equals asking about every token alone."""
    ids = tokenizer.encode(json.dumps(DOCS[3] | DOCS[4], indent=2), add_bos=False)
    c = vocab.constraint(JSON_OBJECT)
    for i, t in enumerate(ids):
        if i % 9 == 0:
            expected = brute_force_mask(c, vocab.size)
            diff = np.flatnonzero(c.allowed() != expected)
            assert diff.size == 0, (i, [tokenizer.token_bytes(int(d)) for d in diff[:5]])
        c.advance(t)
    assert c.complete


def test_masks_of_many_rows_come_in_one_call(vocab, tokenizer):
    """fill_masks over several constraints at different places equals each one's own mask."""
    texts = ['{"a": ', '{"a": 12', '{"b": "x', "{"]
    constraints = [walk(vocab, tokenizer, t)[0] for t in texts]
    together = vocab.fill_masks(constraints)
    assert together.shape == (len(texts), tokenizer.vocab_size)
    for c, row in zip(constraints, together, strict=True):
        assert np.array_equal(c.allowed(), row)
    assert len({row.tobytes() for row in together}) == len(texts)


@pytest.mark.parametrize("indent", [None, 2, 4])
def test_real_tokenisations_are_allowed_step_by_step(vocab, tokenizer, indent):
    eos = sorted(tokenizer.eog_ids)
    for doc in DOCS:
        ids = tokenizer.encode(json.dumps(doc, indent=indent, ensure_ascii=False), add_bos=False)
        c = vocab.constraint(JSON_OBJECT)
        for t in ids:
            mask = c.allowed()
            assert mask[t] and not mask[eos].any(), (doc, tokenizer.token_bytes(t))
            c.advance(t)
        assert c.complete and c.allowed()[eos].all() and c.allowed().sum() == len(eos)


def test_special_tokens_are_never_allowed(vocab, tokenizer):
    special = [i for i, d in enumerate(tokenizer.text_token_bytes()) if d is None]
    assert special
    c = vocab.constraint(JSON_OBJECT)
    for t in tokenizer.encode('{"a": "', add_bos=False):
        assert not c.allowed()[special].any()
        c.advance(t)
    assert not c.allowed()[special].any()


def test_random_walks_that_end_are_json_objects(vocab, tokenizer):
    """Uniform choices among the allowed tokens (leaning to closing ones late): every walk that completes
    decodes to a JSON object; every walk cut short does not parse."""
    rng = np.random.default_rng(7)
    closing = np.array([d is not None and any(c in d for c in b'}]"') for d in tokenizer.text_token_bytes()])
    ended = 0
    for _ in range(25):
        c, out = vocab.constraint(JSON_OBJECT), []
        for k in range(150):
            if c.complete:
                break
            mask = c.allowed()
            pool = mask & closing if k > 30 and (mask & closing).any() else mask
            t = int(rng.choice(np.flatnonzero(pool)))
            c.advance(t)
            out.append(t)
        text = tokenizer.decode(out)
        assert parses_as_object(text) == c.complete, text
        ended += c.complete
    assert ended >= 20


def test_a_token_the_mask_bans_leaves_the_matcher_in_error(vocab, tokenizer):
    """The sequence ends with this error (the engine reports it); the matcher then allows only
    end-of-generation and is not `complete`, so the output does not pass for a finished one."""
    c = vocab.constraint(JSON_OBJECT)
    (bad,) = tokenizer.encode("x", add_bos=False)
    assert not c.allowed()[bad] and c.error is None
    c.advance(bad)
    assert "doesn't satisfy the grammar" in c.error and "\n" not in c.error, c.error
    assert not c.complete
    assert sorted(np.flatnonzero(c.allowed())) == sorted(tokenizer.eog_ids)


def test_a_parser_limit_mid_output_is_an_error(vocab, tokenizer):
    """More alternatives after "Hello, " than one Earley row may hold: the grammar compiles, the first
    token is allowed, consuming it fails with llguidance's reason (its state and grammar left out)."""
    alternatives = " | ".join(f'"w{i}"' for i in range(2100))
    spec = GrammarSpec(kind="lark", source=f'start: "Hello, " wide\nwide: {alternatives}\n')
    check_grammar(spec)
    c = vocab.constraint(spec)
    (first,) = np.flatnonzero(c.allowed())
    c.advance(int(first))
    assert c.error == (
        "Parser Error: Current row has 2101 items; max is 2000; consider making your grammar "
        "left-recursive if it's right-recursive"
    )


@pytest.mark.parametrize("name", ["llama-spm", "phi-3", "qwen2", "llama-bpe"])
def test_other_vocabularies_accept_their_own_tokenisations(llama_cpp_models, name):
    """SentencePiece ("▁" spaces, <0xNN> byte tokens) and other byte-level BPE vocabularies."""
    tok = Tokenizer.from_metadata(read_metadata(llama_cpp_models / f"ggml-vocab-{name}.gguf"))
    vocab = GrammarVocabulary(tok)
    for indent in (None, 2):
        c = vocab.constraint(JSON_OBJECT)
        for t in tok.encode(json.dumps(DOCS[4] | DOCS[3], indent=indent, ensure_ascii=False), add_bos=False):
            assert c.allowed()[t], (name, tok.token_bytes(t))
            c.advance(t)
        assert c.complete


def test_a_vocabulary_without_end_of_generation_is_refused(tokenizer):
    class NoEog:
        eog_ids = frozenset()

    with pytest.raises(RequestError, match="needs an end-of-generation token") as err:
        GrammarVocabulary(NoEog())
    assert err.value.param == "response_format"


# -- other grammars -----------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "pattern": "^[A-Z][a-z]+$"},
        "rank": {"type": "integer", "minimum": 1, "maximum": 9},
        "kind": {"enum": ["capital", "town"]},
    },
    "required": ["city", "rank", "kind"],
    "additionalProperties": False,
}


CITY = GrammarSpec(kind="json_schema", source=json.dumps(SCHEMA))


@pytest.mark.parametrize(
    ("spec", "text", "ok"),
    [
        (CITY, '{"city": "Paris", "rank": 1, "kind": "capital"}', True),
        (CITY, '{"city": "paris", "rank": 1, "kind": "capital"}', False),
        (CITY, '{"city": "Paris", "rank": 10, "kind": "capital"}', False),
        (CITY, '{"city": "Paris", "rank": 1, "kind": "village"}', False),
        (CITY, '{"city": "Paris", "rank": 1}', False),
        (GrammarSpec(kind="regex", source=r"\d{3}-[a-z]+"), "123-abc", True),
        (GrammarSpec(kind="regex", source=r"\d{3}-[a-z]+"), "12-abc", False),
        (GrammarSpec(kind="choice", source='["yes", "no"]'), "no", True),
        (GrammarSpec(kind="choice", source='["yes", "no"]'), "maybe", False),
        (GrammarSpec(kind="lark", source='start: "a" NUM\nNUM: /[0-9]+/'), "a42", True),
        (GrammarSpec(kind="lark", source='start: "a" NUM\nNUM: /[0-9]+/'), "b42", False),
    ],
)  # fmt: skip
def test_grammars_accept_exactly_their_language(vocab, tokenizer, spec, text, ok):
    c, taken, ids = walk(vocab, tokenizer, text, spec)
    accepted = taken == len(ids) and (c.complete or c.allowed()[sorted(tokenizer.eog_ids)].all())
    assert accepted == ok, (text, taken, len(ids))


def test_compiled_grammars_are_cached_per_spec(vocab):
    spec = CITY
    assert vocab._matcher(spec) is vocab._matcher(CITY)
    a, b = vocab.constraint(spec), vocab.constraint(spec)
    assert a.matcher is not b.matcher  # each sequence gets its own copy


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (GrammarSpec(kind="json_schema", source='{"type": "foo"}'), "Invalid type: foo"),
        (GrammarSpec(kind="json_schema", source='{"type": "integer", "minimum": 5, "maximum": 2}'), "5"),
        (GrammarSpec(kind="json_schema", source="[1, 2]"), "object"),
        (GrammarSpec(kind="regex", source="(", param="structured_outputs"), "unclosed group"),
        (GrammarSpec(kind="lark", source="start: foo", param="structured_outputs"), "unknown name"),
    ],
)  # fmt: skip
def test_bad_grammars_are_refused_with_the_library_reason(vocab, spec, reason):
    with pytest.raises(RequestError, match=reason) as err:
        check_grammar(spec)
    assert err.value.param == spec.param
    with pytest.raises(RequestError, match=reason):
        vocab.constraint(spec)
