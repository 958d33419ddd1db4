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
from .sampler import Sampler, SequenceSampling, top_logprobs
from .scheduler import Scheduled, Scheduler
from .sequence import Sequence
from .stats import EngineStats


class Engine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None):
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

    @classmethod
    def load(
        cls, model_path, *, backend: BackendConfig | str = "numpy", config: EngineConfig | None = None
    ) -> "Engine":
        """A registry name or .gguf path on a backend, refused up front (OutOfMemoryError naming both
        numbers) when the weights, the KV cache and the activations would not fit in host memory."""
        config = config or EngineConfig()
        gguf = load_gguf(resolve_model(model_path))
        ops = select_backend(backend)
        if ops.name != "cuda":  # the CUDA backend checks device memory as it allocates
            est = memory.estimate(
                gguf, ModelConfig.from_gguf(gguf), ops, config.kv_cache_tokens, config.max_num_batched_tokens
            )
            memory.check_fits(est)
        return cls(LoadedModel.from_gguf(gguf, ops), config)

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
        )

    # -- the loop ---------------------------------------------------------------------------------

    def step(self) -> list[TokenEvent]:
        """schedule -> run the model -> sample -> postprocess (append tokens, stop, free)."""
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return []
        masks = self._fill_masks_during_forward(scheduled)
        logits, rows = self.runner.run(scheduled)  # [N, V]
        if masks is not None:
            masks.result()  # the sampler finds them filled
        logits = logits[:, : self.num_tokens]  # [N, num_tokens]: padded rows have no token, nor a chance
        to_sample = self._advance(scheduled, rows, logits)
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

    def _advance(self, scheduled: list[Scheduled], rows, logits) -> list[tuple[Sequence, int]]:
        """Moves each sequence past its computed tokens (prompt logprobs, prefix cache, n > 1 forks);
        returns the (sequence, logits row) pairs that sample a next token now."""
        to_sample: list[tuple[Sequence, int]] = []
        for item, seq_rows in zip(scheduled, rows, strict=True):
            s = item.seq
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
        return to_sample

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
        group = self._by_request.get(s.request_id, [])
        if all(x.finish_reason is not None for x in group):
            self._by_request.pop(s.request_id, None)
