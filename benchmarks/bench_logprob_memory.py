"""Peak memory of the learner's log-probs: one float32 tensor vs chunks (router_r1.rl.logprobs).

`python -m benchmarks.bench_logprob_memory [--tokens 512] [--vocab 151936] [--chunk 128]`

Each measurement runs in a fresh process (`one_process`, `--one full|chunked`): bf16 logits of
`tokens` x `vocab` (the LM head's output for one micro-batch, flattened) are allocated, then
log-probs of the taken tokens and the entropy are computed, weighted into a loss and
back-propagated, as in an RL micro-step. Reported: the peak resident memory above what the process held just before (the
high-water mark VmHWM, reset just before, minus VmRSS then; CPU, one thread), and the CPU time of
that pass.

- full: what the learner did before: logits.float() / temperature over the whole tensor,
  `algos.token_logprobs` and `algos.entropy_from_logits` on it.
- chunked: `router_r1.rl.logprobs.token_logprobs` with `--chunk` tokens per float32 chunk.

Entropy modes: none (log-probs only), value (the entropy as a metric, no gradient: the learner's
case with entropy_coef 0) and grad (entropy in the loss). The logits' own gradient (bf16, the
size of the logits) is allocated by both.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status_mb(field: str) -> float:
    """A kB field of /proc/self/status (VmRSS: resident now; VmHWM: its high-water mark) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> None:
    """Set the high-water mark to the current resident size (Linux >= 4.0). Not `ru_maxrss`: a
    child process's starts at its parent's resident size at fork (exec records the old mm's peak),
    so a measurement started from a large pytest process would read the parent's memory."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(mode: str, tokens: int, vocab: int, chunk: int, entropy: str | None, temperature: float = 0.7) -> dict:
    """One forward + backward in this process, in a fresh one (`one_process`): what malloc kept
    from earlier work would hide part of the peak."""
    import torch

    from router_r1.rl import algos
    from router_r1.rl.logprobs import token_logprobs

    torch.set_num_threads(1)
    # One tiny pass of both paths first: one-time costs (lazy imports and initialisation of
    # autograd and checkpointing) are paid once per training process, not per micro-batch.
    small = torch.randn(1, 4, 16, dtype=torch.bfloat16, requires_grad=True)
    small_ids = torch.zeros(1, 4, dtype=torch.long)
    for path in (lambda: algos.token_logprobs(small.float(), small_ids),
                 lambda: token_logprobs(small, small_ids, temperature, entropy="grad", chunk=2)[0]):
        path().sum().backward()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, tokens, vocab, generator=g, dtype=torch.bfloat16).requires_grad_()
    ids = torch.randint(0, vocab, (1, tokens), generator=g)
    a, b = torch.randn(1, tokens, generator=g), torch.randn(1, tokens, generator=g)
    _reset_peak()
    before = _status_mb("VmRSS")
    t0 = time.process_time()
    if mode == "full":
        x = logits.float() / temperature
        logp = algos.token_logprobs(x, ids)
        ent = None
        if entropy is not None:
            with torch.set_grad_enabled(entropy == "grad"):
                ent = algos.entropy_from_logits(x)
        del x
    else:
        logp, ent = token_logprobs(logits, ids, temperature, entropy=entropy, chunk=chunk)
    loss = (a * logp).sum() + ((b * ent).sum() if entropy == "grad" else 0.0)
    metric = float(ent.detach().mean()) if ent is not None else 0.0
    loss.backward()
    dt = time.process_time() - t0  # CPU seconds: robust to other load on the machine
    return {"mode": mode, "tokens": tokens, "vocab": vocab, "chunk": chunk, "entropy": entropy,
            "peak_mb": round(_status_mb("VmHWM") - before, 1), "rss_before_mb": round(before, 1),
            "seconds": round(dt, 3), "entropy_mean": metric,
            "fp32_logits_mb": round(tokens * vocab * 4 / 2 ** 20, 1)}


def one_process(mode: str, tokens: int, vocab: int, chunk: int, entropy: str, timeout: float | None = None) -> dict:
    """`measure` in a fresh Python process. glibc's malloc is told to map every allocation of
    64 KiB or more on its own and to unmap it when freed (a fixed mmap threshold), so resident
    memory follows the live tensors instead of what freed heap memory malloc keeps."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "benchmarks.bench_logprob_memory", "--one", mode,
                          "--tokens", str(tokens), "--vocab", str(vocab), "--chunk", str(chunk), "--entropy", entropy],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", choices=["full", "chunked"], help="measure one mode in this process (JSON line)")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--vocab", type=int, default=151_936)  # Qwen2 / Qwen2.5
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--entropy", choices=["none", "value", "grad"], default=None,
                   help="with --one: the entropy mode (default grad); without: all three")
    args = p.parse_args(argv)
    if args.one:
        entropy = None if args.entropy == "none" else (args.entropy or "grad")
        print(json.dumps(measure(args.one, args.tokens, args.vocab, args.chunk, entropy)))
        return
    print(f"bf16 logits {args.tokens} tokens x {args.vocab} vocabulary; one float32 copy = "
          f"{args.tokens * args.vocab * 4 / 2 ** 20:.0f} MiB; chunks of {args.chunk} tokens\n")
    print("| entropy | full: peak MiB | chunked: peak MiB | full: s | chunked: s |")
    print("|---|---|---|---|---|")
    for entropy in ([args.entropy] if args.entropy else ["none", "value", "grad"]):
        full, chunked = (one_process(m, args.tokens, args.vocab, args.chunk, entropy) for m in ("full", "chunked"))
        print(f"| {entropy} | {full['peak_mb']:.0f} | {chunked['peak_mb']:.0f} | {full['seconds']:.2f} "
              f"| {chunked['seconds']:.2f} |")


if __name__ == "__main__":
    main()
