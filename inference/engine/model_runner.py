"""Model runner: scheduled sequences -> one ForwardBatch -> the model's forward -> logits on the host."""

import numpy as np

from ..model.backends.base import AttentionSeq
from ..model.loaded import LoadedModel
from ..model.transformer import ForwardBatch
from .kv_cache import KVCache
from .scheduler import Scheduled


class ModelRunner:
    """Owns the KV cache; each run() packs prefill chunks and decode tokens of many sequences together."""

    def __init__(self, loaded: LoadedModel, num_blocks: int, block_size: int):
        self.model = loaded.model
        self.backend = loaded.backend
        self.block_size = block_size
        self.kv = KVCache(loaded.config, num_blocks, block_size, loaded.backend)

    def run(self, scheduled: list[Scheduled]) -> tuple[np.ndarray, list[list[int]]]:
        """Logits [N, V] of the rows the sequences want, and each sequence's rows of them."""
        self._copy_blocks(scheduled)
        batch, rows = self.build_batch(scheduled)
        return self.model.forward(batch, self.kv), rows

    def _copy_blocks(self, scheduled: list[Scheduled]) -> None:
        # copy-on-write: a shared last block is copied before a sequence writes into it
        for item in scheduled:
            for src, dst in item.copies:
                for k_cache, v_cache in zip(self.kv.k, self.kv.v, strict=True):
                    self.backend.copy_block(k_cache, v_cache, src, dst)

    def build_batch(self, scheduled: list[Scheduled]) -> tuple[ForwardBatch, list[list[int]]]:
        bs = self.block_size
        ids, positions, slots, seqs, logit_rows, rows = [], [], [], [], [], []
        start = 0
        for item in scheduled:
            s = item.seq
            pos = np.arange(s.num_computed, s.num_computed + item.num_tokens, dtype=np.int32)
            table = np.asarray(s.block_table, dtype=np.int32)
            ids.append(np.asarray((s.token_ids[s.num_computed :] + item.draft)[: item.num_tokens], np.int32))
            positions.append(pos)
            slots.append(table[pos // bs] * bs + pos % bs)
            context = s.num_computed + item.num_tokens
            seqs.append(AttentionSeq(start, item.num_tokens, context, table[: -(-context // bs)]))
            wanted = _wanted_rows(item, start)
            rows.append(list(range(len(logit_rows), len(logit_rows) + len(wanted))))
            logit_rows.extend(wanted)
            start += item.num_tokens
        batch = ForwardBatch(
            np.concatenate(ids),
            np.concatenate(positions),
            np.concatenate(slots).astype(np.int32),
            seqs,
            np.asarray(logit_rows, dtype=np.int64),
        )
        return batch, rows


def _wanted_rows(item: Scheduled, start: int) -> list[int]:
    """Rows whose logits we need: all prompt rows when prompt logprobs are asked, every row of a step that
    verifies proposed tokens (each row picks the token after it), else the last."""
    s = item.seq
    if s.wants_prompt_logprobs or item.draft:
        return list(range(start, start + item.num_tokens))
    return [start + item.num_tokens - 1] if item.completes else []
