"""vLLM's `structured_outputs` and llama.cpp's `grammar` body fields on both endpoints, through the
official openai client (extra_body): each kind's output judged by a check of its own (re.fullmatch, the
choice list, jsonschema, a parser written from the grammar), streamed too; the 400s; and a grammar whose
parser hits a limit mid-output, which fails the request instead of ending it with a quiet "stop"."""

import json
import re

import jsonschema
import openai
import pytest

from .conftest import MODEL

PROMPT = "Question: what is the capital of France?\nAnswer:"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]

CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "pattern": "^[A-Z][a-z]{1,11}$"},
        "population": {"type": "integer", "minimum": 1, "maximum": 9999999},
        "coastal": {"type": "boolean"},
    },
    "required": ["city", "population", "coastal"],
    "additionalProperties": False,
}
CITY_REGEX = r"[A-Z][a-z]{2,9}, (France|Spain|Italy)\."
CHOICES = ["Paris", "Lyon", "Marseille", "Nice"]

# one arithmetic language, bounded so that outputs end, written in both syntaxes
ARITHMETIC_LARK = """start: expr
expr: term (("+" | "-") term){0,3}
term: factor ("*" factor){0,2}
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,3}/
"""
ARITHMETIC_GBNF = """root ::= expr
expr ::= term (("+" | "-") term){0,3}
term ::= factor ("*" factor){0,2}
factor ::= number | "(" expr ")"
number ::= [0-9]{1,3}
"""
ARITHMETIC_PROMPT = "Arithmetic practice.\n(2+3)*4\n12-(5*2)\n7*(1+1)\n"


def is_arithmetic(text: str) -> bool:
    """A recursive-descent parser of the arithmetic grammar above: the whole text, bounds included."""
    pos = 0

    def take(chars: str) -> bool:
        nonlocal pos
        if pos < len(text) and text[pos] in chars:
            pos += 1
            return True
        return False

    def expr() -> bool:
        if not term():
            return False
        for _ in range(3):
            if not take("+-"):
                break
            if not term():
                return False
        return True

    def term() -> bool:
        if not factor():
            return False
        for _ in range(2):
            if not take("*"):
                break
            if not factor():
                return False
        return True

    def factor() -> bool:
        if take("("):
            return expr() and take(")")
        digits = 0
        while digits < 3 and take("0123456789"):
            digits += 1
        return digits > 0

    return expr() and pos == len(text)


def test_the_judge_of_the_arithmetic_grammar():
    for good in ["1", "(2+3)*4", "12-(5*2)", "1+2+3+4", "1*2*3", "((1))", "999"]:
        assert is_arithmetic(good), good
    for bad in ["", "1+", "(1", "1)", "1+2+3+4+5", "1*2*3*4", "1234", "1 + 2", "a", "()"]:
        assert not is_arithmetic(bad), bad


def completion(client, body: dict, **kw) -> list[tuple[str, str]]:
    r = client.completions.create(model=MODEL, prompt=kw.pop("prompt", PROMPT), extra_body=body, **kw)
    return [(c.text, c.finish_reason) for c in r.choices]


def chat(client, body: dict, **kw) -> list[tuple[str, str]]:
    r = client.chat.completions.create(
        model=MODEL, messages=kw.pop("messages", MESSAGES), extra_body=body, **kw
    )
    return [(c.message.content, c.finish_reason) for c in r.choices]


ENDPOINTS = {"completions": completion, "chat": chat}
SAMPLED = dict(n=2, temperature=1.0, seed=5, max_tokens=48)


def judged(outputs: list[tuple[str, str]], judge) -> None:
    """Every choice stopped on its own (the grammar ended it) and passes the judge."""
    for text, finish in outputs:
        assert finish == "stop", (text, finish)
        assert judge(text), text


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_regex(client, endpoint):
    outputs = ENDPOINTS[endpoint](client, {"structured_outputs": {"regex": CITY_REGEX}}, **SAMPLED)
    judged(outputs, lambda text: re.fullmatch(CITY_REGEX, text))


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_choice(client, endpoint):
    outputs = ENDPOINTS[endpoint](client, {"structured_outputs": {"choice": CHOICES}}, **SAMPLED)
    judged(outputs, lambda text: text in CHOICES)


def validates(text: str, schema: dict) -> bool:
    jsonschema.validate(json.loads(text), schema)
    return True


@pytest.mark.parametrize(("endpoint", "schema_as_text"), [("completions", False), ("chat", True)])
def test_json_schema(client, endpoint, schema_as_text):
    """vLLM takes the schema as an object or as its JSON text."""
    schema = json.dumps(CITY_SCHEMA) if schema_as_text else CITY_SCHEMA
    outputs = ENDPOINTS[endpoint](
        client, {"structured_outputs": {"json": schema}}, **SAMPLED | {"max_tokens": 64}
    )
    judged(outputs, lambda text: validates(text, CITY_SCHEMA))


def test_json_object_and_disable_any_whitespace(client):
    """json_object: any object; disable_any_whitespace: no whitespace outside strings (whose pattern
    has none), not even before the object."""
    outputs = chat(client, {"structured_outputs": {"json_object": True}}, **SAMPLED | {"max_tokens": 64})
    stopped = [text for text, finish in outputs if finish == "stop"]
    assert stopped and all(isinstance(json.loads(text), dict) for text in stopped), outputs
    compact = {"structured_outputs": {"json": CITY_SCHEMA, "disable_any_whitespace": True}}
    outputs = completion(client, compact, **SAMPLED | {"max_tokens": 64})
    judged(outputs, lambda text: validates(text, CITY_SCHEMA) and not re.search(r"\s", text))


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("completions", {"structured_outputs": {"grammar": ARITHMETIC_LARK}}),
        ("chat", {"structured_outputs": {"grammar": ARITHMETIC_LARK}}),
        ("chat", {"grammar": ARITHMETIC_GBNF}),  # llama.cpp's field
        ("completions", {"structured_outputs": {"grammar": ARITHMETIC_GBNF}}),  # vLLM takes GBNF too
    ],
)
def test_lark_and_gbnf_grammars(client, endpoint, body):
    kw = {"prompt": ARITHMETIC_PROMPT} if endpoint == "completions" else {}
    outputs = ENDPOINTS[endpoint](client, body, **SAMPLED | kw)
    judged(outputs, is_arithmetic)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_streamed_equals_whole(client, endpoint):
    """Greedy: the streamed deltas add up to the non-streamed text, which matches the regex."""
    body = {"structured_outputs": {"regex": CITY_REGEX}}
    kw = dict(model=MODEL, max_tokens=32, temperature=0, extra_body=body)
    if endpoint == "completions":
        whole = client.completions.create(prompt=PROMPT, **kw).choices[0].text
        stream = client.completions.create(prompt=PROMPT, stream=True, **kw)
        streamed = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    else:
        whole = client.chat.completions.create(messages=MESSAGES, **kw).choices[0].message.content
        stream = client.chat.completions.create(messages=MESSAGES, stream=True, **kw)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == whole and re.fullmatch(CITY_REGEX, whole), (streamed, whole)


JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}}


@pytest.mark.parametrize(
    ("endpoint", "body", "param", "words"),
    [
        ("chat", {"response_format": JSON_FORMAT, "structured_outputs": {"regex": "a"}}, "structured_outputs",
         "sets both response_format and structured_outputs"),
        ("chat", {"response_format": {"type": "json_object"}, "grammar": ARITHMETIC_GBNF}, "grammar",
         "sets both response_format and grammar"),
        ("completions", {"structured_outputs": {"regex": "a"}, "grammar": ARITHMETIC_GBNF}, "grammar",
         "sets both structured_outputs and grammar"),
        ("completions", {"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs.choice",
         "sets both regex and choice"),
        ("completions", {"structured_outputs": {}}, "structured_outputs", "it has none"),
        ("chat", {"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs.structural_tag",
         "not supported"),
        ("chat", {"structured_outputs": {"json": {}, "disable_additional_properties": True}},
         "structured_outputs.disable_additional_properties", "not supported"),
        ("completions", {"structured_outputs": {"regex": "a", "whitespace_pattern": " "}},
         "structured_outputs.whitespace_pattern", "applies to json and json_object only"),
        ("completions", {"structured_outputs": {"json_object": False}}, "structured_outputs.json_object",
         "false asks for nothing"),
        ("completions", {"structured_outputs": {"choice": []}}, "structured_outputs.choice", "length >= 1"),
        ("completions", {"structured_outputs": {"regex": "("}}, "structured_outputs.regex", "unclosed group"),
        ("chat", {"structured_outputs": {"json": {"type": "foo"}}}, "structured_outputs.json",
         "Invalid type: foo"),
        ("completions", {"structured_outputs": {"json": "{not json"}}, "structured_outputs.json", "not JSON"),
        ("chat", {"structured_outputs": {"grammar": "start: rule\n"}}, "structured_outputs.grammar", "rule"),
        ("completions", {"grammar": "root ::= missing"}, "grammar", "Rule 'missing' not found"),
        ("chat", {"grammar": 'root ::= "a'}, "grammar", "Unexpected end of input"),
        ("completions", {"structured_outputs": {"rgx": "a"}}, "structured_outputs.rgx",
         "unrecognized request argument"),
    ],
)  # fmt: skip
def test_refused_with_400(client, endpoint, body, param, words):
    with pytest.raises(openai.BadRequestError) as err:
        ENDPOINTS[endpoint](client, body, max_tokens=4)
    error = err.value.body
    assert error["param"] == param and words in error["message"], error
    assert "\n" not in error["message"], error


def wide_grammar(alternatives: int = 2100) -> str:
    """Lark with more alternatives after three digits than one Earley row may hold (llguidance: 2000): it
    compiles, and its parser gives up once the output reaches them."""
    rules = "\n".join(f'r{i}: "w{i}."' for i in range(alternatives))
    wide = " | ".join(f"r{i}" for i in range(alternatives))
    return f'start: "Hello, " DIGITS wide\nDIGITS: /[0-9]{{3}}/\nwide: {wide}\n{rules}\n'


LIMIT = "Current row has 2101 items; max is 2000"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_parser_limit_mid_output_fails_the_request(client, endpoint):
    """The choice ends with an error the client sees: 400, code grammar_error, naming the field and
    llguidance's reason, not a "stop" that looks like a finished output; the server keeps serving."""
    with pytest.raises(openai.BadRequestError) as err:
        ENDPOINTS[endpoint](client, {"structured_outputs": {"grammar": wide_grammar()}}, max_tokens=8)
    error = err.value.body
    assert error["param"] == "structured_outputs.grammar" and error["code"] == "grammar_error", error
    assert LIMIT in error["message"] and "\n" not in error["message"], error
    assert completion(client, {"structured_outputs": {"choice": CHOICES}}, max_tokens=8)[0][0] in CHOICES


def test_a_parser_limit_mid_stream_ends_the_stream_with_an_error(client):
    stream = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=8,
        stream=True,
        extra_body={"grammar": "%llguidance {}\n" + wide_grammar()},
    )
    texts = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            texts.append(chunk.choices[0].text)
            assert chunk.choices[0].finish_reason is None, texts
    assert re.fullmatch(r"Hello, [0-9]{0,2}", "".join(texts)) and LIMIT in err.value.message, (
        texts,
        err.value,
    )


def test_the_openapi_schema_shows_both_fields(http):
    schemas = http.get("/schema/openapi.json").json()["components"]["schemas"]
    for request in ("ChatCompletionRequest", "CompletionRequest"):
        fields = schemas[request]["properties"]
        assert {"structured_outputs", "grammar"} <= set(fields), request
    keys = set(schemas["StructuredOutputs"]["properties"])
    assert {"json", "regex", "choice", "grammar", "json_object", "whitespace_pattern"} <= keys, keys
