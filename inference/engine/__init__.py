"""The engine: scheduler, block manager, sequences, sampler, KV cache, the worker process."""
