"""Engine: continuous batching. step() = schedule -> one forward over the batch -> sample -> postprocess."""

from concurrent.futures import Future, ThreadPoolExecutor

import msgspec
import numpy as np

from ..errors import RequestError
from ..events import TokenEvent, TokenLogprobs
from ..forward_config import AdapterForwardConfig
from ..gguf.loader import load_gguf
from ..gguf.model_config import ModelConfig
from ..gguf.registry import resolve_model
from ..model.backends import BackendConfig, select_backend
from ..model.loaded import LoadedModel
from ..text.grammar import GrammarVocabulary
from ..text.output_text import OutputText
from . import memory
from .block_manager import BlockManager
from .config import EngineConfig
from .model_runner import ModelRunner
from .proposer import NgramProposer, Proposer
from .sampler import Sampler, SequenceSampling, top_logprobs
from .scheduler import Scheduled, Scheduler
from .sequence import Sequence
from .stats import EngineStats
from .verify import next_token


class Engine:
    def __init__(
        self, loaded: LoadedModel, config: EngineConfig | None = None, draft: LoadedModel | None = None
    ):
        """`draft`: the model that proposes tokens (config.draft_model loaded); with config.ngram_draft,
        prompt lookup proposes them; with neither, no speculation."""
        config = config or EngineConfig()
        if config.kv_cache_tokens < config.block_size:
            raise ValueError(f"kv_cache_tokens {config.kv_cache_tokens} < block_size {config.block_size}")
        self.loaded = loaded
        self.config = config
        num_blocks = config.kv_cache_tokens // config.block_size
        self.runner = ModelRunner(loaded, num_blocks, config.block_size)
        self.blocks = BlockManager(num_blocks, config.block_size, config.prefix_caching)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens)
        self.sampler = Sampler()
        self._by_request: dict[str, list[Sequence]] = {}
        self._grammar_vocab: GrammarVocabulary | None = None  # built by the first constrained request
        self._mask_thread: ThreadPoolExecutor | None = None  # with it: fills masks during the forward
        self.proposer = self._proposer(draft)
        self._draft_probs: dict[int, np.ndarray] = {}  # seq_id -> q [k, V] of this step's proposals
        self.num_draft_proposed = 0  # proposed tokens verified, since start
        self.num_draft_accepted = 0

    def _proposer(self, draft: LoadedModel | None) -> Proposer | None:
        assert not (draft and self.config.ngram_draft), "a draft model or n-gram lookup, not both"
        if draft is not None:
            from .draft_model import DraftModelProposer  # noqa: PLC0415 - only a draft model needs it

            return DraftModelProposer(draft, self.loaded.tokenizer, self.config)
        return NgramProposer() if self.config.ngram_draft else None

    @classmethod
    def load(
        cls, model_path, *, backend: BackendConfig | str = "numpy", config: EngineConfig | None = None
    ) -> "Engine":
        """A registry name or .gguf path on a backend, refused up front (OutOfMemoryError naming both
        numbers) when the weights, the KV cache and the activations would not fit in host memory."""
        config = config or EngineConfig()
        gguf = load_gguf(resolve_model(model_path))
        ops = select_backend(backend)
        draft_gguf = load_gguf(resolve_model(config.draft_model)) if config.draft_model else None
        if ops.name != "cuda":  # the CUDA backend checks device memory as it allocates
            files = [gguf] if draft_gguf is None else [gguf, draft_gguf]
            est = [
                memory.estimate(
                    f, ModelConfig.from_gguf(f), ops, config.kv_cache_tokens, config.max_num_batched_tokens
                )
                for f in files
            ]
            memory.check_fits(est[0] if len(est) == 1 else memory.combined(est))
        draft = None if draft_gguf is None else LoadedModel.from_gguf(draft_gguf, ops)
        return cls(LoadedModel.from_gguf(gguf, ops), config, draft)

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def model_config(self):
        return self.loaded.config

    @property
    def vocab_size(self) -> int:
        """Logits per row: the embedding and output rows, padding included."""
        return self.loaded.config.vocab_size

    @property
    def num_tokens(self) -> int:
        """Ids with a token, [0, num_tokens): the only ones a request may name or the sampler pick."""
        return self.tokenizer.vocab_size

    @property
    def backend_name(self) -> str:
        """The backend computing the model ("numpy", "cpu", "cuda"): what "auto" resolved to."""
        return self.loaded.backend.name

    # -- requests ---------------------------------------------------------------------------------

    def add_request(self, cfg: AdapterForwardConfig) -> None:
        """Queues a request the API boundary validated (AdapterForwardConfig.validate, translate's checks
        of n and the KV cache); its n choices run as n sequences sharing the prompt."""
        self._assert_admissible(cfg)
        if cfg.request_id in self._by_request:
            raise RequestError(f"request id {cfg.request_id!r} is already running", param="request_id")
        seqs = [self._new_sequence(cfg, i) for i in range(cfg.n)]
        seqs[0].followers = seqs[1:]
        self._by_request[cfg.request_id] = seqs
        self.scheduler.add(seqs[0])

    def _assert_admissible(self, cfg: AdapterForwardConfig) -> None:
        """What the engine relies on and the boundary has checked: an invariant, not a request error."""
        ids, tokens, c = cfg.prompt_ids, len(cfg.prompt_ids) + cfg.max_tokens, self.config
        assert ids and 0 <= min(ids) and max(ids) < self.num_tokens, f"ids outside [0, {self.num_tokens})"
        assert 1 <= cfg.n <= c.max_num_seqs, f"n = {cfg.n}, max_num_seqs = {c.max_num_seqs}"
        assert cfg.max_tokens >= 1 and tokens <= self.model_config.context_length, f"{tokens} tokens"
        assert -(-tokens // c.block_size) <= self.blocks.num_blocks, f"{tokens} tokens: too many blocks"

    def _new_sequence(self, cfg: AdapterForwardConfig, index: int) -> Sequence:
        params = cfg.sampling
        if index and params.seed is not None:  # siblings differ, yet stay reproducible
            params = msgspec.structs.replace(params, seed=(params.seed * 1_000_003 + index) % (1 << 63))
        constraint = None if cfg.grammar is None else self._grammar_vocabulary().constraint(cfg.grammar)
        sampling = SequenceSampling(params, cfg.prompt_ids, self.num_tokens, constraint)
        text = OutputText(
            self.tokenizer.detokenizer(at_start=False), cfg.stop, cfg.include_stop_str_in_output
        )
        return Sequence(cfg, index, sampling, text)

    def _grammar_vocabulary(self) -> GrammarVocabulary:
        if self._grammar_vocab is None:
            self._grammar_vocab = GrammarVocabulary(self.tokenizer)
            self._mask_thread = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
        return self._grammar_vocab

    def abort(self, request_id: str) -> None:
        """Drops every sequence of the request and frees its KV blocks now."""
        for seq in self._by_request.pop(request_id, []):
            self.scheduler.finish(seq)
            if self.proposer is not None:
                self.proposer.release(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def running_request_ids(self) -> set[str]:
        """Requests with a sequence the scheduler has admitted (prefilling or decoding)."""
        return {s.request_id for s in self.scheduler.running}

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_blocks_used=self.blocks.num_used,
            kv_blocks_total=self.blocks.num_blocks,
            preemptions=self.scheduler.num_preemptions,
            cached_prompt_tokens=self.scheduler.num_cached_tokens,
            draft_tokens_proposed=self.num_draft_proposed,
            draft_tokens_accepted=self.num_draft_accepted,
        )

    # -- the loop ---------------------------------------------------------------------------------

    def step(self) -> list[TokenEvent]:
        """propose -> schedule -> run the model -> sample or verify -> postprocess (append, stop, free)."""
        scheduled = self.scheduler.schedule(self._propose())
        if not scheduled:
            return []
        masks = self._fill_masks_during_forward(scheduled)
        logits, rows = self.runner.run(scheduled)  # [N, V]
        if masks is not None:
            masks.result()  # the sampler finds them filled
        logits = logits[:, : self.num_tokens]  # [N, num_tokens]: padded rows have no token, nor a chance
        to_sample, to_verify = self._advance(scheduled, rows, logits)
        events = self._sample(to_sample, logits)
        return events + [self._verify(item, logits[seq_rows]) for item, seq_rows in to_verify]

    def _sample(self, to_sample: list[tuple[Sequence, int]], logits: np.ndarray) -> list[TokenEvent]:
        if not to_sample:
            return []
        picked = self.sampler.sample(logits[[r for _, r in to_sample]], [s.sampling for s, _ in to_sample])
        return [self._append(s, t.token_id, t.logprobs) for (s, _), t in zip(to_sample, picked, strict=True)]

    def _fill_masks_during_forward(self, scheduled: list[Scheduled]) -> Future | None:
        """Starts filling the grammar masks of the constrained sequences that sample this step (n > 1
        siblings included) in a thread: llguidance's fill does not hold the GIL, so it overlaps the
        forward. A mask depends only on its matcher's state, which the forward does not touch."""
        constraints = [
            s.sampling.constraint
            for item in scheduled
            if item.completes
            for s in (item.seq, *item.seq.followers)
            if s.sampling.constraint is not None
        ]
        if not constraints:
            return None
        return self._mask_thread.submit(self._grammar_vocab.fill_masks, constraints)

    def _advance(self, scheduled: list[Scheduled], rows, logits):
        """Moves each sequence past its computed tokens (prompt logprobs, prefix cache, n > 1 forks);
        returns the (sequence, logits row) pairs that sample a next token now, and the (item, logits
        rows) of sequences that verify proposed tokens (moved past their last token only)."""
        to_sample: list[tuple[Sequence, int]] = []
        to_verify: list[tuple[Scheduled, list[int]]] = []
        for item, seq_rows in zip(scheduled, rows, strict=True):
            s = item.seq
            if item.draft:
                s.num_computed += 1  # the proposals' KV stands only as far as they are accepted
                to_verify.append((item, seq_rows))
                continue
            prompt_lp = self._prompt_logprobs(item, logits[seq_rows]) if s.wants_prompt_logprobs else None
            completes = item.completes  # read before num_computed moves
            s.num_computed += item.num_tokens
            self.scheduler.register_computed(s)
            if prompt_lp is not None:
                s.prompt_lp = (s.prompt_lp or [None]) + prompt_lp  # token 0 has no logprob
            if not completes:
                continue
            if s.followers:  # prefill of an n > 1 request is done: its siblings start from here
                for f in s.followers:
                    self.scheduler.fork(s, f)
                    f.prompt_lp = s.prompt_lp
                    to_sample.append((f, seq_rows[-1]))
                s.followers = []
            to_sample.append((s, seq_rows[-1]))
        return to_sample, to_verify

    # -- speculative decoding ---------------------------------------------------------------------

    def _propose(self) -> dict[int, list[int]]:
        """seq_id -> proposed next tokens of each decoding sequence, k of them at most: fewer as more
        sequences decode (config.draft_token_budget over all) and for a sequence whose last proposals
        were rejected (Sequence.draft_len), none past max_tokens or the context, and only as many as the
        grammar of a structured output allows."""
        self._draft_probs = {}
        if self.proposer is None:
            return {}
        decoding = [s for s in self.scheduler.running if s.num_pending <= 1 and not s.wants_prompt_logprobs]
        k = self.config.draft_len(len(decoding))
        wanted = [(s, min(k, s.draft_len or k, self._room(s))) for s in decoding]
        wanted = [(s, n) for s, n in wanted if n > 0]
        if not wanted:
            return {}
        proposals = self.proposer.propose(wanted)
        self._draft_probs = {i: p.probs for i, p in proposals.items() if p.probs is not None}
        drafts = {i: p.tokens for i, p in proposals.items()}
        for s, _ in wanted:
            if s.sampling.constraint is not None and drafts.get(s.seq_id):
                draft = drafts[s.seq_id]
                drafts[s.seq_id] = draft[: s.sampling.constraint.valid_prefix(draft)]
        return drafts

    def _room(self, s: Sequence) -> int:
        """Proposals that can still become output: one token after them (the bonus) must fit as well."""
        return min(s.request.max_tokens - s.num_output, self.model_config.context_length - s.num_tokens) - 1

    def _verify(self, item: Scheduled, rows: np.ndarray) -> TokenEvent:
        """Appends the accepted proposals and the token after them (rows [k + 1, V]: the target's logits
        after the last token and after each proposal), stopping where plain decoding would; the KV of
        rejected proposals is dropped and the blocks past the sequence's end are freed."""
        s, draft, q = item.seq, item.draft, self._draft_probs.get(item.seq.seq_id)
        events, accepted = [], 0
        for j, row in enumerate(rows):
            proposed = draft[j] if j < len(draft) else None
            token = next_token(row, proposed, s.sampling, None if q is None or proposed is None else q[j])
            n_top = s.request.sampling.logprobs
            events.append(self._append(s, token, None if n_top is None else top_logprobs(row, token, n_top)))
            accepted += token == proposed
            if s.finish_reason is not None or token != proposed:
                break
            s.num_computed += 1  # the accepted proposal's KV, computed in this step
        self.num_draft_proposed += len(draft)
        self.num_draft_accepted += accepted
        s.draft_len = _next_draft_len(s.draft_len or len(draft), accepted == len(draft), self.config)
        if s.finish_reason is None:
            self.scheduler.register_computed(s)
            self.blocks.truncate(s.block_table, s.num_tokens)
        return _merged(events)

    def _prompt_logprobs(self, item: Scheduled, rows: np.ndarray) -> list[TokenLogprobs]:
        """Logprob of each next prompt token given its prefix, for the prompt part of this chunk."""
        s, n_top = item.seq, item.seq.request.prompt_logprobs
        out = []
        for i, row in enumerate(rows):
            nxt = s.num_computed + i + 1
            if nxt >= s.prompt_len:
                break
            out.append(top_logprobs(row, s.token_ids[nxt], n_top))
        return out

    def _append(self, s: Sequence, token_id: int, logprobs) -> TokenEvent:
        s.token_ids.append(token_id)
        s.sampling.record(token_id)
        cfg = s.request
        stop_id = token_id in cfg.stop_token_ids or (
            not cfg.ignore_eos and token_id in self.tokenizer.eog_ids
        )
        text, stop_str = ("", False) if stop_id else s.text.push(token_id)
        constraint = s.sampling.constraint
        error = None if constraint is None else self._grammar_error(s, constraint.error)
        complete = constraint is not None and constraint.complete  # nothing may follow
        finish = None
        if error is not None:  # the grammar's parser failed (a limit): not a "stop" that looks finished
            finish = "error"
        elif stop_id or stop_str or complete:
            finish = "stop"
        elif s.num_output >= cfg.max_tokens or s.num_tokens >= self.model_config.context_length:
            finish = "length"
        if finish is not None and not stop_str:
            text += s.text.finish()
        event = TokenEvent(
            request_id=cfg.request_id,
            index=s.index,
            token_ids=[token_id],
            text=text,
            logprobs=[logprobs] if cfg.sampling.logprobs is not None else None,
            finish_reason=finish,
            prompt_tokens=s.prompt_len,
            completion_tokens=s.num_output,
            cached_tokens=s.num_cached_prompt,
            error=error,
        )
        if not s.prompt_logprobs_sent and cfg.prompt_logprobs is not None:
            event.prompt_logprobs = s.prompt_lp
            s.prompt_logprobs_sent = True
        if finish is not None:
            self._finish(s, finish)
        return event

    @staticmethod
    def _grammar_error(s: Sequence, reason: str | None) -> str | None:
        """The error event's message when the sequence's grammar matcher failed (filling this step's
        mask, or consuming the token just sampled)."""
        if reason is None:
            return None
        param = s.request.grammar.param
        return f"{param}: the grammar's parser failed at output token {s.num_output}: {reason}"

    def _finish(self, s: Sequence, reason: str) -> None:
        s.finish_reason = reason
        self.scheduler.finish(s)
        if self.proposer is not None:
            self.proposer.release(s)
        group = self._by_request.get(s.request_id, [])
        if all(x.finish_reason is not None for x in group):
            self._by_request.pop(s.request_id, None)


def _next_draft_len(k: int, all_accepted: bool, config: EngineConfig) -> int:
    """A sequence's next proposal length (transformers' "heuristic" schedule for assisted generation):
    2 more after all were accepted, up to num_draft_tokens; 1 fewer after a rejection, down to 1."""
    return min(k + 2, config.num_draft_tokens) if all_accepted else max(k - 1, 1)


def _merged(events: list[TokenEvent]) -> TokenEvent:
    """One event for the tokens one sequence appended in a step (the last event's totals and finish)."""
    if len(events) == 1:
        return events[0]
    logprobs = None if events[-1].logprobs is None else [lp for e in events for lp in e.logprobs]
    return msgspec.structs.replace(
        events[-1],
        token_ids=[t for e in events for t in e.token_ids],
        text="".join(e.text for e in events),
        logprobs=logprobs,
        prompt_logprobs=events[0].prompt_logprobs,
    )
