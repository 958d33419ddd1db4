"""The draft model of speculative decoding: a smaller model with the target's vocabulary, in the same worker
with its own KV cache, proposing each sequence's next k tokens (its argmax, one forward per token over
every sequence at once) while it is confident of them (probability >= draft_p_min, as llama.cpp's p_min)."""

from collections.abc import Sequence as Seq

import numpy as np

from ..errors import DraftModelError
from ..model.loaded import LoadedModel
from ..text.tokenizer import Tokenizer
from ..text.vocab_compare import vocabulary_difference
from .block_manager import BlockManager
from .config import EngineConfig
from .model_runner import ModelRunner
from .scheduler import Scheduled
from .sequence import Sequence


class _DraftSeq:
    """The draft's copy of one target sequence: its tokens (committed ones, then the latest proposals) and
    how many of them have K/V in the draft's cache; what ModelRunner.build_batch reads of a sequence."""

    wants_prompt_logprobs = False

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id  # the target sequence's
        self.token_ids: list[int] = []
        self.num_computed = 0
        self.block_table: list[int] = []
        self.num_committed = 0  # leading token_ids known equal to the target sequence's

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_pending(self) -> int:
        return self.num_tokens - self.num_computed

    def sync(self, target: list[int]) -> None:
        """Takes the target's tokens; the K/V stands up to the first token that differs (a rejected
        proposal), and the last token always runs again, since its logits give the first proposal."""
        common, end = self.num_committed, min(len(self.token_ids), len(target))
        while common < end and self.token_ids[common] == target[common]:
            common += 1
        self.num_computed = min(self.num_computed, common, len(target) - 1)
        self.token_ids = list(target)
        self.num_committed = len(target)


class DraftModelProposer:
    """Proposes with a draft model; start-up stops (DraftModelError) when its vocabulary is not the
    target's, since its token ids would mean other tokens."""

    def __init__(self, draft: LoadedModel, target_tokenizer: Tokenizer, config: EngineConfig):
        diff = vocabulary_difference(target_tokenizer, draft.tokenizer)
        if diff is not None:
            raise DraftModelError(f"the draft model {draft.path.name} cannot draft for this model: {diff}")
        num_blocks = config.kv_cache_tokens // config.block_size
        self.runner = ModelRunner(draft, num_blocks, config.block_size)
        self.blocks = BlockManager(num_blocks, config.block_size, prefix_caching=False)
        self.batch_tokens = config.max_num_batched_tokens
        self.p_min = config.draft_p_min
        self.num_tokens = target_tokenizer.vocab_size  # ids with a token (the draft's padding excluded)
        self._seqs: dict[int, _DraftSeq] = {}  # target seq_id -> the draft's copy

    def propose(self, wanted: Seq[tuple[Sequence, int]]) -> dict[int, list[int]]:
        todo: dict[int, int] = {}  # seq_id -> proposals still to make
        for seq, k in wanted:
            self._seqs.setdefault(seq.seq_id, _DraftSeq(seq.seq_id)).sync(seq.token_ids)
            todo[seq.seq_id] = k
        while todo:
            self._forward(todo)
        return {s.seq_id: self._seqs[s.seq_id].token_ids[s.num_tokens :] for s, _ in wanted}

    def _forward(self, todo: dict[int, int]) -> None:
        """One draft forward: each sequence runs its pending tokens (a chunk of them, under the token
        budget), and one that reaches its end appends its argmax as the next proposal."""
        items, budget = [], self.batch_tokens
        for seq_id in list(todo):
            d = self._seqs[seq_id]
            n = min(d.num_pending, budget)
            if n == 0:
                break
            if not self.blocks.can_grow(d.block_table, d.num_computed + n):
                del todo[seq_id]  # the draft's cache is full: this sequence proposes what it has
                continue
            self.blocks.grow(d.block_table, d.num_computed + n)
            items.append(Scheduled(d, n, []))
            budget -= n
        if not items:
            return
        logits, rows = self.runner.run(items)  # [N, V]
        for item, seq_rows in zip(items, rows, strict=True):
            d = item.seq
            d.num_computed += item.num_tokens
            if not seq_rows:
                continue  # a prefill chunk short of the end
            row = logits[seq_rows[-1], : self.num_tokens]  # [V]
            best = int(np.argmax(row))
            if 1.0 / np.exp(row - row[best], dtype=np.float64).sum() < self.p_min:
                del todo[d.seq_id]  # unsure of it: the proposals end before it
                continue
            d.token_ids.append(best)
            todo[d.seq_id] -= 1
            if todo[d.seq_id] == 0:
                del todo[d.seq_id]

    def release(self, seq: Sequence) -> None:
        d = self._seqs.pop(seq.seq_id, None)
        if d is not None:
            self.blocks.free(d.block_table)
