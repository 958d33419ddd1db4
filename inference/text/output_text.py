"""Turns sampled tokens into UTF-8-safe text deltas and cuts at stop strings across token boundaries."""


class OutputText:
    """Holds back only text that could still be the start of a stop string."""

    def __init__(self, detokenizer, stop: tuple[str, ...], include_stop: bool = False):
        self._detok = detokenizer
        self._stop = tuple(s for s in stop if s)
        self._include_stop = include_stop
        self._pending = ""  # decoded, not yet emitted
        self.text = ""  # everything emitted so far

    def push(self, token_id: int) -> tuple[str, bool]:
        """Adds one token; returns (text to emit now, whether a stop string matched)."""
        self._pending += self._detok.push(token_id)
        hit = self._first_stop()
        if hit is not None:
            start, stop = hit
            end = start + len(stop) if self._include_stop else start
            return self._emit(self._pending[:end], keep=""), True
        keep = self._partial_suffix_len()
        cut = len(self._pending) - keep
        return self._emit(self._pending[:cut], keep=self._pending[cut:]), False

    def finish(self) -> str:
        """Flushes what was held back (the sequence ended for another reason)."""
        self._pending += self._detok.flush()
        hit = self._first_stop()
        if hit is not None:
            start, stop = hit
            end = start + len(stop) if self._include_stop else start
            return self._emit(self._pending[:end], keep="")
        return self._emit(self._pending, keep="")

    def _emit(self, out: str, keep: str) -> str:
        self._pending = keep
        self.text += out
        return out

    def _first_stop(self) -> tuple[int, str] | None:
        best = None
        for s in self._stop:
            i = self._pending.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        return best

    def _partial_suffix_len(self) -> int:
        # longest suffix of pending that is a proper prefix of some stop string
        longest = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(s[:n]):
                    longest = n
                    break
        return longest
