#!/usr/bin/env python3
"""Time one training step of the course's GPT against a reference GPT built from PyTorch's fused pieces.

    python3 bootstrap.py bench --gpt-step     # or: .venv/bin/python utils/bench_gpt_step.py

A training step is forward, cross-entropy, backward and an AdamW step. The reference has the same
sizes and the same parts: token and position embeddings, ``torch.nn.TransformerEncoderLayer`` blocks
(``norm_first=True``, ``batch_first=True``, exact GELU, causal mask), a final LayerNorm and a head
tied to the token embedding. The two are timed side by side in one run, in interleaved repeats, and
the medians are compared: the course's GPT should take at most ``--target`` (1.05) times the
reference's time. Prints both times and the ratio; exits 1 when the ratio is over the target.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course.models.gpt import GPT, GPTConfig  # noqa: E402

TARGET = 1.05


class ReferenceGPT(nn.Module):
    """A GPT made of PyTorch's own fused modules, at the course GPT's sizes: ``idx -> logits``."""

    def __init__(self, vocab_size: int, context_length: int, d_model: int, num_heads: int, num_layers: int,
                 d_ff: int | None = None):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(context_length, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, num_heads, d_ff or 4 * d_model, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight

    def forward(self, idx: Tensor) -> Tensor:
        seq = idx.shape[1]
        x = self.token_embedding(idx) + self.position_embedding(torch.arange(seq, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(seq, device=idx.device)
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.lm_head(self.final_norm(x))


def training_step(model: nn.Module, idx: Tensor, targets: Tensor) -> Callable[[], float]:
    """A function doing one training step of ``model`` on (idx, targets); it returns the loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> float:
        logits = model(idx)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def compare(steps: dict[str, Callable[[], float]], repeats: int, per_repeat: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per call of each function, timed in interleaved repeats of ``per_repeat`` calls."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats):
        order = list(steps.items()) if r % 2 == 0 else list(reversed(steps.items()))
        for name, fn in order:
            start = time.perf_counter()
            for _ in range(per_repeat):
                fn()
            times[name].append((time.perf_counter() - start) / per_repeat * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats (the median is kept)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per repeat")
    parser.add_argument("--target", type=float, default=TARGET, help="the largest acceptable ratio")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=args.vocab, context_length=args.context, d_model=args.d_model,
                       num_heads=args.heads, num_layers=args.layers, activation="gelu", dropout=0.0)
    ours = GPT(config).train()
    ref = ReferenceGPT(args.vocab, args.context, args.d_model, args.heads, args.layers, config.d_ff).train()
    idx = torch.randint(args.vocab, (args.batch, args.context))
    targets = torch.randint(args.vocab, (args.batch, args.context))
    steps = {"course GPT": training_step(ours, idx, targets), "torch reference": training_step(ref, idx, targets)}
    ms = compare(steps, args.repeats, args.steps, warmup=3)

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"training step (forward, cross-entropy, backward, AdamW): {args.layers} layers, d_model {args.d_model}, "
          f"{args.heads} heads, context {args.context}, batch {args.batch}, vocab {args.vocab}")
    for name, t in ms.items():
        print(f"  {name:<16}{t:>9.2f} ms  (median of {args.repeats} x {args.steps} steps)")
    ratio = ms["course GPT"] / ms["torch reference"]
    ok = ratio <= args.target
    print(f"  ratio {ratio:.3f}, target <= {args.target:.2f}: {'ok' if ok else 'OVER TARGET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
