"""Scale out (lesson 19): training on several processes with PyTorch's own distributed engine.

The pieces the lesson builds, in their package version:

- the run's sizes (:class:`RunConfig`), its model and its data, the same in every process:
  :func:`corpus_ids`, :func:`make_model`, :func:`global_batch`;
- :func:`shard_batch`: the rows of the global batch one rank trains on;
- :func:`average_gradients`: what DistributedDataParallel does after ``backward()``, by hand;
- :func:`train_single`: the reference, one process on the whole global batch;
- :func:`memory_per_rank`: the bytes of parameters, gradients and optimiser state a rank holds, from
  the local shards of sharded tensors (``DTensor.to_local()``), not from the process's size;
- :func:`adam_bytes_per_rank` and :func:`gpus_needed`: the memory arithmetic of a cluster;
- :func:`launch`: runs ``course/dist_train.py`` under torchrun (``python -m torch.distributed.run``)
  and brings every rank's results back through files in a temporary folder; a failure comes back as
  one line (:class:`DistributedRunError`).

The training script itself is :mod:`course.dist_train`; ``tests/course/test_distributed.py`` launches it.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "RunConfig",
    "corpus_ids",
    "make_model",
    "global_batch",
    "shard_batch",
    "average_gradients",
    "broadcast_parameters",
    "train_single",
    "max_abs_diff",
    "differences_by_parameter",
    "local_tensor",
    "tensor_bytes",
    "memory_per_rank",
    "BYTES_PER_PARAMETER_ADAM",
    "adam_bytes_per_rank",
    "gpus_needed",
    "fit_latency_bandwidth",
    "bus_bandwidth",
    "fully_shard_function",
    "DistributedRunError",
    "MODES",
    "torchrun_command",
    "multinode_command",
    "launch",
]

MODES = ("ddp", "manual", "fsdp", "allreduce")
"""What :mod:`course.dist_train` can run: DDP training, training with :func:`average_gradients` by hand,
FSDP2 training, and all-reduce timings."""


@dataclass(frozen=True)
class RunConfig:
    """The sizes of one training run, the same in every process (and in the one-process reference).

    A character-level GPT (lesson 08's model) on Python's own standard-library source (lesson 02's text).
    ``global_batch`` rows per step, split evenly over the ranks; Adam with a constant learning rate.
    """

    steps: int = 30
    global_batch: int = 16
    context_length: int = 32
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    lr: float = 3e-3
    seed: int = 0
    corpus_chars: int = 60_000

    def to_args(self) -> list[str]:
        """The command-line options of :mod:`course.dist_train` that give this configuration."""
        return [f"--{f.name.replace('_', '-')}={getattr(self, f.name)}" for f in fields(self)]


@functools.lru_cache(maxsize=4)
def corpus_ids(corpus_chars: int) -> tuple[Tensor, int]:
    """``(ids [n], vocab_size)``: the first ``corpus_chars`` characters of the course's standard-library
    corpus as character ids (the same in every process: nothing random, nothing downloaded)."""
    from course.data.text import stdlib_corpus
    from course.tokenizers import CharTokenizer

    text = stdlib_corpus(max_chars=corpus_chars)
    tokenizer = CharTokenizer.fit(text)
    return torch.tensor(tokenizer.encode(text), dtype=torch.long), tokenizer.vocab_size


def make_model(config: RunConfig, vocab_size: int) -> nn.Module:
    """The run's GPT, initialised from ``config.seed``: every process that calls this gets the same weights."""
    from course.models.gpt import GPT, GPTConfig

    torch.manual_seed(config.seed)
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=config.context_length, d_model=config.d_model,
                         num_heads=config.num_heads, num_layers=config.num_layers))


def global_batch(data: Tensor, step: int, config: RunConfig) -> tuple[Tensor, Tensor]:
    """Step ``step``'s global batch ``(x, y)``, each ``[global_batch, context_length]``: random windows
    drawn from a generator seeded by ``(config.seed, step)``, so every process draws the same ones."""
    from course.lm import random_windows
    from course.seed import step_seed

    generator = torch.Generator().manual_seed(step_seed(config.seed, step))
    return random_windows(data, config.global_batch, config.context_length, generator=generator)


def shard_batch(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """``batch [B, ...] -> [B // world_size, ...]``: rank ``rank``'s rows, a contiguous block in rank order
    (rank 0 the first ``B // world_size`` rows), so the shards of ranks 0, 1, ... put together give the
    batch back. ``B`` must be a multiple of ``world_size``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if batch.shape[0] % world_size:
        raise ValueError(f"a global batch of {batch.shape[0]} rows does not split evenly over {world_size} ranks: "
                         f"choose a multiple of {world_size}")
    size = batch.shape[0] // world_size
    return batch[rank * size:(rank + 1) * size]


def average_gradients(model: nn.Module) -> None:
    """After ``loss.backward()`` on every rank: make each ``p.grad`` the mean of that gradient over the
    ranks, in place, as DistributedDataParallel does. Parameters without a gradient are skipped.

    All-reduce with SUM, then divide by the world size: gloo, the CPU backend, has no AVG.
    """
    import torch.distributed as dist

    world_size = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world_size


def broadcast_parameters(model: nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters (DDP does this when it wraps a model)."""
    import torch.distributed as dist

    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p, src=src)


def train_single(config: RunConfig, threads: int | None = 1) -> dict[str, Any]:
    """The reference: one process trains on the whole global batch of every step.

    ``threads``: PyTorch's CPU threads while it trains (1, like each rank of :func:`launch`; a model this
    small gains nothing from more, and extra threads fight the ranks for the cores); None leaves them be.
    Returns ``{"losses": [loss per step], "params": {name: tensor}, "seconds": training time}``.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train_single(config)
    finally:
        torch.set_num_threads(before)


def _train_single(config: RunConfig) -> dict[str, Any]:
    from course.lm import lm_loss

    data, vocab_size = corpus_ids(config.corpus_chars)
    model = make_model(config, vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    losses = []
    start = time.perf_counter()
    for step in range(config.steps):
        x, y = global_batch(data, step, config)
        optimizer.zero_grad(set_to_none=True)
        loss = lm_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    return {"losses": losses, "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "seconds": seconds}


def max_abs_diff(a: Sequence[float] | dict[str, Tensor], b: Sequence[float] | dict[str, Tensor]) -> float:
    """The largest absolute difference between two loss curves (lists) or two state dicts (same keys)."""
    if isinstance(a, dict):
        if a.keys() != b.keys():
            raise ValueError(f"the state dicts differ in their keys: {sorted(set(a) ^ set(b))[:3]}")
        return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    if len(a) != len(b):
        raise ValueError(f"the runs have {len(a)} and {len(b)} steps")
    return max(abs(x - y) for x, y in zip(a, b))


def differences_by_parameter(a: dict[str, Tensor], b: dict[str, Tensor]) -> list[tuple[str, float]]:
    """``[(name, largest |a - b|)]`` for every parameter of two state dicts, largest first."""
    if a.keys() != b.keys():
        raise ValueError(f"the state dicts differ in their keys: {sorted(set(a) ^ set(b))[:3]}")
    return sorted(((k, float((a[k].double() - b[k].double()).abs().max())) for k in a), key=lambda kv: -kv[1])


# ----------------------------------------------------------------------------------------------------
# Memory per rank
# ----------------------------------------------------------------------------------------------------

def local_tensor(t: Tensor) -> Tensor:
    """The part of ``t`` this rank holds: a sharded ``DTensor``'s local shard, any other tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def tensor_bytes(t: Tensor | None) -> int:
    """Bytes this rank holds for ``t`` (its local shard when sharded); 0 for None."""
    if t is None:
        return 0
    local = local_tensor(t)
    return local.numel() * local.element_size()


def memory_per_rank(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """``{"parameters", "gradients", "optimizer", "total"}``: bytes of the tensors this rank holds for them,
    counted from the tensors (local shards for sharded ones). Shared (tied) parameters count once; the
    optimiser's state counts every tensor it keeps (Adam: two moments per parameter and a step count)."""
    params = list({id(p): p for p in model.parameters()}.values())
    counts = {"parameters": sum(tensor_bytes(p) for p in params),
              "gradients": sum(tensor_bytes(p.grad) for p in params),
              "optimizer": sum(tensor_bytes(v) for state in optimizer.state.values()
                               for v in state.values() if isinstance(v, Tensor))}
    counts["total"] = sum(counts.values())
    return counts


BYTES_PER_PARAMETER_ADAM = 16
"""Bytes of training state per parameter with Adam: in float32, 4 for the weight, 4 for its gradient and
4 + 4 for Adam's two moments; in mixed precision (the ZeRO paper's count) 2 + 2 for the half-precision
weight and gradient and 4 + 4 + 4 for the float32 master weight and the two moments. 16 either way,
before activations."""


def adam_bytes_per_rank(n_params: int, world_size: int, sharded: bool) -> int:
    """Bytes of weights, gradients and Adam's two moments (16 per parameter) one rank holds.

    Replicated (DDP): every rank holds all of it, ``16 * n_params``. Sharded (FSDP, ZeRO-3): each rank holds
    an equal share of every kind, ``ceil(n_params / world_size)`` parameters' worth (the last share padded
    to the same size), ``16 * ceil(n_params / world_size)``.
    """
    if n_params < 0 or world_size < 1:
        raise ValueError(f"need n_params >= 0 and world_size >= 1, got {n_params} and {world_size}")
    per_rank = -(-n_params // world_size) if sharded else n_params
    return BYTES_PER_PARAMETER_ADAM * per_rank


def gpus_needed(n_params: int, gpu_bytes: int) -> int:
    """The fewest ranks (GPUs) over which a fully sharded model of ``n_params`` parameters trained with Adam
    fits in ``gpu_bytes`` per GPU: the smallest ``world_size`` with
    ``adam_bytes_per_rank(n_params, world_size, sharded=True) <= gpu_bytes`` (weights, gradients and
    optimiser state only: activations and the temporarily gathered layers need room on top)."""
    per_gpu = gpu_bytes // BYTES_PER_PARAMETER_ADAM  # parameters' worth one GPU can hold
    if per_gpu < 1:
        raise ValueError(f"{gpu_bytes} bytes cannot hold even one parameter's {BYTES_PER_PARAMETER_ADAM} bytes")
    return max(1, -(-n_params // per_gpu))


# ----------------------------------------------------------------------------------------------------
# The cost of communication
# ----------------------------------------------------------------------------------------------------

def fit_latency_bandwidth(sizes_bytes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """``time = latency + bytes / bandwidth``, fitted so that one slow timing cannot drag the line:
    ``(latency in s, bandwidth in bytes/s)``.

    The latency is the median time of the (up to) three smallest tensors, where it dominates; the bandwidth
    is the least-squares slope, through that latency, of the larger half of the sizes, where the bytes
    dominate, using the median slope's points only (each point's own bandwidth within a factor 2 of the
    median), so a single outlier at either end moves neither figure.
    """
    if len(sizes_bytes) != len(seconds) or len(sizes_bytes) < 2:
        raise ValueError("need at least two (size, time) pairs of equal length")
    pairs = sorted(zip(sizes_bytes, seconds))
    smallest, largest = pairs[: min(3, len(pairs) - 1)], pairs[len(pairs) // 2:]
    inverse = 0.0                                            # 1 / bandwidth, refined below
    for _ in range(3):                                       # latency and bandwidth, each given the other
        latency = max(statistics.median(t - s * inverse for s, t in smallest), 0.0)
        large = [(s, t - latency) for s, t in largest if t > latency and s > pairs[0][0]]
        if not large:
            raise ValueError("the largest tensors did not take longer than the smallest: cannot fit a bandwidth")
        middle = statistics.median(s / dt for s, dt in large)    # each point's own bandwidth, the median
        kept = [(s, dt) for s, dt in large if middle / 2 <= s / dt <= middle * 2]
        inverse = sum(s * dt for s, dt in kept) / sum(s * s for s, _ in kept)    # least squares
    return latency, 1.0 / inverse


def bus_bandwidth(n_bytes: float, seconds: float, world_size: int) -> float:
    """All-reduce "bus bandwidth" (the figure nccl-tests reports): a ring all-reduce sends and receives
    ``2 (W - 1) / W`` times the tensor's bytes per rank, so ``bytes * 2 (W - 1) / W / seconds``."""
    return n_bytes * 2 * (world_size - 1) / world_size / seconds


# ----------------------------------------------------------------------------------------------------
# FSDP2, where this PyTorch keeps it
# ----------------------------------------------------------------------------------------------------

def fully_shard_function():
    """PyTorch's ``fully_shard`` (FSDP2): ``torch.distributed.fsdp`` from PyTorch 2.6,
    ``torch.distributed._composable.fsdp`` in 2.4 and 2.5; ``None`` when this PyTorch has neither."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:
            return None
    return fully_shard


# ----------------------------------------------------------------------------------------------------
# Launching the script with torchrun
# ----------------------------------------------------------------------------------------------------

class DistributedRunError(RuntimeError):
    """A torchrun launch that failed, with one line saying why (which rank, what it raised). In a notebook
    the line is all that is shown, without a traceback."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of the traceback
        return [f"{type(self).__name__}: {self}"]


def torchrun_command(modes: Sequence[str], nproc: int = 2, config: RunConfig | None = None,
                     extra: Sequence[str] = ()) -> list[str]:
    """The command line that runs :mod:`course.dist_train` on ``nproc`` processes of this machine, as a
    learner would type it (``torchrun`` is PyTorch's launcher; :func:`launch` runs the same thing as
    ``python -m torch.distributed.run``). ``--standalone`` lets torchrun pick a free port itself."""
    config = config or RunConfig()
    return (["torchrun", "--standalone", f"--nproc-per-node={nproc}", "-m", "course.dist_train",
             "--modes", *modes] + config.to_args() + list(extra))


def multinode_command(nnodes: int, nproc_per_node: int, endpoint: str, job_id: str,
                      modes: Sequence[str] = ("fsdp",)) -> list[str]:
    """The command to type on *every* one of ``nnodes`` machines to run the script on ``nnodes * nproc_per_node``
    ranks: torchrun's c10d rendezvous meets at ``endpoint`` (``host:port`` of one of the machines, reachable
    from all), and ``job_id`` keeps this job apart from others meeting there."""
    return ["torchrun", f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={job_id}", "-m", "course.dist_train", "--modes", *modes]


def _child_env(threads_per_rank: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads_per_rank)
    env.setdefault("PYTHONWARNINGS", "ignore")
    if os.name == "nt":  # PyTorch's Windows wheels build the rendezvous store without libuv
        env.setdefault("USE_LIBUV", "0")
    # The ranks must import this very package (a notebook's kernel may have found it on sys.path only).
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


_NOISE = re.compile(r"^(\s|\[|W\d{4}|I\d{4}|E\d{4}|Traceback|File |During handling|The above exception|\*+$|=+$|-+$)")


def _launcher_reason(stderr: str) -> str:
    """The most telling line of a failed launch's output: a rank's own one-line error (``rank N: ...``), else
    a command-line error (``...: error: ...``), else the message of a C++ exception that aborted a rank
    (``what(): ...``), else the last ``SomethingError: message`` line, else the last line that is not a log
    prefix or a traceback frame."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for pattern in (r"^rank \d+: \S", r"\berror: \S", r"\bwhat\(\):\s+\S"):
        found = [ln for ln in lines if re.search(pattern, ln)]
        if found:
            return found[0]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Failure)\b: \S", ln)]
    if errors:
        return errors[-1]
    plain = [ln for ln in lines if not _NOISE.match(ln)]
    return plain[-1] if plain else "no message"


def _run_process_group(argv: list[str], timeout_s: float, env: dict[str, str], cwd: str
                       ) -> subprocess.CompletedProcess:
    """Run the launcher in a process group of its own, so that on a timeout it goes together with every rank
    it started (POSIX; elsewhere the launcher alone is stopped, and it stops its ranks)."""
    posix = os.name == "posix"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=posix)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if posix:
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.communicate()
        raise DistributedRunError(f"the run did not finish within {timeout_s:g} s (a rank waiting for another "
                                  "that never arrives?)") from None
    except BaseException:  # an interrupted cell: take the ranks down too
        if posix:
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _scrub(text: str, folder: str) -> str:
    return text.replace(folder, "<results folder>").replace(str(Path(folder).resolve()), "<results folder>")


def launch(modes: Sequence[str] | str, nproc: int = 2, config: RunConfig | None = None, *,
           extra: Sequence[str] = (), timeout_s: float = 300.0, threads_per_rank: int = 1) -> dict[str, Any]:
    """Run :mod:`course.dist_train` under torchrun on ``nproc`` processes and return what the ranks wrote:
    ``{"ranks": [one dict per rank, by rank], "params": {mode: rank 0's final full parameters},
    "seconds": wall time of the whole launch, "command": the torchrun command line}``.

    Each rank writes its results (JSON, and rank 0 the final parameters) into a temporary folder that is
    deleted afterwards; its path is never shown. Any failure (torch.distributed missing, a rank that raised,
    a launcher that could not start, a run past ``timeout_s``) raises :class:`DistributedRunError` with one line.
    A launch where a rank was killed by a signal is run once more; the result then carries ``"retried"``,
    the first launch's one-line reason.
    """
    import torch.distributed as dist

    modes = [modes] if isinstance(modes, str) else list(modes)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"unknown mode {unknown[0] if unknown else '(none)'!r}: choose from {', '.join(MODES)}")
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    if not dist.is_available():
        raise DistributedRunError("this PyTorch was built without torch.distributed, so it cannot launch several "
                                  "processes (PyTorch's wheels for Linux, Windows and macOS include it)")
    config = config or RunConfig()
    try:
        return _launch_once(modes, nproc, config, extra, timeout_s, threads_per_rank)
    except _KilledBySignal as first:
        # A rank killed by a signal (an abort inside a communication library on a heavily loaded machine, or a
        # process stopped from outside) is not this script's error: launch once more, and say so.
        result = _launch_once(modes, nproc, config, extra, timeout_s, threads_per_rank)
        result["retried"] = str(first)
        return result


class _KilledBySignal(DistributedRunError):
    """A rank died by a signal (SIGABRT, SIGKILL, ...)."""


def _launch_once(modes: list[str], nproc: int, config: RunConfig, extra: Sequence[str], timeout_s: float,
                 threads_per_rank: int) -> dict[str, Any]:
    command = torchrun_command(modes, nproc, config, extra)
    with tempfile.TemporaryDirectory(prefix="course-dist-") as folder:
        argv = [sys.executable, "-m", "torch.distributed.run"] + command[1:] + ["--out", folder]
        start = time.perf_counter()
        proc = _run_process_group(argv, timeout_s, _child_env(threads_per_rank), folder)
        seconds = time.perf_counter() - start
        ranks: list[dict | None] = []
        for rank in range(nproc):
            path = Path(folder) / f"rank{rank}.json"
            ranks.append(json.loads(path.read_text(encoding="utf-8")) if path.exists() else None)
        failed = [r for r in ranks if r is not None and r.get("error")]
        if failed:
            first = failed[0]
            raise DistributedRunError(_scrub(f"rank {first['rank']} of {nproc} failed: {first['error']}", folder))
        if proc.returncode != 0 or any(r is None for r in ranks):
            reason = _scrub(_launcher_reason(proc.stderr + "\n" + proc.stdout), folder)
            signalled = re.search(r"\bSignal \d+ \(SIG\w+\) received", proc.stderr + proc.stdout)
            error = _KilledBySignal if signalled else DistributedRunError
            raise error(f"torchrun exited with code {proc.returncode}: {reason}")
        params = {}
        for mode in modes:
            path = Path(folder) / f"{mode}_params.pt"
            if path.exists():
                params[mode] = torch.load(path, map_location="cpu", weights_only=True)
    return {"ranks": ranks, "params": params, "seconds": seconds, "command": " ".join(command),
            "config": asdict(config)}
