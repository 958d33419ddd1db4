"""How a chat template's model writes tool calls: one data table, chosen by matching the template source.

Each row says where calls open and close, whether several calls share one JSON array, and the key that
holds the arguments. The grammar (tool_grammar.py) and the parser (tool_calls.py) read only these rows;
neither branches on a model's name.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ToolSyntax:
    """One family's call syntax. A call's body is always `{"name": "<name>", "<args_key>": <object>}`."""

    name: str
    detect: tuple[str, ...]  # every one of these appears in the source of a template that writes it
    open: str  # what starts the calls ("": the calls are the whole output, from its first byte)
    close: str  # what ends them ("" : the end of the output)
    args_key: str  # "arguments" or "parameters"
    array: bool  # the calls are one JSON array between open and close (else each has its own open/close)
    pad: str = ""  # between open and a call's JSON, and between that JSON and close (not array)
    between: str = ""  # between two calls: after a close and the next open (not array)
    parallel: bool = True  # the syntax can carry more than one call
    id_chars: int = 0  # call ids the template accepts: 0 any ("call_" + 24 hex), else that many alphanumerics
    id_key: str = (
        ""  # a key after the arguments where the template writes a past call's id (parsed, not generated)
    )


# The order matters: the first row whose markers all appear wins (Hermes 3 on Llama 3.1 writes <tool_call>).
TOOL_SYNTAXES: tuple[ToolSyntax, ...] = (
    # Qwen2.5, Hermes 2 Pro / 3: <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>, one tag per call
    ToolSyntax(
        name="hermes",
        detect=("<tool_call>", "</tool_call>", "<function-name>", "arguments"),
        open="<tool_call>",
        close="</tool_call>",
        args_key="arguments",
        array=False,
        pad="\n",
        between="\n",
    ),
    # Mistral (Nemo, Small): [TOOL_CALLS][{"name": ..., "arguments": ...}, ...] then end of turn
    ToolSyntax(
        name="mistral",
        detect=("[TOOL_CALLS][",),
        open="[TOOL_CALLS]",
        close="",
        args_key="arguments",
        array=True,
        id_chars=9,  # Mistral's templates refuse any other id in the conversation
        id_key="id",
    ),
    # Phi-4-mini: <|tool_call|>[{"name": ..., "arguments": ...}, ...]<|/tool_call|>
    ToolSyntax(
        name="phi4-mini",
        detect=("<|tool_call|>", "<|/tool_call|>"),
        open="<|tool_call|>",
        close="<|/tool_call|>",
        args_key="arguments",
        array=True,
    ),
    # Llama 3.1-3.3 JSON tool calling: the whole reply is {"name": ..., "parameters": ...}, one call a turn
    ToolSyntax(
        name="llama3-json",
        detect=('{"name": "', '"parameters": ', "<|start_header_id|>"),
        open="",
        close="",
        args_key="parameters",
        array=False,
        parallel=False,
    ),
)


def syntax_of(template_source: str) -> ToolSyntax | None:
    """The table row whose markers the template source holds; None when no row matches."""
    return next((s for s in TOOL_SYNTAXES if all(m in template_source for m in s.detect)), None)
