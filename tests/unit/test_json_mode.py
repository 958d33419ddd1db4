"""JSON mode: the recognizer against Python's json module, the token masks against a brute-force run of
every token, real tokenizations of json.dumps output, and random walks that must parse when they end."""

import json
import random

import numpy as np
import pytest

from inference.gguf.loader import read_metadata
from inference.text.json_mode import DONE, INITIAL, MAX_GAP, JsonConstraint, JsonVocabulary, run
from inference.text.tokenizer import Tokenizer

DOCS = [
    {},
    {"a": 1},
    {"name": "Paris", "population": 2148000, "tags": ["capital", "city"], "area_km2": 105.4},
    {"a": [True, False, None, -0.5e3, 1e-7, 0, -0, 12.5e2], "b": {"c": {"d": [[], {}, [[1]]]}}},
    {"text": 'quote " backslash \\ slash / tab \t newline \n bell \x07 é 中文 🙂', "": ""},
    {"nested": [{"k": [1, {"x": "y"}]}, "s", 3.0]},
]


def parses_as_object(text: str) -> bool:
    """The independent judge: RFC JSON (no NaN / Infinity) whose top level is an object."""

    def reject(name):
        raise ValueError(name)

    try:
        return isinstance(json.loads(text, parse_constant=reject), dict)
    except ValueError:
        return False


def recognized(text: str) -> bool:
    s = run(INITIAL, text.encode())
    return s is not None and s.mode == DONE


# -- the recognizer -----------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS)
@pytest.mark.parametrize("indent", [None, 0, 2, "\t"])
@pytest.mark.parametrize("ascii_only", [True, False])
def test_serialised_objects_are_accepted_and_every_prefix_is_viable(doc, indent, ascii_only):
    text = json.dumps(doc, indent=indent, ensure_ascii=ascii_only)
    data = text.encode()
    assert recognized(text)
    for i in range(len(data)):
        s = run(INITIAL, data[:i])
        assert s is not None and s.mode != DONE, (text, i)


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
def test_invalid_or_non_object_texts_are_rejected(text):
    assert not parses_as_object(text) or text != text.strip()  # the judge agrees (bar trailing space)
    assert not recognized(text)


def test_whitespace_gaps_are_bounded():
    assert recognized("{" + " " * MAX_GAP + "}")
    assert not recognized("{" + " " * (MAX_GAP + 1) + "}")
    assert recognized("{" + " " * MAX_GAP + '"a"' + "\n" * MAX_GAP + ":1}")


def test_mutations_agree_with_the_json_module():
    """Random edits of valid documents: accepted exactly when json.loads gives an object (ASCII texts, no
    trailing whitespace and no gap over MAX_GAP, the two rules the recognizer adds)."""
    rng = random.Random(1234)
    alphabet = '{}[]",:.-+0123456789eEtrufalsn \n\\/abu'
    seeds = [json.dumps(d, indent=i) for d in DOCS for i in (None, 1)]
    agreed = accepted = 0
    for _ in range(3000):
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
        assert recognized(text) == expected, text
        agreed += 1
        accepted += expected
    assert agreed > 2500 and 100 < accepted < agreed - 100  # both outcomes were exercised


# -- token masks on a real vocabulary -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(smollm2_path) -> Tokenizer:
    return Tokenizer.from_metadata(read_metadata(smollm2_path))


@pytest.fixture(scope="module")
def vocab(tokenizer) -> JsonVocabulary:
    return JsonVocabulary(tokenizer.text_token_bytes(), tokenizer.eog_ids)


def brute_force_mask(vocab: JsonVocabulary, tokenizer: Tokenizer, state) -> np.ndarray:
    """[V] the definition: a text token is allowed when its bytes run from state; EOG once complete."""
    data = tokenizer.text_token_bytes()
    mask = np.array([d is not None and d != b"" and run(state, d) is not None for d in data])
    if state.mode == DONE:
        mask[sorted(tokenizer.eog_ids)] = True
    return mask


def test_masks_equal_a_brute_force_run_of_every_token(vocab, tokenizer):
    """Along real tokenizations, including states inside strings, escapes, numbers, literals, nested
    containers and whitespace gaps, the cached/shortcut mask equals running every token."""
    text = json.dumps(DOCS[3] | DOCS[4], indent=2) + ""
    ids = tokenizer.encode(text, add_bos=False)
    c, checked = JsonConstraint(vocab), set()
    for i, t in enumerate(ids + [None]):
        key = (c.state.mode, c.state.detail, c.state.stack[-2:], min(c.state.gap, 2))
        if key not in checked or i % 7 == 0:
            checked.add(key)
            expected = brute_force_mask(vocab, tokenizer, c.state)
            got = c.allowed()
            diff = np.flatnonzero(got != expected)
            assert diff.size == 0, (c.state, [tokenizer.token_bytes(int(d)) for d in diff[:5]])
        if t is not None:
            c.advance(t)
    assert c.complete and len(checked) > 15


@pytest.mark.parametrize("indent", [None, 2, 4])
def test_real_tokenisations_are_allowed_step_by_step(vocab, tokenizer, indent):
    eos = sorted(tokenizer.eog_ids)
    for doc in DOCS:
        ids = tokenizer.encode(json.dumps(doc, indent=indent, ensure_ascii=False), add_bos=False)
        c = JsonConstraint(vocab)
        for t in ids:
            mask = c.allowed()
            assert mask[t] and not mask[eos].any(), (doc, tokenizer.token_bytes(t), c.state)
            c.advance(t)
        assert c.complete and c.allowed()[eos].all() and c.allowed().sum() == len(eos)


def test_special_tokens_are_never_allowed(vocab, tokenizer):
    special = [i for i, d in enumerate(tokenizer.text_token_bytes()) if d is None]
    assert special
    c = JsonConstraint(vocab)
    for t in tokenizer.encode('{"a": "', add_bos=False):
        assert not c.allowed()[special].any()
        c.advance(t)
    assert not c.allowed()[special].any()


def test_random_walks_that_end_are_json_objects(vocab, tokenizer):
    """Uniform choices among the allowed tokens (leaning to closing ones late): every walk that reaches
    end-of-generation decodes to a JSON object; every walk cut short does not parse."""
    rng = np.random.default_rng(7)
    eos = min(tokenizer.eog_ids)
    closing = np.array([d is not None and any(c in d for c in b'}]"') for d in tokenizer.text_token_bytes()])
    ended = 0
    for _ in range(25):
        c, out = JsonConstraint(vocab), []
        for k in range(150):
            mask = c.allowed()
            if mask[eos]:
                break
            pool = mask & closing if k > 30 and (mask & closing).any() else mask
            t = int(rng.choice(np.flatnonzero(pool)))
            c.advance(t)
            out.append(t)
        text = tokenizer.decode(out)
        assert parses_as_object(text) == c.complete, text
        ended += c.complete
    assert ended >= 20


def test_advance_rejects_a_token_the_mask_bans(vocab, tokenizer):
    c = JsonConstraint(vocab)
    (bad,) = tokenizer.encode("x", add_bos=False)
    assert not c.allowed()[bad]
    with pytest.raises(ValueError, match="does not continue the JSON"):
        c.advance(bad)


@pytest.mark.parametrize("name", ["llama-spm", "phi-3", "qwen2", "llama-bpe"])
def test_other_vocabularies_accept_their_own_tokenisations(llama_cpp_models, name):
    """SentencePiece ("▁" spaces, <0xNN> byte tokens) and other byte-level BPE vocabularies."""
    tok = Tokenizer.from_metadata(read_metadata(llama_cpp_models / f"ggml-vocab-{name}.gguf"))
    vocab = JsonVocabulary(tok.text_token_bytes(), tok.eog_ids)
    for indent in (None, 2):
        c = JsonConstraint(vocab)
        for t in tok.encode(json.dumps(DOCS[4] | DOCS[3], indent=indent, ensure_ascii=False), add_bos=False):
            assert c.allowed()[t], (name, tok.token_bytes(t), c.state)
            c.advance(t)
        assert c.complete
