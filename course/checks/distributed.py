"""Checkers for lesson 19 (scale out): a rank's shard of the batch, gradients averaged by hand with
all-reduce, and the memory arithmetic (bytes per rank with Adam, GPUs needed).

Averaging gradients needs several processes; the checker simulates them in one. :func:`simulate_ranks`
runs the learner's function once per rank, each rank a thread with its own copy of a small model whose
gradients differ from rank to rank, while ``torch.distributed``'s ``all_reduce``, ``reduce``,
``broadcast``, ``barrier``, ``get_rank``, ``get_world_size`` and ``is_initialized`` stand in for a process
group: a collective waits until every rank has made the same call, then works in place on each rank's
tensor, as the real ones do. A rank that makes a collective
call the others never make is reported in one line instead of hanging.

The cases are chosen so that each listed mistake gives an output different from the right one and from
the other mistakes on the first case where it fails: the shard cases have batches whose first axis is not
the longest, a world size that differs from the shard size, the last rank and world size 1; the gradient
cases have world sizes 2, 4, 3 and 1 (dividing by a fixed 2 is right only for the first), a parameter
without a gradient (a frozen one) and different numbers on every rank; the memory cases have parameter
counts that the world size does not divide (ceil against floor), DDP with several ranks (no division),
a GPU whose bytes are not a multiple of 16 and a model whose shares only fit once padded.
``tests/checks/test_checks_distributed.py`` runs learner-style wrong answers through every checker.
"""
from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..distributed import adam_bytes_per_rank, gpus_needed, shard_batch
from .core import FAILED, CheckResult, Mistake, check_function, evaluate_values, report, time_limit_s

__all__ = ["check_shard_batch", "check_average_gradients", "check_adam_bytes_per_rank", "check_gpus_needed",
           "simulate_ranks", "RanksOutOfStep"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- a rank's shard of the batch

def _shard_cases() -> list[tuple]:
    g = _gen(19)
    return [
        (torch.arange(24.0).view(8, 3), 1, 2),                        # two ranks, the second half
        (torch.randn(12, 5, generator=g), 2, 4),                      # 4 ranks of 3 rows; 5 columns
        (torch.randn(6, 2, 3, generator=g), 0, 3),                    # a 3-D batch, rank 0
        (torch.randint(0, 50, (10, 4), generator=g), 4, 5),           # token ids, the last of 5 ranks
        (torch.randn(4, 7, generator=g), 3, 4),                       # one row per rank, the last rank
        (torch.randn(5, 2, generator=g), 0, 1),                       # one rank: the whole batch
    ]


def _rows(batch, start, stop):
    return batch[start:stop]


SHARD_MISTAKES = [
    Mistake("you took every world_size-th row (a stride, batch[rank::world_size], which is how torch's "
            "DistributedSampler deals out indices); here each rank takes one contiguous block: rank r the rows "
            "r * B // world_size up to (r + 1) * B // world_size",
            lambda b, r, w: b[r::w]),
    Mistake("the shard is one block too far along: ranks count from 0, so rank r starts at row r * (B // world_size)",
            lambda b, r, w: b[(r + 1) * (b.shape[0] // w):(r + 2) * (b.shape[0] // w)]),
    Mistake("every rank gets the first block: the start of the shard must depend on the rank, r * (B // world_size)",
            lambda b, r, w: b[:b.shape[0] // w]),
    Mistake("the shard size came from the wrong axis: it is the batch size over the world size, "
            "batch.shape[0] // world_size (axis 0 is the batch)",
            lambda b, r, w: b[r * (b.shape[-1] // w):(r + 1) * (b.shape[-1] // w)]),
    Mistake("the shard size came from the wrong axis: it is the batch size over the world size, "
            "batch.shape[0] // world_size (axis 0 is the batch)",
            lambda b, r, w: b[r * (b.shape[1] // w):(r + 1) * (b.shape[1] // w)]),
    Mistake("each shard has world_size rows: a shard has B // world_size rows (the batch divided among the ranks)",
            lambda b, r, w: b[r * w:(r + 1) * w]),
    Mistake("the blocks are dealt from the end: rank 0 takes the first B // world_size rows, so that the ranks' "
            "shards in rank order give the batch back",
            lambda b, r, w: b[b.shape[0] - (r + 1) * (b.shape[0] // w):b.shape[0] - r * (b.shape[0] // w)]),
    Mistake("that is the whole batch: each rank keeps only its own B // world_size rows",
            lambda b, r, w: b),
    Mistake("that is one row: a shard has B // world_size rows, rows r * (B // world_size) up to (r + 1) * (B // world_size)",
            lambda b, r, w: b[r:r + 1]),
    Mistake("the batch was split along the wrong axis: split axis 0, the rows (torch.chunk(batch, world_size, dim=0))",
            lambda b, r, w: torch.chunk(b, w, dim=-1)[r]),
    Mistake("the batch was split along the wrong axis: split axis 0, the rows (torch.chunk(batch, world_size, dim=0))",
            lambda b, r, w: torch.chunk(b, w, dim=1)[r]),
]


def check_shard_batch(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(batch [B, ...], rank, world_size) -> [B // world_size, ...]``: rank ``rank``'s contiguous block."""
    return check_function("shard_batch", fn, shard_batch, _shard_cases(), mistakes=SHARD_MISTAKES, atol=0, rtol=0,
                          output_names=("shard",), batch_first=True,
                          exception_hints=[("slice indices must be integers", "the shard size must be an int: "
                                            "use integer division, batch.shape[0] // world_size")],
                          strict=strict)


# ----------------------------------------------------------------------------- simulated ranks

class RanksOutOfStep(RuntimeError):
    """A simulated rank waited in a collective call that another rank never made."""


def _reductions() -> dict:
    import torch.distributed as dist

    if not dist.is_available():
        return {}
    table = {dist.ReduceOp.SUM: lambda s: s.sum(0), dist.ReduceOp.MAX: lambda s: s.amax(0),
             dist.ReduceOp.MIN: lambda s: s.amin(0), dist.ReduceOp.PRODUCT: lambda s: s.prod(0)}
    if hasattr(dist.ReduceOp, "AVG"):
        table[dist.ReduceOp.AVG] = lambda s: s.sum(0) / s.shape[0]
    return table


_REDUCTIONS = _reductions()


class _Work:
    """What an ``async_op=True`` collective returns: the work is done already, ``wait()`` returns at once."""

    def wait(self, timeout=None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


class _SimulatedGroup:
    """``world_size`` ranks as threads of one process, and the collectives they call."""

    def __init__(self, world_size: int, patience_s: float) -> None:
        self.world_size = world_size
        self.patience_s = patience_s
        self.cond = threading.Condition()
        self.calls: list[dict[int, tuple]] = []      # call k: {rank: (name, tensor copy, detail)}
        self.results: dict[int, Any] = {}
        self.made = [0] * world_size                 # collective calls each rank has made
        self.finished: set[int] = set()
        self.aborted = False
        self.local = threading.local()

    # --- what the learner's code calls, through torch.distributed
    def get_rank(self, group=None) -> int:
        return self.local.rank

    def get_world_size(self, group=None) -> int:
        return self.world_size

    def is_initialized(self) -> bool:
        return True

    def barrier(self, group=None, async_op=False, device_ids=None):
        self._collective("barrier", None, None)
        return _Work() if async_op else None

    def all_reduce(self, tensor, op=None, group=None, async_op=False):
        op = self._op(op)
        self._tensor("all_reduce", tensor)
        result = self._collective("all_reduce", tensor, op)
        with torch.no_grad():
            tensor.copy_(result)
        return _Work() if async_op else None

    def reduce(self, tensor, dst=0, op=None, group=None, async_op=False, group_dst=None):
        op = self._op(op)
        self._tensor("reduce", tensor)
        result = self._collective("reduce", tensor, (op, dst))
        if self.local.rank == dst:
            with torch.no_grad():
                tensor.copy_(result)
        return _Work() if async_op else None

    def broadcast(self, tensor, src=0, group=None, async_op=False, group_src=None):
        self._tensor("broadcast", tensor)
        result = self._collective("broadcast", tensor, src)
        with torch.no_grad():
            tensor.copy_(result)
        return _Work() if async_op else None

    # --- the machinery
    @staticmethod
    def _op(op):
        import torch.distributed as dist

        op = dist.ReduceOp.SUM if op is None else op
        if op not in _REDUCTIONS:
            raise ValueError(f"this simulation supports ReduceOp SUM, AVG, MAX, MIN and PRODUCT, not {op}")
        return op

    @staticmethod
    def _tensor(name: str, tensor) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}() needs a tensor to work on in place, got {type(tensor).__name__}")

    def _collective(self, name: str, tensor, detail):
        rank = self.local.rank
        with self.cond:
            k = self.made[rank]
            self.made[rank] += 1
            while len(self.calls) <= k:
                self.calls.append({})
            copy = None if tensor is None else tensor.detach().clone()
            self.calls[k][rank] = (name, copy, detail)
            self.cond.notify_all()
            deadline = time.monotonic() + self.patience_s
            while len(self.calls[k]) < self.world_size:
                gone = [r for r in self.finished if self.made[r] <= k]
                if gone or self.aborted or time.monotonic() > deadline:
                    who = f"rank {gone[0]} never made it" if gone else "not every rank reached it"
                    raise RanksOutOfStep(f"rank {rank} waited in {name} call {k + 1}, but {who}")
                self.cond.wait(0.02)
            if k not in self.results:
                entries = [self.calls[k][r] for r in range(self.world_size)]
                names = {e[0] for e in entries}
                if len(names) > 1:
                    raise RanksOutOfStep(f"in collective call {k + 1} the ranks called different collectives "
                                         f"({', '.join(sorted(names))}): every rank must make the same calls in "
                                         "the same order")
                tensors = [e[1] for e in entries]
                if tensor is not None and len({tuple(t.shape) for t in tensors}) > 1:
                    raise RanksOutOfStep(f"in {name} call {k + 1} the ranks passed tensors of different shapes "
                                         f"{sorted({tuple(t.shape) for t in tensors})}")
                if name == "barrier":
                    self.results[k] = None
                elif name == "broadcast":
                    self.results[k] = tensors[detail]
                else:
                    op = detail[0] if name == "reduce" else detail
                    self.results[k] = _REDUCTIONS[op](torch.stack(tensors))
            return self.results[k]

    def run_rank(self, rank: int, fn: Callable, arg: Any, box: dict) -> None:
        self.local.rank = rank
        try:
            box[rank] = ("value", fn(arg))
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            box[rank] = ("error", exc)
        finally:
            with self.cond:
                self.finished.add(rank)
                self.cond.notify_all()


_PATCHED = ("all_reduce", "reduce", "broadcast", "barrier", "get_rank", "get_world_size", "is_initialized")


@contextlib.contextmanager
def _patched_dist(group: _SimulatedGroup):
    import torch.distributed as dist

    saved = {name: getattr(dist, name, None) for name in _PATCHED}
    for name in _PATCHED:
        setattr(dist, name, getattr(group, name))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(dist, name, value)


def simulate_ranks(fn: Callable, args_per_rank: list, time_limit: float | None = None) -> list:
    """Run ``fn(args_per_rank[r])`` for every rank ``r`` at once, each in its own thread, with
    ``torch.distributed``'s collectives simulated among them (see the module's docstring); return the
    values in rank order. The first exception a rank raised is raised again (a rank's own error before a
    rank left waiting because of it); a rank still running after ``time_limit`` seconds is stopped."""
    world_size = len(args_per_rank)
    limit = time_limit_s(time_limit)
    limit = limit if limit > 0 else 60.0
    group = _SimulatedGroup(world_size, patience_s=limit)
    box: dict[int, tuple] = {}
    threads = [threading.Thread(target=group.run_rank, args=(r, fn, a, box), name=f"rank-{r}", daemon=True)
               for r, a in enumerate(args_per_rank)]
    grad_enabled = torch.is_grad_enabled()
    with _patched_dist(group), torch.set_grad_enabled(grad_enabled):
        try:
            for t in threads:
                t.start()
            deadline = time.monotonic() + limit
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
        finally:
            with group.cond:
                group.aborted = True
                group.cond.notify_all()
            for t in threads:
                t.join(0.5)
                if t.is_alive():  # CPython: stop it at its next line
                    with contextlib.suppress(Exception):
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(SystemExit))
    errors = [box[r][1] for r in range(world_size) if r in box and box[r][0] == "error"]
    if errors:
        own = [e for e in errors if not isinstance(e, RanksOutOfStep)]
        raise (own or errors)[0]
    if len(box) < world_size:
        raise TimeoutError(f"a rank did not return within {limit:g} s: look for a loop that never ends")
    return [box[r][1] for r in range(world_size)]


# ----------------------------------------------------------------------------- averaging gradients by hand

class _Tiny(nn.Module):
    """A small model: a linear layer with bias, a linear head without, and optionally a frozen parameter."""

    def __init__(self, frozen: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2, bias=False)
        if frozen:
            self.scale = nn.Parameter(torch.ones(2), requires_grad=False)


_SHAPES = [(4, 3), (4,), (2, 4)]


def _grad_cases() -> list[tuple]:
    g = _gen(190)

    def grads(world_size: int) -> tuple:
        return tuple(torch.randn(world_size, *shape, generator=g) for shape in _SHAPES)

    return [(grads(2), False), (grads(4), False), (grads(3), True), (grads(1), False)]


def _model_with(grads: tuple, frozen: bool, rank: int) -> nn.Module:
    model = _Tiny(frozen)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p, g in zip(trainable, grads):
        p.grad = g[rank].clone()
    return model


def _flat_grads(model: nn.Module) -> torch.Tensor:
    """``[n]``: the model's trainable parameters' gradients, one after another (missing ones as NaN)."""
    parts = []
    for p in model.parameters():
        if p.requires_grad:
            parts.append(p.grad.detach().flatten() if isinstance(p.grad, torch.Tensor) and p.grad.shape == p.shape
                         else torch.full((p.numel(),), float("nan")))
    return torch.cat(parts)


def _every_rank(per_rank: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable:
    """A function of a case giving ``[world_size, n]``: ``per_rank(stacked [W, n], rank)`` for each rank."""
    def fn(grads, frozen):
        stacked = torch.cat([g.flatten(1) for g in grads], dim=1)        # [W, n]
        return torch.stack([per_rank(stacked, r) for r in range(stacked.shape[0])])
    return fn


_average_reference = _every_rank(lambda s, r: s.mean(0))


def _learner_on_ranks(fn: Callable) -> Callable:
    """The learner's ``average_gradients(model)`` run on every simulated rank; ``[world_size, n]``: the
    gradients each rank holds afterwards."""
    def run(grads, frozen):
        models = [_model_with(grads, frozen, r) for r in range(grads[0].shape[0])]
        simulate_ranks(fn, models)
        return torch.stack([_flat_grads(m) for m in models])
    return run


AVERAGE_MISTAKES = [
    Mistake("the gradients are summed but not divided: after all_reduce (a SUM) divide by dist.get_world_size()",
            _every_rank(lambda s, r: s.sum(0))),
    Mistake("divided by a fixed 2: divide by dist.get_world_size(), which is 2 only on two ranks",
            _every_rank(lambda s, r: s.sum(0) / 2)),
    Mistake("the gradients are unchanged: all_reduce works in place on the tensor you give it, so give it p.grad "
            "itself (not p.grad / n, p.grad.clone() or p.data), and divide p.grad in place afterwards",
            _every_rank(lambda s, r: s[r])),
    Mistake("each rank divided its own gradient but never added the others': all_reduce(p.grad) first, "
            "then divide by the world size",
            _every_rank(lambda s, r: s[r] / s.shape[0])),
    Mistake("divided by the world size twice (before and after the all_reduce): once is enough",
            _every_rank(lambda s, r: s.mean(0) / s.shape[0])),
    Mistake("that is the largest gradient over the ranks (ReduceOp.MAX): the mean needs ReduceOp.SUM, then a "
            "division by the world size",
            _every_rank(lambda s, r: s.amax(0) / s.shape[0])),
    Mistake("that is the largest gradient over the ranks (ReduceOp.MAX): the mean needs ReduceOp.SUM, then a "
            "division by the world size",
            _every_rank(lambda s, r: s.amax(0))),
    Mistake("only rank 0 has the mean: dist.reduce sends the sum to one rank; all_reduce gives it to every rank",
            _every_rank(lambda s, r: s.mean(0) if r == 0 else s[r] / s.shape[0])),
    Mistake("only rank 0 has the mean: dist.reduce sends the sum to one rank; all_reduce gives it to every rank",
            _every_rank(lambda s, r: s.mean(0) if r == 0 else s[r])),
]


def _locate_ranks(args, name, got, want) -> str | None:
    """Which ranks hold the wrong gradients, in the exercise's words."""
    world_size = want.shape[0]
    before = torch.cat([g.flatten(1) for g in args[0]], dim=1).double()          # [W, n]: each rank's own
    if world_size > 1 and all(torch.allclose(got[r], before[0], atol=1e-6, rtol=1e-5) for r in range(world_size)):
        return ("every rank holds rank 0's gradients: broadcast copies one rank's tensor to the others; the mean "
                "needs every rank's, all_reduce with SUM and a division")
    wrong = [r for r in range(world_size) if not torch.allclose(got[r], want[r], atol=1e-5, rtol=1e-4)]
    if world_size > 1 and wrong and 0 not in wrong:
        return (f"rank 0 has the mean but rank{'s' if len(wrong) > 1 else ''} {', '.join(map(str, wrong))} "
                "do not: every rank needs the same averaged gradients (all_reduce, not reduce)")
    if world_size > 1 and not all(torch.allclose(got[0], got[r], atol=1e-6, rtol=1e-5) for r in range(world_size)):
        return "the ranks ended with different gradients: after averaging, every rank holds the same numbers"
    return None


def check_average_gradients(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(model) -> None``, which after backward makes each rank's ``p.grad`` the mean over the ranks,
    with ``dist.all_reduce``; run on 2, 4, 3 and 1 simulated ranks."""
    if not callable(fn):
        return check_function("average_gradients", fn, _average_reference, [], strict=strict)
    return check_function(
        "average_gradients", _learner_on_ranks(fn), _average_reference, _grad_cases(), mistakes=AVERAGE_MISTAKES,
        output_names=("gradients",), atol=1e-5, rtol=1e-4, locate=_locate_ranks,
        nonfinite_hint="NaN where a gradient belongs: a gradient was replaced by something of another shape, or "
                       "divided by zero (the world size minus one, on one rank?)",
        exception_hints=[
            ("NoneType", "a parameter without a gradient (p.grad is None: a frozen one) must be skipped, as DDP "
                         "skips it"),
            ("has not been initialized", "call the collectives through the module, dist.all_reduce(...) after "
                                         "`import torch.distributed as dist`: that is where the checker's simulated "
                                         "ranks (and a real process group) answer"),
            ("never made it", "every rank must call all_reduce on the same tensors in the same order (no `if rank "
                              "== 0:` around it)"),
        ],
        strict=strict)


# ----------------------------------------------------------------------------- the memory arithmetic

_BYTES_CASES = [
    (1000, 1, False),
    (1000, 4, False),             # DDP on 4 ranks: still everything on every rank
    (1000, 4, True),
    (1003, 4, True),              # not divisible: each share is ceil(1003 / 4) = 251 parameters (floor: 250)
    (1001, 4, True),              # ceil(1001 / 4) = 251 again, where rounding to the nearest gives 250
    (10, 3, True),
    (7_000_000_000, 8, True),
    (124_000_000, 1, True),       # sharded over one rank: all of it
    (0, 2, True),
]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _split(weights: int, grads: int, states: int) -> Callable:
    """Bytes when the weights, gradients and Adam states (4, 4 and 8 bytes) are each sharded or not (1/0)."""
    def fn(n, w, sharded):
        share = _ceil_div(n, w)
        return sum(b * (share if sharded and s else n) for b, s in ((4, weights), (4, grads), (8, states)))
    return fn


BYTES_MISTAKES = [
    Mistake("4 bytes per parameter counts only the float32 weights: training also keeps a gradient (4 bytes) and "
            "Adam's two moments (4 + 4), 16 bytes per parameter",
            lambda n, w, s: 4 * (_ceil_div(n, w) if s else n)),
    Mistake("8 bytes per parameter counts the weights and gradients but not Adam's two moments (4 + 4 bytes): "
            "16 bytes per parameter",
            lambda n, w, s: 8 * (_ceil_div(n, w) if s else n)),
    Mistake("12 bytes per parameter leaves out 4: the weight, its gradient and Adam's two moments make "
            "4 + 4 + 4 + 4 = 16 bytes",
            lambda n, w, s: 12 * (_ceil_div(n, w) if s else n)),
    Mistake("128 is bits, not bytes: 16 bytes per parameter",
            lambda n, w, s: 128 * (_ceil_div(n, w) if s else n)),
    Mistake("divided by the world size for DDP too: without sharding every rank holds all of it",
            lambda n, w, s: 16 * _ceil_div(n, w)),
    Mistake("not divided for FSDP: with sharding each rank holds only ceil(n_params / world_size) parameters' worth",
            lambda n, w, s: 16 * n),
    Mistake("rounded the share down: when world_size does not divide n_params the shares are ceil(n_params / "
            "world_size) (the last one padded), so use -(-n // w) or math.ceil",
            lambda n, w, s: 16 * (n // w if s else n)),
    Mistake("rounded the share to the nearest: the shares are ceil(n_params / world_size), rounded up",
            lambda n, w, s: 16 * (round(n / w) if s else n)),
    Mistake("only Adam's state is sharded (that is ZeRO stage 1): FSDP shards the weights and gradients too",
            _split(0, 0, 1)),
    Mistake("the weights are not sharded (that is ZeRO stage 2: gradients and optimiser state only): FSDP shards "
            "the weights too",
            _split(0, 1, 1)),
    Mistake("only the weights are sharded: FSDP shards the gradients and Adam's state as well", _split(1, 0, 0)),
]


_FLOAT = "should return an int, got float"


def _int_hint(result: CheckResult) -> CheckResult:
    """A float where a whole number belongs: say where it comes from."""
    if result.status == FAILED and result.detail.startswith(_FLOAT):
        result.detail = (f"{_FLOAT}: in Python n / w is a float even when w divides n; count in whole numbers "
                         f"(n // w, or -(-n // w) to round up, or math.ceil(n / w), which gives an int)"
                         f"{result.detail[len(_FLOAT):]}")
    return result


def check_adam_bytes_per_rank(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(n_params, world_size, sharded) -> int``: bytes of weights, gradients and Adam state per rank."""
    result = evaluate_values("adam_bytes_per_rank", fn, adam_bytes_per_rank, _BYTES_CASES, BYTES_MISTAKES)
    return report(_int_hint(result), strict=strict)


_GPU_CASES = [
    (70_000_000_000, 80_000_000_000),  # 70B parameters on 80 GB GPUs: 1.12 TB, exactly 14 GPUs' worth
    (1001, 16_000),                    # one GPU holds 1000 parameters' worth: two
    (1000, 16_000),                    # fits exactly on one GPU
    (10, 40),                          # 16 * 10 / 40 = 4, but 4 shares of 3 parameters are 48 bytes: 5
    (100, 16 * 7 + 15),                # a GPU whose bytes are not a multiple of 16: 7 parameters each, 15 GPUs
    (7_000_000_000, 80_000_000_000),   # 7B parameters: 112 GB
    (1, 16),
]


GPU_MISTAKES = [
    Mistake("16 * n_params / gpu_bytes rounded up ignores that each rank holds a whole share, ceil(n_params / "
            "world_size) parameters: check adam_bytes_per_rank(n_params, w, True) <= gpu_bytes for the w you return",
            lambda n, g: max(1, _ceil_div(16 * n, g))),
    Mistake("rounded down: too few GPUs leave each one more than gpu_bytes; take the smallest world size that fits",
            lambda n, g: max(1, 16 * n // g)),
    Mistake("one GPU too many: return the smallest world size that fits (<= gpu_bytes fits; int(x) + 1 is not "
            "rounding up, it adds one when x is whole)",
            lambda n, g: gpus_needed(n, g) + 1),
    Mistake("one GPU too many: return the smallest world size that fits (<= gpu_bytes fits; int(x) + 1 is not "
            "rounding up, it adds one when x is whole)",
            lambda n, g: int(16 * n / g) + 1),
    Mistake("one GPU too few: the world size you return must itself fit (<=), not the one before it",
            lambda n, g: gpus_needed(n, g) - 1),
    Mistake("counted 4 bytes per parameter: with Adam it is 16 (weight, gradient, two moments)",
            lambda n, g: max(1, _ceil_div(n, g // 4))),
]


def check_gpus_needed(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(n_params, gpu_bytes) -> int``: the fewest GPUs a fully sharded Adam model fits on."""
    return report(_int_hint(evaluate_values("gpus_needed", fn, gpus_needed, _GPU_CASES, GPU_MISTAKES)), strict=strict)
