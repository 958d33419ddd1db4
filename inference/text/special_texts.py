"""Special-token texts in a string: where they occur (leftmost, longest first, as llama.cpp matches
them) and where one may begin at the string's end. Scanned in slices, so that no single regex call
holds the GIL for long on a multi-megabyte prompt (the event loop's thread would wait for it)."""

import itertools
import re
from collections.abc import Iterable, Iterator

SLICE_CHARS = 1 << 16  # one regex call scans at most this much (about 2 ms)


class SpecialTexts:
    """The texts of a vocabulary's special tokens (control, user-defined, unknown)."""

    def __init__(self, texts: Iterable[str]):
        self.texts = frozenset(t for t in texts if t)
        ordered = sorted(self.texts, key=len, reverse=True)
        firsts = "".join(sorted({re.escape(t[0]) for t in ordered}))
        # the lookahead lets `re` skip most positions fast
        self._re = re.compile(f"(?=[{firsts}])(?:{'|'.join(map(re.escape, ordered))})") if ordered else None
        self._first = re.compile(f"[{firsts}]") if ordered else None
        self._heads = frozenset(t[:k] for t in ordered for k in range(1, len(t)))
        self._longest = len(ordered[0]) if ordered else 0

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        """[start, end) of every special-token text in `text`, as one finditer over it would find them."""
        if self._re is None:
            return
        pos, n = 0, len(text)
        while pos < n:
            cut = min(pos + SLICE_CHARS, n)
            resume = cut
            for match in self._re.finditer(text, pos, min(cut + self._longest - 1, n)):
                if match.start() >= cut:
                    break  # the next slice finds it
                yield match.span()
                resume = max(resume, match.end())
            pos = resume

    def starts(self, text: str) -> list[int]:
        """Where special-token texts start in `text`, and where a tail of it begins one (text that
        whatever follows the string could complete)."""
        if self._re is None:
            return []
        found = [a for a, _ in self.spans(text)]
        tail = max(len(text) - self._longest + 1, found[-1] + 1 if found else 0)
        heads = (m.start() for m in self._first.finditer(text, tail) if text[m.start() :] in self._heads)
        return found + list(itertools.islice(heads, 1))

    def first(self, strings: Iterable[str]) -> str | None:
        """The first special-token text in `strings`, if any."""
        for text in strings:
            for a, b in self.spans(text):
                return text[a:b]
        return None
