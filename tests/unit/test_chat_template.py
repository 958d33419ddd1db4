"""ChatTemplate: real templates (GGUF, llama.cpp's templates/) rendered to exact strings; errors; sandbox."""

import re
from datetime import datetime
from pathlib import Path

import gguf
import pytest

from inference.errors import TemplateError
from inference.text.chat_template import CHATML, ChatTemplate
from tests.external import llama_cpp_models_dir

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
]
NO_SYSTEM = CONVERSATION[1:]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Temperature (°C) in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _gguf_template(path: Path) -> str:
    return gguf.GGUFReader(path).fields["tokenizer.chat_template"].contents()


def _file_template(models: Path, name: str, **tokens: str) -> ChatTemplate:
    return ChatTemplate((models / "templates" / name).read_text(), **tokens)


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path) -> ChatTemplate:
    return ChatTemplate(_gguf_template(smollm2_path), bos_token="<|im_start|>", eos_token="<|im_end|>")


@pytest.fixture(scope="module")
def qwen(qwen05_path: Path) -> ChatTemplate:
    return ChatTemplate(_gguf_template(qwen05_path), bos_token="<|endoftext|>", eos_token="<|im_end|>")


@pytest.fixture(scope="module")
def phi35(llama_cpp_models: Path) -> ChatTemplate:
    return _file_template(
        llama_cpp_models, "microsoft-Phi-3.5-mini-instruct.jinja", bos_token="<s>", eos_token="<|endoftext|>"
    )


@pytest.fixture(scope="module")
def llama31(llama_cpp_models: Path) -> ChatTemplate:
    return _file_template(
        llama_cpp_models,
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
    )


@pytest.fixture(scope="module")
def gemma2(llama_cpp_models: Path) -> ChatTemplate:
    return _file_template(
        llama_cpp_models, "google-gemma-2-2b-it.jinja", bos_token="<bos>", eos_token="<eos>"
    )


# --- real templates, exact strings ---------------------------------------------------------------------

CHATML_CONVERSATION = (
    "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n4.<|im_end|>\n"
    "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
)


@pytest.mark.parametrize("add_generation_prompt, tail", [(True, "<|im_start|>assistant\n"), (False, "")])
def test_smollm2_renders_chatml(smollm2: ChatTemplate, add_generation_prompt: bool, tail: str):
    assert (
        smollm2.render(CONVERSATION, add_generation_prompt=add_generation_prompt)
        == CHATML_CONVERSATION + tail
    )


def test_smollm2_inserts_its_default_system_prompt(smollm2: ChatTemplate):
    assert smollm2.render(NO_SYSTEM[:1]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("add_generation_prompt, tail", [(True, "<|im_start|>assistant\n"), (False, "")])
def test_qwen_renders_conversation(qwen: ChatTemplate, add_generation_prompt: bool, tail: str):
    assert (
        qwen.render(CONVERSATION, add_generation_prompt=add_generation_prompt) == CHATML_CONVERSATION + tail
    )


def test_qwen_inserts_its_default_system_prompt(qwen: ChatTemplate):
    assert qwen.render(NO_SYSTEM) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4.<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen_renders_tool_block(qwen: ChatTemplate):
    # tojson as HF's: key order kept, ", " and ": " separators, non-ASCII unescaped.
    tool_json = (
        '{"type": "function", "function": {"name": "get_weather", '
        '"description": "Temperature (°C) in a city", '
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}'
    )
    assert qwen.render(CONVERSATION[:2], tools=[WEATHER_TOOL]) == (
        "<|im_start|>system\nYou are a terse assistant.\n\n"
        "# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>\n" + tool_json + "\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        "<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen_renders_tool_call_and_tool_response(qwen: ChatTemplate):
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": '{"temp": 21}'},
    ]
    assert qwen.render(messages, tools=[WEATHER_TOOL]).endswith(
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("add_generation_prompt, tail", [(True, "<|assistant|>\n"), (False, "<|endoftext|>")])
def test_phi35_renders_conversation(phi35: ChatTemplate, add_generation_prompt: bool, tail: str):
    assert phi35.render(CONVERSATION, add_generation_prompt=add_generation_prompt) == (
        "<|system|>\nYou are a terse assistant.<|end|>\n"
        "<|user|>\nWhat is 2+2?<|end|>\n"
        "<|assistant|>\n4.<|end|>\n"
        "<|user|>\nAnd 3+3?<|end|>\n" + tail
    )


LLAMA31_CONVERSATION = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n"
    "You are a terse assistant.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n4.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
)


@pytest.mark.parametrize(
    "add_generation_prompt, tail", [(True, "<|start_header_id|>assistant<|end_header_id|>\n\n"), (False, "")]
)
def test_llama31_renders_conversation(llama31: ChatTemplate, add_generation_prompt: bool, tail: str):
    rendered = llama31.render(CONVERSATION, add_generation_prompt=add_generation_prompt)
    assert rendered == LLAMA31_CONVERSATION + tail


def test_extra_variables_reach_the_template(llama31: ChatTemplate):
    rendered = llama31.render(CONVERSATION, date_string="01 Jan 2025")
    assert "Today Date: 01 Jan 2025\n\n" in rendered
    assert "26 Jul 2024" not in rendered


# --- content parts -------------------------------------------------------------------------------------


def _as_parts(messages: list[dict]) -> list[dict]:
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]


@pytest.mark.parametrize("name", ["smollm2", "qwen", "phi35", "llama31"])
def test_text_parts_render_as_string_content(name: str, request: pytest.FixtureRequest):
    template = request.getfixturevalue(name)
    assert template.render(_as_parts(CONVERSATION)) == template.render(CONVERSATION)


def test_several_text_parts_join_with_newline(smollm2: ChatTemplate):
    parts = [{"type": "text", "text": "Line one."}, {"type": "text", "text": "Line two."}]
    rendered = smollm2.render([CONVERSATION[0], {"role": "user", "content": parts}])
    assert rendered.endswith("<|im_start|>user\nLine one.\nLine two.<|im_end|>\n<|im_start|>assistant\n")


def test_template_that_only_iterates_parts_receives_them():
    template = ChatTemplate(
        "{% for m in messages %}{% for p in m.content %}[{{ p.text }}]{% endfor %}{% endfor %}"
    )
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert template.render([{"role": "user", "content": parts}]) == "[a][b]"


def test_rendering_leaves_callers_messages_unchanged(smollm2: ChatTemplate):
    messages = _as_parts(CONVERSATION)
    smollm2.render(messages)
    assert messages == _as_parts(CONVERSATION)


@pytest.mark.parametrize("kind", ["image_url", "input_audio", None])
def test_non_text_part_is_rejected_by_type(smollm2: ChatTemplate, kind: str | None):
    parts = [{"type": "text", "text": "Describe:"}, {"type": kind}]
    with pytest.raises(
        TemplateError, match=rf"messages\[0\]\.content\[1\]: content part type {kind!r} is not"
    ):
        smollm2.render([{"role": "user", "content": parts}])


# --- invalid messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "messages must not be empty"),
        ([{"content": "hi"}], "messages[0] has no 'role'"),
        ([CONVERSATION[1], {"role": 3, "content": "hi"}], "messages[1].role must be a string, got int"),
        (["hi"], "messages[0] must be an object, got str"),
        (
            [{"role": "user", "content": 42}],
            "messages[0].content must be a string or a list of parts, got int",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": 1}]}],
            "messages[0].content[0].text must be a string",
        ),
    ],
)
def test_invalid_messages_raise(smollm2: ChatTemplate, messages: list, message: str):
    with pytest.raises(TemplateError) as info:
        smollm2.render(messages)
    assert str(info.value) == message


def test_extra_cannot_shadow_template_variables(smollm2: ChatTemplate):
    with pytest.raises(TemplateError, match="template variable 'bos_token' cannot be passed as an extra"):
        smollm2.render(CONVERSATION, bos_token="<s>")


# --- template errors -----------------------------------------------------------------------------------


def test_raise_exception_carries_the_templates_message(gemma2: ChatTemplate):
    with pytest.raises(TemplateError) as info:
        gemma2.render(CONVERSATION)
    assert str(info.value) == "System role not supported"
    with pytest.raises(TemplateError) as info:
        gemma2.render([NO_SYSTEM[0], NO_SYSTEM[0]])
    assert str(info.value) == "Conversation roles must alternate user/assistant/user/assistant/..."


def test_gemma2_renders_alternating_turns(gemma2: ChatTemplate):
    assert gemma2.render(NO_SYSTEM) == (
        "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n4.<end_of_turn>\n"
        "<start_of_turn>user\nAnd 3+3?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_syntax_error_names_line_and_problem():
    with pytest.raises(TemplateError) as info:
        ChatTemplate("{% for m in messages %}\n{{ m.role }\n{% endfor %}")
    assert str(info.value) == "chat template syntax error at line 2: unexpected '}'"


def test_unknown_filter_is_a_syntax_error():
    with pytest.raises(
        TemplateError, match=r"^chat template syntax error at line 1: No filter named 'shout'\.$"
    ):
        ChatTemplate("{{ messages | shout }}")


def test_undefined_attribute_misuse_names_the_attribute():
    template = ChatTemplate("{% for m in messages %}\n{{ m.name + '!' }}{% endfor %}")
    with pytest.raises(TemplateError) as info:
        template.render(CONVERSATION)
    assert (
        str(info.value)
        == "chat template failed at line 2: UndefinedError: 'dict object' has no attribute 'name'"
    )


def test_python_error_inside_template_becomes_template_error():
    with pytest.raises(
        TemplateError, match=r"^chat template failed at line 1: ZeroDivisionError: division by zero$"
    ):
        ChatTemplate("{{ messages | length / 0 }}").render(CONVERSATION)


@pytest.mark.parametrize(
    "source, problem",
    [
        ("{{ ''.__class__.__mro__ }}", "access to attribute '__class__' of 'str' object is unsafe"),
        ("{{ ''.__class__ }}", "access to attribute '__class__' of 'str' object is unsafe"),
        ("{{ messages | attr('__len__') }}", "access to attribute '__len__' of 'list' object is unsafe"),
        ("{{ messages.append(1) }}", "access to attribute 'append' of 'list' object is unsafe"),
        ("{{ messages[0].update(role='x') }}", "access to attribute 'update' of 'dict' object is unsafe"),
    ],
)
def test_sandbox_violation_raises(source: str, problem: str):
    with pytest.raises(TemplateError) as info:
        ChatTemplate(source).render(CONVERSATION)
    assert str(info.value) == f"chat template failed at line 1: SecurityError: {problem}"


# --- environment: what template authors expect ---------------------------------------------------------


def test_tojson_behaves_like_hf():
    template = ChatTemplate(
        "{{ data | tojson }}|{{ data | tojson(indent=2) }}|{{ data | tojson(separators=(',', ':')) }}"
    )
    data = {"b": "é<&>", "a": [1, None]}
    assert template.render(CONVERSATION, data=data) == (
        '{"b": "é<&>", "a": [1, null]}|'
        '{\n  "b": "é<&>",\n  "a": [\n    1,\n    null\n  ]\n}|'
        '{"b":"é<&>","a":[1,null]}'
    )


def test_tojson_serialises_filter_generators():
    template = ChatTemplate("{{ messages | map(attribute='role') | tojson }}")
    assert template.render(CONVERSATION) == '["system", "user", "assistant", "user"]'


def test_loop_controls_namespace_and_strftime_now():
    source = (
        "{% set ns = namespace(users=0) %}"
        "{% for m in messages %}{% if m.role == 'assistant' %}{% break %}{% endif %}"
        "{% if m.role == 'user' %}{% set ns.users = ns.users + 1 %}{% endif %}{% endfor %}"
        "{{ ns.users }} {{ strftime_now('%Y') }}"
    )
    assert ChatTemplate(source).render(CONVERSATION) == f"1 {datetime.now().year}"


def test_trim_and_lstrip_blocks_as_hf():
    template = ChatTemplate(
        "{% for m in messages %}\n    {% if m.role == 'user' %}\n{{ m.content }};\n{% endif %}\n{% endfor %}"
    )
    assert template.render(CONVERSATION) == "What is 2+2?;\nAnd 3+3?;\n"


def test_generation_tag_renders_its_body():
    source = "{% for m in messages %}{% generation %}{{ m.role[0] }}{% endgeneration %}{% endfor %}"
    assert ChatTemplate(source).render(CONVERSATION) == "suau"


def test_compiled_template_is_cached():
    assert ChatTemplate(CHATML)._template is ChatTemplate(CHATML, bos_token="<s>")._template


# --- fallback ------------------------------------------------------------------------------------------


def test_fallback_is_chatml_when_metadata_has_no_template():
    template = ChatTemplate.from_metadata({"general.architecture": "llama"}, eos_token="</s>")
    assert template.is_fallback
    messages = [*NO_SYSTEM[:2], {"role": "assistant", "content": None}]
    assert template.render(messages) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4.<|im_end|>\n"
        "<|im_start|>assistant\n<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_from_metadata_uses_the_files_template(smollm2_path: Path):
    template = ChatTemplate.from_metadata({"tokenizer.chat_template": _gguf_template(smollm2_path)})
    assert not template.is_fallback
    assert template.render(CONVERSATION, add_generation_prompt=False) == CHATML_CONVERSATION


def test_from_metadata_rejects_a_non_string_template():
    with pytest.raises(TemplateError, match=r"^tokenizer\.chat_template must be a string, got int$"):
        ChatTemplate.from_metadata({"tokenizer.chat_template": 7})


# --- every template llama.cpp ships --------------------------------------------------------------------

TEMPLATE_NAMES = sorted(p.name for p in (llama_cpp_models_dir() / "templates").glob("*.jinja"))


# Templates that cannot render a conversation without tools, and why (any other template must render it)
NEEDS_TOOLS = {
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja": "'NoneType' object is not iterable",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": "'NoneType' object is not iterable",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": "'NoneType' object is not iterable",
    "fireworks-ai-llama-3-firefunction-v2.jinja": "'functions' is undefined",
}


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_shipped_template_renders_or_raises_template_error(llama_cpp_models: Path, name: str):
    template = _file_template(llama_cpp_models, name, bos_token="<s>", eos_token="</s>")
    if name in NEEDS_TOOLS:
        with pytest.raises(TemplateError, match=re.escape(NEEDS_TOOLS[name])):
            template.render(NO_SYSTEM[:3])
        return
    rendered = template.render(NO_SYSTEM[:3])
    assert "What is 2+2?" in rendered and "And 3+3?" in rendered


def test_templates_that_need_tools_are_shipped():
    assert set(NEEDS_TOOLS) <= set(TEMPLATE_NAMES)


# Where transformers fails and we render: transformers' bug, not a difference to hide
# (deepseek-r1 passes a generator to tojson; jinja2's own tojson and ours accept it)
TRANSFORMERS_FAILS = {
    ("llama-cpp-deepseek-r1.jinja", True): "Object of type generator is not JSON serializable"
}


@pytest.mark.oracle
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_shipped_template_matches_transformers(llama_cpp_models: Path, name: str):
    """Ours renders what transformers renders, byte for byte, and fails (TemplateError, the same
    message) where it fails; every template is compared on at least one conversation."""
    from transformers.utils import chat_template_utils  # a test dependency: missing, the test fails

    source = (llama_cpp_models / "templates" / name).read_text()
    template = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    compared = 0
    for messages, tools in [(CONVERSATION, None), (NO_SYSTEM, None), (CONVERSATION, [WEATHER_TOOL])]:
        for add_generation_prompt in (True, False):
            options = dict(tools=tools, add_generation_prompt=add_generation_prompt)
            try:
                rendered, _ = chat_template_utils.render_jinja_template(
                    [messages], chat_template=source, bos_token="<s>", eos_token="</s>", **options
                )
            except Exception as exc:  # noqa: BLE001 - compared below: we must fail the same way
                known = TRANSFORMERS_FAILS.get((name, tools is not None))
                if known is not None:
                    assert known in str(exc)
                    template.render(messages, **options)  # and ours renders
                    continue
                with pytest.raises(TemplateError) as ours:
                    template.render(messages, **options)
                assert str(exc) in str(ours.value)
                continue
            assert template.render(messages, **options) == rendered[0]
            compared += 1
    assert compared > 0 or name in NEEDS_TOOLS, f"transformers renders none of the conversations with {name}"
