"""Chat `tools`, `tool_choice` and `parallel_tool_calls` -> what the chat template renders, the grammar
that makes every call valid, and the tool-call syntax the output is parsed with."""

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from inference.errors import RequestError
from inference.text.grammar import GrammarSpec, check_grammar
from inference.text.tool_grammar import ToolGrammarRequest, tool_grammar
from inference.text.tool_syntax import ToolSyntax, syntax_of

from .protocol import AssistantMessage, ChatCompletionRequest, ChatTool, Message, NamedToolChoice

if TYPE_CHECKING:  # translate imports this module
    from .translate import ServedModel

_ANY_OBJECT: dict[str, Any] = {"type": "object"}  # a function without `parameters`


@dataclass(frozen=True)
class ToolUse:
    definitions: list[dict[str, Any]]  # the `tools` the chat template renders
    syntax: ToolSyntax | None  # parse calls out of the output with it; None (tool_choice none): no calls
    grammar: GrammarSpec | None  # None: tool_choice none


def tool_use(req: ChatCompletionRequest, model: "ServedModel") -> ToolUse | None:
    """None without tools; RequestError naming the parameter for anything this model cannot honour."""
    if not req.tools:
        if req.tool_choice is not None:
            raise RequestError("tool_choice is only allowed when tools are specified", "tool_choice")
        return None
    parameters = _parameters(req.tools)
    syntax = tool_syntax(model)
    definitions = [_definition(tool) for tool in req.tools]
    choice = "auto" if req.tool_choice is None else req.tool_choice
    if choice == "none":
        return ToolUse(definitions, None, None)
    functions = list(zip((t.function.name for t in req.tools), parameters, strict=True))
    if isinstance(choice, NamedToolChoice):
        functions = [f for f in functions if f[0] == choice.function.name]
        if not functions:
            raise RequestError(
                f"tool_choice names the function {choice.function.name!r}, which is not among the tools",
                "tool_choice",
            )
    grammar = tool_grammar(
        ToolGrammarRequest(
            syntax=syntax,
            functions=functions,
            required=choice != "auto",
            parallel=req.parallel_tool_calls is not False,
            special_ids=_special_ids(syntax, model.tokenizer),
        )
    )
    check_grammar(grammar)
    return ToolUse(definitions, syntax, grammar)


def tool_syntax(model: "ServedModel") -> ToolSyntax:
    """The call syntax of the model's chat template; 400 naming `tools` when it has none we know."""
    template = model.template
    if not template.renders_tools:
        raise RequestError(
            "this model's chat template does not render tool definitions (it never writes the `tools` it "
            "is given into the prompt), so the model cannot be offered tools",
            "tools",
        )
    syntax = syntax_of(template.source)
    if syntax is None:
        raise RequestError(
            "this model's chat template renders tools, but writes tool calls in a syntax this server does "
            "not know (known: Hermes <tool_call>, Llama 3.x JSON, Mistral [TOOL_CALLS], Phi-4-mini "
            "<|tool_call|>)",
            "tools",
        )
    return syntax


def _parameters(tools: list[ChatTool]) -> list[dict[str, Any]]:
    """Each tool's parameters schema, checked by llguidance; duplicate names refused."""
    seen: set[str] = set()
    out = []
    for i, tool in enumerate(tools):
        name, param = tool.function.name, f"tools[{i}].function"
        if name in seen:
            raise RequestError(f"{param}.name: the function name {name!r} appears twice", f"{param}.name")
        seen.add(name)
        schema = _ANY_OBJECT if tool.function.parameters is None else tool.function.parameters
        if schema.get("type", "object") != "object":
            raise RequestError(
                f"{param}.parameters must be a JSON Schema of an object (type 'object'), got type "
                f"{schema.get('type')!r}",
                f"{param}.parameters",
            )
        check_grammar(
            GrammarSpec(
                kind="json_schema", source=msgspec.json.encode(schema).decode(), param=f"{param}.parameters"
            )
        )
        out.append(schema)
    return out


def _definition(tool: ChatTool) -> dict[str, Any]:
    """A tool as templates read it (HF transformers' shape); unset fields left out."""
    function = {k: v for k, v in msgspec.structs.asdict(tool.function).items() if v is not None}
    function.pop("strict", None)
    return {"type": "function", "function": function}


def _special_ids(syntax: ToolSyntax, tokenizer) -> dict[str, int]:
    """The syntax's openings and closings that are one special token of this vocabulary."""
    ids = {text: tokenizer.special_token_id(text) for text in (syntax.open, syntax.close) if text}
    return {text: i for text, i in ids.items() if i is not None}


def check_tool_messages(messages: list[Message], model: "ServedModel") -> None:
    """Earlier tool calls in the conversation must reach the prompt: the template has to render them."""
    for i, m in enumerate(messages):
        if isinstance(m, AssistantMessage) and m.tool_calls and not model.template.renders_tool_calls:
            raise RequestError(
                f"messages[{i}].tool_calls: this model's chat template does not render tool calls",
                f"messages[{i}].tool_calls",
            )


def call_arguments(arguments: str, param: str) -> Any:
    """An earlier call's arguments (a JSON string in the API) as the object templates expect."""
    try:
        return json.loads(arguments)
    except json.JSONDecodeError as e:
        raise RequestError(f"{param} is not valid JSON: {e}", param) from None
