"""Prefix caching: time to first token of chat requests that share a long system prompt, with the
cache off and on (engine only, NumPy backend, greedy, one token each).

The first request of each engine computes the whole prompt; the next ones differ only in the user's
question, so with the cache they compute just the blocks after the system prompt.

    .venv/bin/python -m bench.prefix_cache [--model smollm2-135m] [--system-repeats 50] [--requests 5]
"""

import argparse
import statistics
import time

from bench.machine import describe, load_average, print_table
from inference.adapter import InferenceAdapter
from inference.engine.engine import Engine, EngineConfig
from inference.forward_config import AdapterForwardConfig, SamplingParams
from inference.gguf.registry import resolve_model

SYSTEM_LINE = "You are a helpful assistant for a hardware store. "


def time_to_first_token(engine: Engine, adapter: InferenceAdapter, system: str, question: str, rid: str):
    """(milliseconds until the request's one token is out, prompt tokens)."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    ids = adapter.tokenizer.encode(adapter.chat_template.render(messages), allow_special=True, add_bos=False)
    cfg = AdapterForwardConfig(
        request_id=rid, prompt_ids=tuple(ids), max_tokens=1, sampling=SamplingParams(temperature=0.0)
    )
    start = time.perf_counter()
    engine.add_request(cfg)
    while engine.has_unfinished():
        engine.step()
    return (time.perf_counter() - start) * 1e3, len(ids)


def run(adapter: InferenceAdapter, caching: bool, system: str, requests: int) -> dict:
    engine = Engine(adapter.loaded, EngineConfig(prefix_caching=caching))
    first, n = time_to_first_token(engine, adapter, system, "Do you sell hammers?", "first")
    questions = [f"Do you sell item {i}?" for i in range(requests)]
    later = [time_to_first_token(engine, adapter, system, q, f"r{i}")[0] for i, q in enumerate(questions)]
    return {
        "prefix_caching": "on" if caching else "off",
        "prompt tokens": n,
        "first TTFT ms": first,
        f"next {requests} TTFT ms (median)": statistics.median(later),
        "cached tokens": engine.stats().cached_prompt_tokens,
    }


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--system-repeats", type=int, default=50, help="copies of the system prompt's line")
    parser.add_argument("--requests", type=int, default=5, help="requests after the first, per setting")
    args = parser.parse_args()
    print(describe())
    print(f"load average before: {load_average()}")
    adapter = InferenceAdapter.load(resolve_model(args.model))
    system = SYSTEM_LINE * args.system_repeats
    print(f"\n{args.model}: chat requests sharing one system prompt, 1 greedy token each\n")
    print_table([run(adapter, caching, system, args.requests) for caching in (False, True)], ".0f")
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
