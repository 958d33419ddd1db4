"""Tool calling without a model: the syntax table picks each real template's row (tests/data/templates,
copied from llama.cpp); what a real template writes for a call parses back into that call, whole and
streamed in any split, and our grammar (on Qwen2.5's real vocabulary) accepts exactly such calls; text
that might open a call is held back; output that breaks off a call is kept as content."""

import json
import random
import re
from pathlib import Path

import pytest

from inference.gguf.loader import read_metadata
from inference.text.chat_template import CHATML, ChatTemplate
from inference.text.grammar import GrammarVocabulary, check_grammar
from inference.text.tokenizer import Tokenizer
from inference.text.tool_calls import CallDelta, ToolCallParser, parse_output
from inference.text.tool_grammar import ToolGrammarRequest, tool_grammar
from inference.text.tool_syntax import TOOL_SYNTAXES, syntax_of

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "templates"
SYNTAX = {s.name: s for s in TOOL_SYNTAXES}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
CALLS = [("get_weather", {"city": "Paris", "unit": "C"}), ("get_time", {})]

# (template file, its syntax, bos, eos, the text that ends an assistant turn)
REAL = [
    ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes", "", "<|im_end|>", "<|im_end|>\n"),
    (
        "meta-llama-Llama-3.2-3B-Instruct.jinja",
        "llama3-json",
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|eot_id|>",
    ),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral", "<s>", "</s>", "</s>"),
]


def template(name: str, bos: str, eos: str) -> ChatTemplate:
    return ChatTemplate((TEMPLATES / name).read_text(), bos_token=bos, eos_token=eos)


def assistant_turn(t: ChatTemplate, calls: list[tuple[str, dict]]) -> str:
    """What the template writes after the generation prompt for an assistant turn with these calls."""
    user = [{"role": "user", "content": "Weather and time in Paris?"}]
    tool_calls = [
        {"id": f"abc{i:06d}", "type": "function", "function": {"name": n, "arguments": a}}
        for i, (n, a) in enumerate(calls)
    ]
    prompt = t.render(user, tools=TOOLS)
    full = t.render(
        [*user, {"role": "assistant", "content": None, "tool_calls": tool_calls}],
        tools=TOOLS,
        add_generation_prompt=False,
    )
    common = 0
    while common < min(len(prompt), len(full)) and prompt[common] == full[common]:
        common += 1
    return full[common:]


@pytest.mark.parametrize(("name", "syntax", "bos", "eos", "end"), REAL)
def test_the_table_picks_each_real_templates_row_and_they_render_tools(name, syntax, bos, eos, end):
    t = template(name, bos, eos)
    assert syntax_of(t.source).name == syntax
    assert t.renders_tools and t.renders_tool_calls
    assert "get_weather" in t.render([{"role": "user", "content": "hi"}], tools=TOOLS)


def test_chatml_renders_no_tools_and_matches_no_row():
    t = ChatTemplate(CHATML)  # SmolLM2's template: never mentions tools
    assert not t.renders_tools and not t.renders_tool_calls and syntax_of(t.source) is None


@pytest.mark.parametrize(("name", "syntax", "bos", "eos", "end"), REAL)
def test_a_real_templates_call_parses_back(name, syntax, bos, eos, end):
    t = template(name, bos, eos)
    calls = CALLS[:1] if syntax == "llama3-json" else CALLS  # Llama 3.x templates take one call a turn
    text = assistant_turn(t, calls)
    assert text.endswith(end)
    text = text.removesuffix(end).lstrip("\n")  # Qwen's template puts "\n" before each <tool_call>
    out = parse_output(SYNTAX[syntax], text)
    assert [(c.name, json.loads(c.arguments)) for c in out.calls] == calls
    id_shape = r"[A-Za-z0-9]{9}" if syntax == "mistral" else r"call_[0-9a-f]{24}"  # Mistral's templates: 9
    assert out.content is None and all(re.fullmatch(id_shape, c.id) for c in out.calls)
    history = [  # the parsed calls go back into the conversation, as a client sends them
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.loads(c.arguments)},
                }
                for c in out.calls
            ],
        },
        *[{"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in out.calls],
    ]
    assert "sunny" in t.render(history, tools=TOOLS)


@pytest.mark.parametrize(("name", "syntax", "bos", "eos", "end"), REAL)
def test_streamed_in_any_split_equals_whole(name, syntax, bos, eos, end):
    calls = CALLS[:1] if syntax == "llama3-json" else CALLS
    body = assistant_turn(template(name, bos, eos), calls).removesuffix(end).lstrip("\n")
    text = body if syntax == "llama3-json" else "Let me check. " + body  # Llama's calls are the whole reply
    whole = parse_output(SYNTAX[syntax], text)
    rng = random.Random(0)
    for trial in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), min(trial, len(text) - 1)))
        parser = ToolCallParser(SYNTAX[syntax])
        pieces = []
        for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True):
            pieces += parser.push(text[a:b])
        pieces += parser.finish()
        content = "".join(p for p in pieces if isinstance(p, str))
        deltas = [p for p in pieces if isinstance(p, CallDelta)]
        firsts = [d for d in deltas if d.id is not None]
        assert [(d.index, d.name, d.arguments) for d in firsts] == [
            (i, c.name, "") for i, c in enumerate(whole.calls)
        ]
        assert all(d.name is None for d in deltas if d.id is None)
        args = ["".join(d.arguments for d in deltas if d.index == i) for i in range(len(firsts))]
        assert args == [c.arguments for c in whole.calls]
        assert (content or None) == whole.content


def test_text_that_may_open_a_call_is_held_back():
    parser = ToolCallParser(SYNTAX["hermes"])
    assert parser.push("Sure, <tool_") == ["Sure, "]  # "<tool_" may become <tool_call>
    assert parser.push("box>") == ["<tool_box>"]  # it did not
    assert parser.push("\n<tool_call>\n") == ["\n"]
    first = parser.push('{"name": "get_time", "arguments": {"tz": ')
    assert first == [
        CallDelta(index=0, arguments="", id=parser.calls[0].id, name="get_time"),
        CallDelta(0, '{"tz": '),
    ]
    assert parser.push('"UTC"}}\n</tool_call>') == [CallDelta(0, '"UTC"}')]
    assert parser.finish() == [] and parser.calls[0].arguments == '{"tz": "UTC"}'


@pytest.mark.parametrize(
    ("syntax", "text", "content", "calls"),
    [
        ("hermes", "Hello <tool_ world", "Hello <tool_ world", 0),
        ("hermes", 'Hi <tool_call>\n{"nam', 'Hi <tool_call>\n{"nam', 0),  # cut before a name: content
        ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a"', None, 1),  # cut in the arguments
        ("hermes", '<tool_call>\n{"name": "f", "args": {}}', '<tool_call>\n{"name": "f", "args": {}}', 0),
        ("llama3-json", 'Hi {"name": "f", "parameters": {}}', 'Hi {"name": "f", "parameters": {}}', 0),
        ("llama3-json", '{"name": "f", "parameters": {"x": [1, "}"]}}', None, 1),
        (
            "phi4-mini",
            'x<|tool_call|>[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"k": 1}}]'
            "<|/tool_call|>",
            "x",
            2,
        ),
        ("mistral", '[TOOL_CALLS][{"name": "a", "arguments": {"s": "]}"}}]', None, 1),
    ],
)
def test_broken_and_other_outputs(syntax, text, content, calls):
    out = parse_output(SYNTAX[syntax], text)
    assert (out.content, len(out.calls)) == (content, calls)


# -- the grammar, on Qwen2.5's real vocabulary ------------------------------------------------------


@pytest.fixture(scope="module")
def qwen(qwen05_path) -> tuple[Tokenizer, GrammarVocabulary]:
    tok = Tokenizer.from_metadata(read_metadata(qwen05_path))
    return tok, GrammarVocabulary(tok)


def accepts(qwen, spec, text: str) -> bool:
    """Whether the grammar lets the model write `text` (tokenized as the model would) and then end."""
    tok, vocab = qwen
    c = vocab.constraint(spec)
    for token in tok.encode(text, allow_special=True, add_bos=False):
        if not c.allowed()[token]:
            return False
        c.advance(token)
    return bool(c.complete or c.allowed()[sorted(tok.eog_ids)[0]])


def grammar(qwen, syntax: str, required: bool, parallel: bool = True, functions=None):
    tok, _ = qwen
    s = SYNTAX[syntax]
    special = {
        t: tok.special_token_id(t) for t in (s.open, s.close) if t and tok.special_token_id(t) is not None
    }
    functions = functions or [("get_weather", WEATHER), ("get_time", {"type": "object"})]
    spec = tool_grammar(
        ToolGrammarRequest(s, functions, required=required, parallel=parallel, special_ids=special)
    )
    check_grammar(spec)
    return spec


@pytest.mark.parametrize(("name", "syntax", "bos", "eos", "end"), REAL)
def test_the_grammar_accepts_what_the_real_template_writes(qwen, name, syntax, bos, eos, end):
    calls = CALLS[:1] if syntax == "llama3-json" else CALLS
    text = assistant_turn(template(name, bos, eos), calls).removesuffix(end).lstrip("\n")
    for required in (True, False):
        assert accepts(qwen, grammar(qwen, syntax, required), text)
    if len(calls) > 1:
        assert not accepts(qwen, grammar(qwen, syntax, True, parallel=False), text)


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize(
    ("required", "text", "ok"),
    [
        (False, "The sea is calm.", True),
        (False, "Let me check. " + CALL, True),
        (False, CALL + "\n" + CALL.replace("Paris", "Rome"), True),
        (False, 'Let me check. <tool_call>\n{"name": "get_wind", "arguments": {}}', False),  # no such tool
        (False, '<tool_call>\n{"name": "get_weather", "arguments": {"town": "Paris"}}', False),  # schema
        (False, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "K"}}', False),
        (True, CALL, True),
        (True, "The sea is calm.", False),
        (True, "Let me check. " + CALL, False),
        (True, '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC", "n": [1]}}\n</tool_call>', True),
    ],
)
def test_hermes_grammar(qwen, required, text, ok):
    assert accepts(qwen, grammar(qwen, "hermes", required), text) == ok


def test_a_named_function_and_one_call(qwen):
    named = grammar(qwen, "hermes", True, parallel=False, functions=[("get_time", {"type": "object"})])
    assert accepts(qwen, named, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    assert not accepts(qwen, named, CALL)
    two = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>' * 2
    assert not accepts(qwen, named, two.replace("</tool_call><", "</tool_call>\n<"))


@pytest.mark.parametrize("syntax", ["mistral", "phi4-mini"])
def test_an_opening_written_in_text_starts_the_grammar_lazily(qwen, syntax):
    """In Qwen's vocabulary [TOOL_CALLS] and <|tool_call|> are plain text: a lazy lexeme ends at them."""
    s = SYNTAX[syntax]
    auto = grammar(qwen, syntax, False)
    good = f'Let me check. {s.open}[{{"name": "get_time", "arguments": {{}}}}]{s.close}'
    assert accepts(qwen, auto, "No call here.") and accepts(qwen, auto, good)
    assert not accepts(qwen, auto, f'Let me check. {s.open}[{{"name": "get_wind"')


def test_auto_text_may_not_spell_a_special_opening(qwen):
    """<tool_call> is one special token in Qwen's vocabulary: free text spelling it in plain tokens would
    reach the parser as an opening the grammar never constrained, so the grammar refuses it."""
    tok, vocab = qwen
    c = vocab.constraint(grammar(qwen, "hermes", False))
    ids = tok.encode('Let me <tool_call>\n{"name": "nope"}', add_bos=False)  # plain text tokens
    text = ""
    for token in ids:
        if not c.allowed()[token]:
            break
        c.advance(token)
        text += tok.decode([token], at_start=False)
    assert text.startswith("Let me <tool") and "<tool_call>" not in text
