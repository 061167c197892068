"""The transformers generation engine: batched sampling over the model's KV cache.

The loop is written out rather than calling `model.generate`, because `generate` merges the
checkpoint's `generation_config` (a Qwen-style repetition penalty, top-k, top-p), which the
learner cannot score, and returns no per-token log-probs without materialising every step's
(batch, vocab) scores. Here the distribution is softmax(logits / temperature), optionally cut by
top-p (serving and evaluation only: training refuses top-p), and nothing else. What it returns
is `router_r1.env.generation.Generation`.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence

import torch

from router_r1.engines.weights import copy_into
from router_r1.env.generation import EOS, Generation, eos_ids, first_stop, stop_tail
from router_r1.env.protocol import STOP_STRINGS


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of tokens whose probability
    reaches `top_p`, set the rest to -inf. scores: (B, V) logits already divided by temperature."""
    if top_p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
    probs = torch.softmax(sorted_scores, dim=-1)
    remove = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already reaches top_p
    sorted_scores = sorted_scores.masked_fill(remove, float("-inf"))
    return torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)


class HFGenerator:
    """Batched sampling with a transformers causal LM, token ids in, `Generation`s out.

    One call generates one turn for every live episode at once (left padding, one KV cache),
    stopping each row at its first stop string or EOS. The learner scores the same function:
    log_softmax(logits / temperature) (`router_r1.rl.logprobs`), so at equal weights the two log-probs
    agree to float rounding (`rollout/logp_diff_*`).
    """

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", max_context: int | None = None):
        self.model, self.tokenizer, self.device = model, tokenizer, torch.device(device)
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", 2048)
        self.eos = eos_ids(tokenizer, model.config)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else next(iter(self.eos), 0)
        # transformers >= 5.24 names the KV-cache argument `cache`; older releases `past_key_values`.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """A prompt's ids: ids pass through; text (a rendered prompt) is encoded once."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return list(prompt)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int = 128,
                 temperature: float = 1.0, top_p: float = 1.0, stop: Sequence[str] = STOP_STRINGS,
                 seed: int | None = None, on_token: Callable[[int, int], None] | None = None) -> list[Generation]:
        """One turn per prompt. `on_token(i, token_id)` is told of each token of prompt i as it is
        sampled (serving streams the answer with it), from the generating thread."""
        rows = [self.encode(p) for p in prompts]
        out = [Generation() for _ in rows]
        # A row gets what is left of the context window; a full one generates nothing.
        budget = [min(max_new_tokens, self.max_context - len(r)) for r in rows]
        live = [i for i, r in enumerate(rows) if r and budget[i] > 0]
        if not live:
            return out
        was_training = self.model.training
        self.model.eval()
        try:
            self._sample([rows[i] for i in live], [budget[i] for i in live], temperature, top_p,
                         tuple(stop or ()), seed, [out[i] for i in live],
                         None if on_token is None else (lambda j, t: on_token(live[j], t)))
        finally:
            if was_training:
                self.model.train()
        return out

    def _sample(self, rows: list[list[int]], budget: list[int], temperature: float, top_p: float,
                stops: tuple[str, ...], seed: int | None, out: list[Generation],
                on_token: Callable[[int, int], None] | None = None) -> None:
        from transformers import DynamicCache

        B, n = len(rows), max(len(r) for r in rows)
        input_ids = torch.full((B, n), self.pad_id, dtype=torch.long)
        attention = torch.zeros((B, n), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's next token is at column n
            input_ids[i, n - len(r):] = torch.tensor(r, dtype=torch.long)
            attention[i, n - len(r):] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(seed))
        cache = {self._cache_kwarg: DynamicCache(), "use_cache": True}
        logits = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                            logits_to_keep=1, **cache).logits[:, -1, :]
        next_pos = positions[:, -1] + 1
        done = [False] * B
        tail = stop_tail(stops)
        for step in range(max(budget)):
            logits = logits.float()
            if temperature > 0:
                logp = torch.log_softmax(top_p_filter(logits / temperature, top_p), dim=-1)
                token = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(1)
            else:  # greedy: the log-prob reported is the untempered one
                logp = torch.log_softmax(logits, dim=-1)
                token = logits.argmax(dim=-1)
            token_lp = logp.gather(1, token[:, None]).squeeze(1).tolist()
            token_ids = token.tolist()
            for i in range(B):
                if done[i]:
                    continue
                g = out[i]
                g.ids.append(token_ids[i])
                g.logprobs.append(token_lp[i])
                if on_token is not None:
                    on_token(i, token_ids[i])
                if token_ids[i] in self.eos:
                    g.stop, done[i] = EOS, True
                elif stops:
                    hit = first_stop(self.tokenizer.decode(g.ids[-tail:], skip_special_tokens=False), stops)
                    if hit is not None:
                        g.stop, done[i] = hit, True
                if len(g.ids) >= budget[i]:
                    done[i] = True
            if all(done):
                break
            attention = torch.cat([attention, attention.new_ones((B, 1))], dim=1)
            logits = self.model(input_ids=token[:, None], attention_mask=attention,
                                position_ids=next_pos[:, None], **cache).logits[:, -1, :]
            next_pos = next_pos + 1
        for g in out:
            g.text = self.tokenizer.decode(g.ids, skip_special_tokens=True)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def load_buckets(self, buckets: Iterable[dict[str, torch.Tensor]]) -> None:
        """Published weight buckets (router_r1.engines.weights) copied into the model in place."""
        copy_into(self.model, buckets)
