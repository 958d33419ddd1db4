"""Whether two GGUF vocabularies are one: a draft model's token ids must mean the target's tokens."""

from .tokenizer import Tokenizer


def vocabulary_difference(target: Tokenizer, draft: Tokenizer) -> str | None:
    """What differs between two vocabularies (token count, special ids, the first differing token); None
    when nothing does."""
    if target.vocab_size != draft.vocab_size:
        return f"the target has {target.vocab_size} tokens, the draft {draft.vocab_size}"
    for name in ("bos_id", "eos_id", "eog_ids"):
        a, b = getattr(target, name), getattr(draft, name)
        if a != b:
            return f"{name} is {_shown(a)} in the target, {_shown(b)} in the draft"
    text_a, text_b = target.text_token_bytes(), draft.text_token_bytes()  # None: a special token
    for i in range(target.vocab_size):
        if text_a[i] != text_b[i] or target.token_bytes(i) != draft.token_bytes(i):
            kind = {True: "special", False: "text"}
            return (
                f"token {i} is {target.token_bytes(i)!r} ({kind[text_a[i] is None]}) in the target, "
                f"{draft.token_bytes(i)!r} ({kind[text_b[i] is None]}) in the draft"
            )
    return None


def _shown(value) -> str:
    return str(sorted(value)) if isinstance(value, frozenset) else str(value)
