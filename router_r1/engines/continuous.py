"""Continuous batching on transformers, for serving: a router turn that arrives while others are
decoding joins them at the next forward step, and a turn that finishes leaves at once.

The scheduling is transformers' own `ContinuousBatchingManager` (`model.init_continuous_batching`,
transformers >= 5): a paged KV cache, prefill chunks that share a forward step with the decoding
rows, per-request temperature, top-p, EOS and token budget, and the log-prob of each sampled
token under the processed distribution. On CPU, with the project's float32 Qwen2 policies, its
greedy ids and its log-probs are `HFGenerator`'s (tests/test_continuous.py). What it lacks for
router turns, and this module adds around it:

- stop strings: `</search>` and `</answer>` are several tokens, the manager knows EOS ids only.
  Every turn streams; when its text completes a stop string the turn is answered and cancelled.
  The manager may sample a token or two past the stop before the cancellation lands; those
  condition nothing kept and are dropped.
- one sampling mode per manager (`do_sample` is global): greedy turns and sampled turns go to two
  managers, each built when its first turn comes.
- seeds (the manager draws from one generator): a seeded sampled turn is generated alone by
  `HFGenerator`, as `generate_isolated` does, so its draws depend on its seed only.
- isolation: an exception in a forward step ends transformers' loop and fails every request in
  it. Each of those turns is then finished alone by `HFGenerator`, resumed from the tokens it
  already had (sampled from the right distribution, and already streamed), so the turn that
  broke the step fails alone and its neighbours are answered; the next turn starts a new
  manager. Token ids outside the vocabulary are refused before they reach a manager.
"""
from __future__ import annotations

import asyncio
import itertools
import math
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from router_r1.engines.hf import HFGenerator
from router_r1.env.generation import EOS, Generation, TurnFailed, cut_generation, first_stop, stop_tail
from router_r1.env.protocol import STOP_STRINGS

# CPU defaults: KV pages of 64 tokens (a router context shares its earlier turns' full pages with
# the next turn, transformers' prefix sharing), and at most 512 tokens per forward step, so a
# long prompt's prefill is cut into chunks instead of stalling every decoding row.
PAGE_SIZE = 64
STEP_TOKENS = 512
CPU_CONTEXT_CAP = 4096  # KV slots per row on CPU when the cache is not sized (serve.kv_cache_tokens)


@dataclass
class _Turn:
    """One turn in a manager: what it has kept so far and how it ends."""

    budget: int
    stops: tuple[str, ...]
    on_token: Callable[[int], None] | None
    done: asyncio.Future
    gen: Generation = field(default_factory=Generation)
    seen: int = 0  # tokens of the manager's output read so far (kept or dropped)
    tail: int = field(init=False)  # last tokens decoded to look for a stop

    def __post_init__(self) -> None:
        self.tail = stop_tail(self.stops)


class ContinuousHFEngine:
    """`await engine.generate_turn(ids, ...)`: one router turn, generated in transformers'
    continuous batch (see the module docstring). `generator` is the replica's `HFGenerator`,
    whose model the managers share and which generates the turns that go alone."""

    def __init__(self, generator: HFGenerator, max_batch_size: int = 32, kv_cache_tokens: int | None = None):
        self.generator, self.max_batch_size = generator, max(1, int(max_batch_size))
        self.model, self.tokenizer = generator.model, generator.tokenizer
        self.eos, self.max_context = set(generator.eos), generator.max_context
        self.vocab = int(self.model.get_input_embeddings().weight.shape[0])
        self.cpu = generator.device.type == "cpu"
        if kv_cache_tokens is None and self.cpu:  # transformers sizes the cache from free GPU memory only
            kv_cache_tokens = self.max_batch_size * min(self.max_context, CPU_CONTEXT_CAP)
        self.kv_cache_tokens = kv_cache_tokens
        self._managers: dict[bool, Any] = {}  # sampled? -> ContinuousBatchingManager
        self._ids = itertools.count()
        self._steps_before = 0  # forward steps of managers that have ended
        self.tokens = 0  # tokens sampled by the managers (kept or dropped)
        self.kept = 0  # of which kept (the rest: sampled past a stop before the cancel landed)
        self.turns = self.alone = 0  # turns answered; of which generated alone (seeded, or resumed)

    # -- the managers -------------------------------------------------------------------------
    def _manager(self, sampled: bool) -> Any:
        m = self._managers.get(sampled)
        if m is not None and m.is_running():
            return m
        if m is not None:  # its loop died (a forward step raised): count its steps, start afresh
            self._steps_before += getattr(m, "current_batch", 0)
        m = self._new_manager(sampled)
        m.start()
        self._managers[sampled] = m
        return m

    def _new_manager(self, sampled: bool) -> Any:
        from transformers import ContinuousBatchingConfig, GenerationConfig

        eos = sorted(self.eos) or -1
        pad = self.generator.pad_id
        if sampled:
            # The temperature and top-p given here only make transformers build its per-request
            # processors; every turn passes its own. No top-k, no penalties: the distribution is
            # softmax(top_p(logits / T)), as HFGenerator's and the learner's.
            gc = GenerationConfig(do_sample=True, temperature=0.5, top_p=0.5, top_k=None,
                                  eos_token_id=eos, pad_token_id=pad)
        else:  # greedy: the log-prob reported is the untempered one, as HFGenerator's
            gc = GenerationConfig(do_sample=False, eos_token_id=eos, pad_token_id=pad)
        cpu = self.cpu
        blocks = None if self.kv_cache_tokens is None else math.ceil(self.kv_cache_tokens / PAGE_SIZE)
        cbc = ContinuousBatchingConfig(
            page_size=PAGE_SIZE, num_blocks=blocks, max_batch_tokens=STEP_TOKENS if cpu else None,
            max_requests_per_batch=self.max_batch_size, return_logprobs=True, per_request_processors=sampled,
            use_cuda_graph=False if cpu else None, use_async_batching=False if cpu else None,
            # On GPU, at most half the free memory for the cache: turns that go alone need room too.
            max_memory_percent=None if cpu else 0.5,
            # HFGenerator shares the model (turns that go alone): leave its attention as it is.
            auto_switch_to_flash=False)
        return self.model.init_continuous_batching(generation_config=gc, continuous_batching_config=cbc)

    @property
    def steps(self) -> int:
        """Forward steps run by the managers so far (prefill chunks count as steps)."""
        return self._steps_before + sum(getattr(m, "current_batch", 0) for m in self._managers.values())

    def close(self) -> None:
        for m in self._managers.values():
            if m.is_running():
                m.stop(block=True, timeout=10)
        self._managers.clear()

    # -- one turn -----------------------------------------------------------------------------
    async def generate_turn(self, ids: Sequence[int], max_new_tokens: int = 128, temperature: float = 0.0,
                            top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = STOP_STRINGS,
                            on_token: Callable[[int], None] | None = None) -> Generation:
        """One turn from context `ids`, stopping at the first stop string, an EOS id, the token
        budget or the context window (as `HFGenerator.generate`). `on_token(token_id)` hears
        each kept token as it is sampled. Raises `TurnFailed` when this turn alone cannot be
        generated."""
        ids, stops = list(ids), tuple(stop or ())
        budget = min(int(max_new_tokens), self.max_context - len(ids))
        if not ids or budget <= 0:
            return Generation()
        bad = next((t for t in ids if not 0 <= t < self.vocab), None)
        if bad is not None:
            raise TurnFailed(ValueError(f"token id {bad} is outside the vocabulary (0..{self.vocab - 1})"))
        sampled = temperature > 0
        turn = _Turn(budget, stops, on_token, asyncio.get_running_loop().create_future())
        if sampled and seed is not None:
            return await self._alone(ids, turn, temperature, top_p, seed)
        m = self._manager(sampled)
        rid = f"turn{next(self._ids)}"
        kw = {"temperature": float(temperature), "top_p": float(top_p)} if sampled else {}
        m.register_result_handler(rid, lambda out: self._feed(m, rid, turn, out))
        try:
            added = m.add_request(ids, request_id=rid, max_new_tokens=budget, streaming=True,
                                  eos_token_id=sorted(self.eos) or -1, **kw)
            if added is not None and await self._answered(m, rid, turn):
                self.turns += 1
                return turn.gen
        except asyncio.CancelledError:  # the request went away: free its rows and pages
            self._forget(m, rid)
            m.cancel_request(rid)
            raise
        # The manager failed this turn (a forward step raised, or its loop was gone): finish it
        # alone, from the tokens it already has.
        self._forget(m, rid)
        return await self._alone(ids, turn, temperature, top_p, None)

    @staticmethod
    async def _answered(m: Any, rid: str, turn: _Turn) -> bool:
        """Wait for the turn; False when the manager failed it, or died without telling it (a
        request that reached the queue just as the loop exited)."""
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(turn.done), timeout=1.0)
            except TimeoutError:
                if not m.is_running() and not turn.done.done():
                    return False

    def _feed(self, m: Any, rid: str, turn: _Turn, out: Any) -> None:
        """The manager's output for one turn so far (on the event loop): keep its new tokens up to
        the first stop; answer the turn there and cancel the rest of it."""
        if turn.done.done():
            return
        if out.error is not None:
            turn.done.set_result(False)
            return
        new = out.generated_tokens[turn.seen:]
        lps = out.logprobs[turn.seen:]
        turn.seen += len(new)
        self.tokens += len(new)
        g, finished, before = turn.gen, False, len(turn.gen.ids)
        for t, lp in zip(new, lps):
            if _keep(g, t, lp, turn, self.eos, self.tokenizer):
                finished = True
                break
        self.kept += len(g.ids) - before
        if finished or out.is_finished():
            g.text = self.tokenizer.decode(g.ids, skip_special_tokens=True)
            if not out.is_finished():
                self._forget(m, rid)
                m.cancel_request(rid)
            turn.done.set_result(True)

    @staticmethod
    def _forget(m: Any, rid: str) -> None:
        """Drop a turn's result handler: transformers removes one only when its request finishes,
        and a cancelled request never does. The outputs a cancelled request still produced before
        the cancellation landed went to the manager's output queue, which nothing here reads:
        they are dropped too."""
        router = m.output_router
        with router._lock:
            router.result_handlers.pop(rid, None)
        q = router.output_queue
        while not q.empty():
            try:
                q.get_nowait()
            except queue.Empty:  # another thread took it
                break

    async def _alone(self, ids: list[int], turn: _Turn, temperature: float, top_p: float,
                     seed: int | None) -> Generation:
        """The turn generated by `HFGenerator` alone, after the tokens it already has."""
        g = turn.gen
        sink = turn.on_token
        try:
            (rest,) = await asyncio.to_thread(
                self.generator.generate, [ids + g.ids], max_new_tokens=turn.budget - len(g.ids),
                temperature=temperature, top_p=top_p, stop=turn.stops, seed=seed,
                on_token=None if sink is None else (lambda _i, t: sink(t)))
        except Exception as e:
            raise TurnFailed(e) from e
        self.turns += 1
        self.alone += 1
        if not g.ids:
            return rest
        whole = Generation(g.ids + rest.ids, g.logprobs + rest.logprobs, stop=rest.stop)
        whole.text = self.tokenizer.decode(whole.ids, skip_special_tokens=True)
        return cut_generation(whole, self.tokenizer, turn.stops, self.eos)


def _keep(g: Generation, token: int, logprob: float, turn: _Turn, eos: set[int], tokenizer) -> bool:
    """Append one sampled token to the turn; True when the turn ends with it (EOS, a stop
    string completed, or the budget spent), exactly as `HFGenerator` decides."""
    g.ids.append(token)
    g.logprobs.append(logprob)
    if turn.on_token is not None:
        turn.on_token(token)
    if token in eos:
        g.stop = EOS
        return True
    if turn.stops:
        hit = first_stop(tokenizer.decode(g.ids[-turn.tail:], skip_special_tokens=False), turn.stops)
        if hit is not None:
            g.stop = hit
            return True
    return len(g.ids) >= turn.budget
