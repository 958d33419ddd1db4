"""Speculative decoding: greedy decode speed of one model alone, with a draft model and with n-gram lookup,
single-stream and 16 streams, in-process on the engine (no HTTP), every output checked equal to plain
decoding's (greedy exactness).

    python -m bench.speculative [--model qwen2.5-coder-1.5b] [--draft qwen2.5-coder-0.5b] [--backend cpu]
        [--tokens 128] [--streams 16] [--num-draft-tokens 4] [--draft-token-budget 8]

Rows: the code prompt alone, with the draft model, with n-gram lookup; the "edit this code" prompt alone
and with n-gram lookup (its output repeats most of the prompt); then --streams streams of the code prompt
(each with its own leading tag) alone, with the draft and with n-gram lookup. Decode tok/s counts the
tokens after the first one over the time after it (prefill excluded); streams: all tokens over the wall time.
"""

import argparse
import time

from bench.machine import describe, load_average, print_table
from inference.engine.engine import Engine, EngineConfig
from inference.forward_config import AdapterForwardConfig, SamplingParams
from inference.gguf.registry import resolve_model
from inference.model.backends import BackendConfig
from inference.model.loaded import LoadedModel

CODE = """Write a Python function `parse_csv(path)` that reads a CSV file with a header row and returns a
list of dicts, converting numeric fields to int or float. Answer with the code only."""
EDIT_SOURCE = """def summarize(orders):
    total = 0
    count = 0
    largest = None
    for order in orders:
        amount = order["price"] * order["quantity"]
        total += amount
        count += 1
        if largest is None or amount > largest:
            largest = amount
    average = total / count if count else 0
    return {"total": total, "count": count, "largest": largest, "average": average}
"""
EDIT = f"Rename the variable `amount` to `order_value` in this code and change nothing else:\n\n{EDIT_SOURCE}"


def prompt_ids(model: LoadedModel, text: str) -> tuple[int, ...]:
    """The chat-template prompt of one user message (an instruct model answers it), else the text."""
    if not model.chat_template.is_fallback:
        rendered = model.chat_template.render([{"role": "user", "content": text}])
        return tuple(model.tokenizer.encode(rendered, allow_special=True, add_bos=False))
    return tuple(model.tokenizer.encode(text))


def decode(engine: Engine, prompts: list[tuple[int, ...]], tokens: int) -> tuple[dict, float, float]:
    """(request id -> output ids, decode tok/s after each first token (single stream), tok/s overall)."""
    for i, ids in enumerate(prompts):
        engine.add_request(
            AdapterForwardConfig(
                request_id=f"r{i}", prompt_ids=ids, max_tokens=tokens, ignore_eos=True,
                sampling=SamplingParams(temperature=0.0),
            )
        )  # fmt: skip
    out: dict[str, list[int]] = {}
    start = time.perf_counter()
    first = None
    while engine.has_unfinished():
        for ev in engine.step():
            out.setdefault(ev.request_id, []).extend(ev.token_ids)
        first = first or time.perf_counter()
    end = time.perf_counter()
    total = sum(len(v) for v in out.values())
    return out, (total - len(prompts)) / (end - first), total / (end - start)


def measure(name, target, draft, ngram, prompts, args, baseline=None) -> dict:
    config = EngineConfig(
        max_num_seqs=max(args.streams, 1), kv_cache_tokens=args.kv_cache_tokens, ngram_draft=ngram,
        num_draft_tokens=args.num_draft_tokens, draft_token_budget=args.draft_token_budget,
    )  # fmt: skip
    engine = Engine(target, config, draft=draft)
    decode(engine, prompts[:1], 4)  # warm-up: first-call costs out of the timing
    before = engine.stats()
    out, single, overall = decode(engine, prompts, args.tokens)
    s = engine.stats()
    proposed = s.draft_tokens_proposed - before.draft_tokens_proposed
    accepted = s.draft_tokens_accepted - before.draft_tokens_accepted
    rate = single if len(prompts) == 1 else overall
    row = {
        "run": name,
        "streams": len(prompts),
        "tok/s": rate,
        "speed-up": rate / baseline[1] if baseline else 1.0,
        "proposed": proposed,
        "acceptance": accepted / proposed if proposed else 0.0,
        "same output": "-" if baseline is None else str(out == baseline[0]).lower(),
    }
    return row, (out, rate)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--backend", default="cpu", choices=["cpu", "numpy", "cuda"])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=128, help="greedy tokens per stream")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--num-draft-tokens", type=int, default=4)
    parser.add_argument("--draft-token-budget", type=int, default=8)
    parser.add_argument("--kv-cache-tokens", type=int, default=16384)
    args = parser.parse_args()
    print(describe())
    print(f"load average before: {load_average()}")
    backend = BackendConfig(name=args.backend, threads=args.threads)
    target = LoadedModel.load(resolve_model(args.model), backend)
    draft = LoadedModel.load(resolve_model(args.draft), backend)
    code, edit = prompt_ids(target, CODE), prompt_ids(target, EDIT)
    rows = []
    for label, prompt, proposers in (("code", code, ("draft", "ngram")), ("edit", edit, ("ngram",))):
        row, base = measure(f"{label}: {args.model}", target, None, False, [prompt], args)
        rows.append(row)
        for p in proposers:
            name = f"{label}: + {args.draft}" if p == "draft" else f"{label}: + n-gram"
            rows.append(
                measure(name, target, draft if p == "draft" else None, p == "ngram", [prompt], args, base)[0]
            )
    streams = [prompt_ids(target, f"({i}) {CODE}") for i in range(args.streams)]
    row, base = measure(f"code x{args.streams}: {args.model}", target, None, False, streams, args)
    rows.append(row)
    rows.append(
        measure(f"code x{args.streams}: + {args.draft}", target, draft, False, streams, args, base)[0]
    )
    rows.append(measure(f"code x{args.streams}: + n-gram", target, None, True, streams, args, base)[0])
    print(
        f"\n{args.model} on {args.backend}, greedy, {args.tokens} tokens per stream, "
        f"K = {args.num_draft_tokens}, draft_token_budget = {args.draft_token_budget}\n"
    )
    print_table(rows, ".2f")
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
