"""The draft model of speculative decoding: a smaller model with the target's vocabulary, in the same worker
with its own KV cache, proposing each sequence's next k tokens (its argmax, one forward per token over
every sequence at once; a sampled sequence draws from the draft's softmax at its temperature, with its own
Generator) while it is confident of them (top probability >= draft_p_min, as llama.cpp's p_min)."""

from collections.abc import Sequence as Seq

import numpy as np

from ..errors import DraftModelError
from ..model.loaded import LoadedModel
from ..text.tokenizer import Tokenizer
from ..text.vocab_compare import vocabulary_difference
from .block_manager import BlockManager
from .config import EngineConfig
from .model_runner import ModelRunner
from .proposer import Proposal
from .sampler import inverse_cdf
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
        self.probs: list[np.ndarray] = []  # [V] q of each proposal of this step (sampled sequences)

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
        self.probs = []


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

    def propose(self, wanted: Seq[tuple[Sequence, int]]) -> dict[int, Proposal]:
        todo: dict[int, int] = {}  # seq_id -> proposals still to make
        for seq, k in wanted:
            self._seqs.setdefault(seq.seq_id, _DraftSeq(seq.seq_id)).sync(seq.token_ids)
            todo[seq.seq_id] = k
        sampling = {s.seq_id: s.sampling for s, _ in wanted}
        while todo:
            self._forward(todo, sampling)
        return {s.seq_id: self._proposal(s) for s, _ in wanted}

    def _proposal(self, seq: Sequence) -> Proposal:
        d = self._seqs[seq.seq_id]
        return Proposal(d.token_ids[seq.num_tokens :], np.stack(d.probs) if d.probs else None)

    def _forward(self, todo: dict[int, int], sampling: dict) -> None:
        """One draft forward: each sequence runs its pending tokens (a chunk of them, under the token
        budget), and one that reaches its end appends its next proposal."""
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
            token = self._pick(d, logits[seq_rows[-1], : self.num_tokens], sampling[d.seq_id])
            if token is None:
                del todo[d.seq_id]  # unsure of it: the proposals end before it
                continue
            d.token_ids.append(token)
            todo[d.seq_id] -= 1
            if todo[d.seq_id] == 0:
                del todo[d.seq_id]

    def _pick(self, d: _DraftSeq, row: np.ndarray, state) -> int | None:
        """The next proposal from the draft's logits [V]: the argmax for a greedy sequence, else a draw
        from softmax(row / T) (its q kept); None when the draft's top probability is under p_min."""
        if state.greedy:
            best = int(np.argmax(row))
            return best if 1.0 / np.exp(row - row[best], dtype=np.float64).sum() >= self.p_min else None
        q = np.exp((row - row.max()) / state.params.temperature, dtype=np.float64)  # [V]
        q /= q.sum()
        if q.max() < self.p_min:
            return None
        d.probs.append(q)
        return inverse_cdf(q, state.rng.random())

    def release(self, seq: Sequence) -> None:
        d = self._seqs.pop(seq.seq_id, None)
        if d is not None:
            self.blocks.free(d.block_table)
