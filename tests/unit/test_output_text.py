"""OutputText: stop strings matched on text across token boundaries; held-back text released."""

import pytest

from inference.text.output_text import OutputText


class PieceDetokenizer:
    """Test double: token id i decodes to pieces[i] (the real detokenizer is tested with the tokenizer)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def push(self, token_id):
        return self.pieces[token_id]

    def flush(self):
        return ""


def run(pieces, stop, include=False):
    out = OutputText(PieceDetokenizer(pieces), tuple(stop), include)
    emitted, stopped = [], False
    for i in range(len(pieces)):
        text, stopped = out.push(i)
        emitted.append(text)
        if stopped:
            break
    if not stopped:
        emitted.append(out.finish())
    return emitted, stopped


@pytest.mark.parametrize(
    ("pieces", "stop", "include", "text", "stopped"),
    [
        (["Hel", "lo", " wor", "ld"], [], False, "Hello world", False),
        (["Hel", "lo", " wor", "ld"], ["wor"], False, "Hello ", True),
        (["Hel", "lo", " wor", "ld"], ["lo w"], False, "Hel", True),  # spans three tokens
        (["Hel", "lo", " wor", "ld"], ["lo w"], True, "Hello w", True),
        (["a", "b", "c"], ["cd"], False, "abc", False),  # partial match at the end is released
        (["a", "b", "c"], ["x", "b"], False, "a", True),
        (["ab", "cd"], ["bc", "abc"], False, "", True),  # earliest match wins
    ],
)
def test_stop_strings(pieces, stop, include, text, stopped):
    emitted, did_stop = run(pieces, stop, include)
    assert "".join(emitted) == text
    assert did_stop == stopped


def test_only_possible_stop_prefixes_are_held_back():
    out = OutputText(PieceDetokenizer(["The end", "ing"]), ("END",))
    assert out.push(0) == ("The end", False)  # "d" is not a prefix of "END": nothing held
    out2 = OutputText(PieceDetokenizer(["The E", "ND"]), ("END",))
    assert out2.push(0) == ("The ", False)  # "E" might start "END"
    assert out2.push(1) == ("", True)
