"""Scheduler: which tokens of which sequences run in the next step, under a token and a block budget."""

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, Status


@dataclass
class Scheduled:
    seq: Sequence
    num_tokens: int  # tokens of this sequence in the step (1 for decode, a chunk for prefill)
    copies: list[tuple[int, int]]  # (src, dst) KV blocks to copy before the step (copy-on-write)
    draft: list[int] = field(default_factory=list)  # proposed tokens run after the last one, to verify

    @property
    def completes(self) -> bool:
        """The step reaches the end of the sequence's tokens, so a next token is sampled."""
        return self.seq.num_computed + self.num_tokens - len(self.draft) == self.seq.num_tokens


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_cached_tokens = 0  # tokens whose KV came from the prefix cache at admission

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self, drafts: Mapping[int, list[int]] | None = None) -> list[Scheduled]:
        """One step's work under the token budget, in this order: every decoding sequence (one token
        each, plus the tokens `drafts` proposes for it by seq_id, as far as budget and free blocks allow
        without preempting), then waiting sequences admitted with their first prefill chunk, then the
        next chunks of prompts already being prefilled. A short request that arrives during a long
        prompt's prefill thus starts at the next step instead of after the whole prompt."""
        budget = self.max_num_batched_tokens
        out: list[Scheduled] = []
        prefilling = [s for s in self.running if s.num_pending > 1]
        decoding = [s for s in self.running if s.num_pending <= 1]
        for i, seq in enumerate(decoding):
            if seq not in self.running or budget == 0:
                continue  # preempted by an earlier sequence of this loop
            draft = self._fit_draft(seq, (drafts or {}).get(seq.seq_id, []), budget - (len(decoding) - i))
            copies = self._reserve_or_preempt(seq, 1 + len(draft))
            if copies is None:
                continue
            out.append(Scheduled(seq, 1 + len(draft), copies, draft))
            budget -= 1 + len(draft)
        budget = self._admit(out, budget)
        for seq in prefilling:
            if seq not in self.running or budget == 0:
                continue
            n = min(seq.num_pending, budget)
            cow = self._needs_cow(seq)
            if (
                self.blocks.blocks_needed(seq.block_table, seq.num_computed + n) + int(cow)
                > self.blocks.num_free
            ):
                continue  # no room this step; decodes preempt when they need blocks, prefills wait
            copies = [self.blocks.replace(seq.block_table, len(seq.block_table) - 1)] if cow else []
            self.blocks.grow(seq.block_table, seq.num_computed + n)
            out.append(Scheduled(seq, n, copies))
            budget -= n
        return out

    def _admit(self, out: list[Scheduled], budget: int) -> int:
        """Waiting sequences start, in arrival order, while budget, sequence slots and blocks last."""
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if len(self.running) + self._group_size(seq) > self.max_num_seqs:
                break
            self._take_cached_prefix(seq)
            n = min(seq.num_pending, budget)
            if not self.blocks.can_grow(seq.block_table, seq.num_computed + n):
                self.blocks.free(seq.block_table)  # back to waiting as it was
                seq.num_computed = seq.num_registered = 0
                break
            self.waiting.popleft()
            self.num_cached_tokens += seq.num_computed  # all of it from the cache, at admission
            if seq.num_output == 0:  # the first admission (a preempted one recomputes, unreported)
                seq.num_cached_prompt = seq.num_computed
            self.blocks.grow(seq.block_table, seq.num_computed + n)
            seq.status = Status.RUNNING
            self.running.append(seq)
            out.append(Scheduled(seq, n, []))
            budget -= n
        return budget

    def _take_cached_prefix(self, seq: Sequence) -> None:
        """A sequence about to start: its leading full blocks found in the prefix cache count as computed.
        The last token is always run, since its logits give the next token."""
        if seq.num_computed or seq.block_table or seq.wants_prompt_logprobs:
            return
        bs = self.blocks.block_size
        seq.block_table = self.blocks.lookup(seq.block_hashes((seq.num_tokens - 1) // bs, bs))
        seq.num_registered = len(seq.block_table)
        seq.num_computed = len(seq.block_table) * bs

    def register_computed(self, seq: Sequence) -> None:
        """Puts the sequence's newly completed full blocks into the prefix cache."""
        full = seq.num_computed // self.blocks.block_size
        if full <= seq.num_registered or not self.blocks.prefix_caching:
            return
        hashes = seq.block_hashes(full, self.blocks.block_size)
        for i in range(seq.num_registered, full):
            self.blocks.register(seq.block_table[i], hashes[i])
        seq.num_registered = full

    def _fit_draft(self, seq: Sequence, draft: list[int], spare: int) -> list[int]:
        """The proposals that fit `spare` tokens of budget and the free blocks (never preempting for them)."""
        draft = draft[: max(spare, 0)]
        cow = int(self._needs_cow(seq))
        while draft and (
            self.blocks.blocks_needed(seq.block_table, seq.num_computed + 1 + len(draft)) + cow
            > self.blocks.num_free
        ):
            draft = draft[:-1]
        return draft

    @staticmethod
    def _group_size(seq: Sequence) -> int:
        # a sequence that will still fork its n - 1 siblings needs room for all of them
        return 1 + len(seq.followers)

    def _reserve_or_preempt(self, seq: Sequence, n: int) -> list[tuple[int, int]] | None:
        """Blocks for n more tokens (copy-on-write for a shared last block); preempt others if short."""
        while True:
            cow = self._needs_cow(seq)
            need = self.blocks.blocks_needed(seq.block_table, seq.num_computed + n) + int(cow)
            if need <= self.blocks.num_free:
                copies = [self.blocks.replace(seq.block_table, len(seq.block_table) - 1)] if cow else []
                self.blocks.grow(seq.block_table, seq.num_computed + n)
                return copies
            victim = self.running[-1]  # the latest admitted goes back to waiting
            self.preempt(victim)
            if victim is seq:
                return None

    def _needs_cow(self, seq: Sequence) -> bool:
        bs = self.blocks.block_size
        writes_into_last = seq.num_computed % bs != 0 and len(seq.block_table) * bs > seq.num_computed
        return writes_into_last and self.blocks.is_shared(seq.block_table[-1])

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.block_table)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Child shares the parent's computed KV blocks and runs beside it."""
        child.block_table = self.blocks.share(parent.block_table)
        child.num_computed = parent.num_computed
        child.hashes, child.num_registered = list(parent.hashes), parent.num_registered
        child.num_cached_prompt = parent.num_cached_prompt
        child.status = Status.RUNNING
        self.running.append(child)

    def finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq.block_table)
        seq.status = Status.FINISHED
