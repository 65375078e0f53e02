"""Lesson 19's training script: every rank runs this file, started by torchrun.

    torchrun --standalone --nproc-per-node=2 -m course.dist_train --modes ddp fsdp

torchrun starts one process per rank and gives each its place in the environment (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); :func:`setup` joins the process group
with NCCL when every rank has its own GPU, else with gloo on the CPU. The modes:

- ``ddp``: DistributedDataParallel, which averages the gradients during ``backward()``;
- ``manual``: the same training with :func:`course.distributed.average_gradients` after ``backward()``;
- ``fsdp``: FSDP2 (``fully_shard``): parameters, gradients and Adam's state sharded over the ranks;
- ``allreduce``: the time of one all-reduce for tensors from 1 KB to 16 MB.

Every rank writes its results to ``<out>/rank<r>.json`` (rank 0 also the final parameters to
``<out>/<mode>_params.pt``); without ``--out``, rank 0 prints a summary. A rank that fails writes its
error in one line, so :func:`course.distributed.launch` can report it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from course.distributed import (MODES, RunConfig, average_gradients, broadcast_parameters, corpus_ids,
                                fully_shard_function, global_batch, local_tensor, make_model, memory_per_rank,
                                shard_batch)
from course.lm import lm_loss
from course.utils import describe_exception

ALL_REDUCE_SIZES = [2**8, 2**10, 2**12, 2**14, 2**16, 2**18, 2**20, 2**22]  # float32 numbers: 1 KB .. 16 MB


def setup() -> tuple[int, int, torch.device, str]:
    """Join the process group torchrun prepared: ``(rank, world_size, device, backend)``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))   # the ranks on this machine
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world_size:
        backend, device = "nccl", torch.device("cuda", local_rank)   # one GPU per rank
        torch.cuda.set_device(device)
    else:
        backend, device = "gloo", torch.device("cpu")
    dist.init_process_group(backend, timeout=timedelta(seconds=120))
    return dist.get_rank(), dist.get_world_size(), device, backend


def mean_over_ranks(value: torch.Tensor) -> float:
    """The mean of a scalar over all ranks (every rank gets it): for the loss of the whole global batch."""
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.item() / dist.get_world_size()


def train(config: RunConfig, mode: str, device: torch.device, watch=None) -> tuple[dict, dict]:
    """Train the run's GPT on this rank's shard of every global batch; ``mode`` is ddp, manual or fsdp.

    Returns ``(results, final parameters)``: the results hold the loss of the whole global batch at every
    step and the bytes this rank holds; the parameters are full tensors on every rank.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    data, vocab_size = corpus_ids(config.corpus_chars)
    model = make_model(config, vocab_size).to(device)      # the same seed on every rank: the same weights

    if mode == "ddp":
        model = nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True)
    elif mode == "manual":
        broadcast_parameters(model)                          # as DDP does: everyone starts from rank 0's weights
    elif mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (world_size,))
        for block in model.blocks:                           # one group per block: gathered one at a time
            fully_shard_function()(block, mesh=mesh)
        fully_shard_function()(model, mesh=mesh)             # the rest: embeddings, final norm, head
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)   # after sharding: it sees the shards

    losses = []
    start = time.perf_counter()
    for step in range(config.steps):
        x, y = global_batch(data, step, config)              # every rank draws the same global batch ...
        x, y = shard_batch(x, rank, world_size), shard_batch(y, rank, world_size)   # ... and keeps its rows
        if watch is not None and step == config.steps - 1:
            watch.start(model)
        optimizer.zero_grad(set_to_none=True)
        loss = lm_loss(model(x.to(device)), y.to(device))
        if watch is not None:
            watch.mark("forward done")
        loss.backward()                                      # ddp and fsdp communicate inside backward()
        if mode == "manual":
            average_gradients(model)                         # by hand: all-reduce, then divide
        if watch is not None:
            watch.mark("backward done")
        optimizer.step()
        if watch is not None:
            watch.mark("optimiser step done")
            watch.stop()
        losses.append(mean_over_ranks(loss))                 # the loss of the whole global batch
    seconds = time.perf_counter() - start

    memory = memory_per_rank(model, optimizer)               # local shards only, for fsdp
    state = model.module.state_dict() if mode == "ddp" else model.state_dict()
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu() for k, v in state.items()}
    return {"losses": losses, "memory": memory, "seconds": seconds,
            "local_parameters": sum(local_tensor(p).numel() for p in {id(p): p for p in model.parameters()}.values())}, full


class GatherWatch:
    """Records, during one FSDP2 training step, which groups of parameters this rank holds in full.

    FSDP2 keeps each group's parameters as ``DTensor`` shards; while a group is gathered, its module holds
    plain full tensors instead (PyTorch's documented behaviour). Hooks on every block note the moments;
    ``events`` lists ``(moment, {group: True if gathered}, numbers of parameter values held)``.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, bool], int]] = []
        self.handles: list = []
        self.model: nn.Module | None = None
        self.groups: dict[str, list[nn.Parameter]] = {}
        self.shard_numel = 0

    def start(self, model: nn.Module) -> None:
        self.model = model
        for i, block in enumerate(model.blocks):
            self.handles.append(block.register_forward_pre_hook(lambda m, a, i=i: self.mark(f"block {i} forward")))
            self.handles.append(block.register_forward_hook(lambda m, a, o, i=i: self.mark(f"block {i} forward done")))
            self.handles.append(block.register_full_backward_hook(lambda m, gi, go, i=i: self.mark(f"block {i} backward")))
        self.mark("step starts")
        self.shard_numel = sum(local_tensor(p).numel() for p in self._params())

    def _params(self) -> list[nn.Parameter]:
        return list({id(p): p for p in self.model.parameters()}.values())

    def _state(self) -> tuple[dict[str, bool], int]:
        groups = {f"block {i}": list(b.parameters()) for i, b in enumerate(self.model.blocks)}
        in_blocks = {id(p) for ps in groups.values() for p in ps}
        groups = {"embeddings, final norm, head": [p for p in self._params() if id(p) not in in_blocks], **groups}
        gathered = {name: not hasattr(ps[0], "to_local") for name, ps in groups.items()}
        full = sum(p.numel() for name, ps in groups.items() if gathered[name] for p in ps)
        return gathered, full

    def mark(self, moment: str) -> None:
        if self.model is None:
            return
        gathered, full = self._state()
        self.events.append((moment, gathered, full))

    def stop(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.model = [], None

    def result(self) -> dict:
        return {"events": [{"moment": m, "gathered": g, "full_numel": f} for m, g, f in self.events],
                "shard_numel": self.shard_numel}


def count_collectives(config: RunConfig, device: torch.device) -> dict | None:
    """The collectives one FSDP2 step issues, counted separately in forward and in backward with
    PyTorch's ``CommDebugMode``; None where this PyTorch lacks it."""
    try:
        from torch.distributed.tensor.debug import CommDebugMode
    except ImportError:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    data, vocab_size = corpus_ids(config.corpus_chars)
    model = make_model(config, vocab_size).to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard_function()(block, mesh=mesh)
    fully_shard_function()(model, mesh=mesh)
    x, y = global_batch(data, 0, config)
    x, y = (shard_batch(t, dist.get_rank(), dist.get_world_size()).to(device) for t in (x, y))
    counts = {}
    with CommDebugMode() as forward:
        loss = lm_loss(model(x), y)
    with CommDebugMode() as backward:
        loss.backward()
    for phase, mode in (("forward", forward), ("backward", backward)):
        counts[phase] = {str(op).split(".")[-1].strip("_'>)"): n for op, n in mode.get_comm_counts().items()}
    return counts


def time_all_reduce(device: torch.device, sizes: list[int], repeats: int = 9) -> list[dict]:
    """Median seconds of one all-reduce (SUM) of ``n`` float32 numbers, for each ``n`` of ``sizes``; each
    timed call starts after a barrier, so that every rank starts it together."""
    rows = []
    for n in sizes:
        t = torch.ones(n, device=device)
        for _ in range(2):                                   # warm up: buffers, connections
            dist.all_reduce(t)
        times = []
        for _ in range(repeats if n < 2**20 else max(3, repeats // 2)):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(t)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        rows.append({"numel": n, "bytes": n * 4, "seconds": statistics.median(times)})
    return rows


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, RunConfig]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["ddp"], help="what to run, in order")
    parser.add_argument("--out", help="folder for the ranks' results (default: rank 0 prints a summary)")
    defaults = RunConfig()
    for f in fields(RunConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name))
    args = parser.parse_args(argv)
    config = RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig)})
    return args, config


def run(args: argparse.Namespace, config: RunConfig) -> dict:
    """Everything one rank does: join, run each mode, leave. Returns this rank's results."""
    rank, world_size, device, backend = setup()
    if config.global_batch % world_size:
        raise ValueError(f"--global-batch={config.global_batch} does not split evenly over {world_size} ranks: "
                         f"choose a multiple of {world_size}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = {"rank": rank, "world_size": world_size, "backend": backend, "device": str(device),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "modes": {}, "error": None}
    for mode in args.modes:
        if mode == "allreduce":
            out["modes"][mode] = {"rows": time_all_reduce(device, ALL_REDUCE_SIZES)}
            continue
        if mode == "fsdp" and fully_shard_function() is None:
            raise RuntimeError(f"FSDP2 (fully_shard) needs PyTorch 2.4 or newer; this is {torch.__version__}")
        watch = GatherWatch() if mode == "fsdp" else None
        result, params = train(config, mode, device, watch)
        if watch is not None:
            result["gathers"] = watch.result()
            result["collectives"] = count_collectives(config, device)
        out["modes"][mode] = result
        if rank == 0 and args.out:
            torch.save(params, Path(args.out) / f"{mode}_params.pt")
    dist.barrier()
    dist.destroy_process_group()
    return out


def summary(out: dict) -> str:
    lines = [f"{out['world_size']} ranks, {out['backend']} on {out['device']}"]
    for mode, result in out["modes"].items():
        if "losses" in result:
            lines.append(f"{mode}: loss {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f} in "
                         f"{len(result['losses'])} steps; rank 0 holds {result['memory']['total']:,} bytes")
        else:
            lines.append(f"{mode}: " + ", ".join(f"{r['bytes']:,} B {r['seconds'] * 1e3:.3f} ms" for r in result["rows"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")                        # keep the ranks' output to their results
    args, config = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        out = run(args, config)
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the launcher as one line
        line = describe_exception(exc)
        print(f"rank {rank}: {line}", file=sys.stderr)
        if args.out:
            Path(args.out, f"rank{rank}.json").write_text(json.dumps({"rank": rank, "error": line}), encoding="utf-8")
        return 1
    if args.out:
        Path(args.out, f"rank{rank}.json").write_text(json.dumps(out), encoding="utf-8")
    elif rank == 0:
        print(summary(out))
    return 0


if __name__ == "__main__":
    code = main()
    # Leave without the interpreter's teardown: the results are written and the process group destroyed, and
    # communication libraries' background threads have been seen to abort a finished rank at exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
