"""Run as a child process: load an Engine, fill its KV cache and one full batch, print RSS and estimate."""

import json
import sys

import numpy as np

from inference.engine import memory
from inference.engine.engine import Engine, EngineConfig
from inference.forward_config import AdapterForwardConfig, SamplingParams
from inference.gguf.loader import load_gguf
from inference.gguf.model_config import ModelConfig


def status_bytes(field: str) -> int:
    # VmRSS: resident now; VmHWM: the peak resident set (what the estimate must cover)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def main(path: str, backend: str, kv_tokens: int, batch_tokens: int) -> None:
    config = EngineConfig(kv_cache_tokens=kv_tokens, max_num_batched_tokens=batch_tokens)
    engine = Engine.load(path, backend=backend, config=config)
    gguf = load_gguf(path)
    est = memory.estimate(gguf, ModelConfig.from_gguf(gguf), engine.loaded.backend, kv_tokens, batch_tokens)
    prompt = tuple(int(i) for i in np.random.default_rng(0).integers(100, 1000, batch_tokens))
    request = AdapterForwardConfig(
        request_id="fill",
        prompt_ids=prompt,
        max_tokens=1,
        sampling=SamplingParams(temperature=0.0),
        prompt_logprobs=1,  # logits of every row: the worst case the estimate models
    )
    for cache in engine.runner.kv.k + engine.runner.kv.v:
        cache.fill(0)  # every page of the cache resident, as in a server whose cache has filled up
    engine.add_request(request)  # then one full batch whose every row wants logits: the peak
    while engine.has_unfinished():
        engine.step()
    print(json.dumps({"rss": status_bytes("VmRSS"), "peak": status_bytes("VmHWM"), "estimate": est.total}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
