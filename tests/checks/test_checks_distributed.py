"""Lesson 19's checkers: right answers pass; learner-style wrong answers get the hint for their mistake; the
simulated ranks behave like a process group (collectives in place, ranks out of step reported, the real
torch.distributed functions put back)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from answer_library import Right, Wrong, library_tests, unattempted_test

from course.checks import distributed as cd
from course.checks.core import Mistake
from course.distributed import adam_bytes_per_rank

pytestmark = [pytest.mark.usefixtures("lenient_checks"),
              pytest.mark.skipif(not dist.is_available(), reason="this PyTorch has no torch.distributed")]


# ----------------------------------------------------------------------------- shard_batch

def shard_by_arithmetic(batch, rank, world_size):
    size = batch.shape[0] // world_size
    start = rank * size
    return batch[start:start + size]


def shard_by_index_select(batch, rank, world_size):
    per = len(batch) // world_size
    return batch.index_select(0, torch.arange(rank * per, (rank + 1) * per))


WRONG_SHARDS = [
    Wrong("strided like a sampler", lambda b, r, w: b[r::w], "every world_size-th row"),
    Wrong("one-based rank", lambda b, r, w: b[(r + 1) * (len(b) // w):(r + 2) * (len(b) // w)], "one block too far"),
    Wrong("forgot the rank", lambda b, r, w: b[: len(b) // w], "every rank gets the first block"),
    Wrong("size from the columns", lambda b, r, w: b[r * (b.size(1) // w):(r + 1) * (b.size(1) // w)], "wrong axis"),
    Wrong("world size rows each", lambda b, r, w: b[r * w:r * w + w], "world_size rows"),
    Wrong("float division", lambda b, r, w: b[int(r * len(b) / w):(r + 1) * len(b) / w], "integer division"),
    Wrong("chunked the last axis", lambda b, r, w: b.chunk(w, dim=-1)[r], "wrong axis"),
    Wrong("kept everything", lambda b, r, w: b.clone(), "whole batch"),
    Wrong("returns a list of rows", lambda b, r, w: list(b[r * (len(b) // w):(r + 1) * (len(b) // w)]), "list"),
    # holdouts, written after the checker
    Wrong("blocks from the end", lambda b, r, w: b.flip(0)[r * (len(b) // w):(r + 1) * (len(b) // w)], None),
    Wrong("off by one at the end", lambda b, r, w: b[r * (len(b) // w):(r + 1) * (len(b) // w) + 1], None),
]
RIGHT_SHARDS = [
    Right("start and size", shard_by_arithmetic),
    Right("torch.chunk", lambda b, r, w: torch.chunk(b, w, dim=0)[r]),
    Right("tensor_split", lambda b, r, w: torch.tensor_split(b, w)[r]),
    Right("index_select", shard_by_index_select),
    Right("view into [world, rows, ...]", lambda b, r, w: b.reshape(w, -1, *b.shape[1:])[r]),
]


# ----------------------------------------------------------------------------- average_gradients

def average_loop(model):
    world_size = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world_size


def average_divide_first(model):
    for p in model.parameters():
        if p.requires_grad:
            p.grad.div_(dist.get_world_size())
            dist.all_reduce(p.grad)


def average_flat_bucket(model):
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def average_async(model):
    works = [(p, dist.all_reduce(p.grad, async_op=True)) for p in model.parameters() if p.grad is not None]
    for p, work in works:
        work.wait()
        p.grad = p.grad / dist.get_world_size()


def average_with_avg_op(model):
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)


def _each_grad(step):
    def fn(model):
        for p in model.parameters():
            if p.grad is not None:
                step(p)
    return fn


def _rank_zero_only(p):
    if dist.get_rank() == 0:
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()


def _temporary(p):
    dist.all_reduce(p.grad / dist.get_world_size())


def _weights_instead(p):
    dist.all_reduce(p.data)
    p.data /= dist.get_world_size()


def _reduce_to_zero(p):
    dist.reduce(p.grad, dst=0)
    p.grad /= dist.get_world_size()


def _no_skip(model):
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()


def _max_op(p):
    dist.all_reduce(p.grad, op=dist.ReduceOp.MAX)


def _twice(p):
    p.grad /= dist.get_world_size()
    dist.all_reduce(p.grad)
    p.grad /= dist.get_world_size()


def _own_only(p):
    p.grad /= dist.get_world_size()


def _broadcast_rank0(p):
    dist.broadcast(p.grad, src=0)


WRONG_AVERAGES = [
    Wrong("summed, not divided", _each_grad(lambda p: dist.all_reduce(p.grad)), "summed but not divided"),
    Wrong("divided by two", _each_grad(lambda p: (dist.all_reduce(p.grad), p.grad.div_(2))), "fixed 2"),
    Wrong("reduced a temporary", _each_grad(_temporary), "unchanged"),
    Wrong("averaged the weights", _each_grad(_weights_instead), "unchanged"),
    Wrong("only rank 0 reduces", _each_grad(_rank_zero_only), "every rank must call all_reduce"),
    Wrong("reduce to rank 0", _each_grad(_reduce_to_zero), "only rank 0 has the mean"),
    Wrong("frozen parameter not skipped", _no_skip, "without a gradient"),
    Wrong("max instead of sum", _each_grad(_max_op), "ReduceOp.MAX"),
    Wrong("divided twice", _each_grad(_twice), "twice"),
    Wrong("never communicated", _each_grad(_own_only), "never added the others'"),
    Wrong("hard-coded world size argument", lambda model, world_size=2: None, "unchanged"),
    Wrong("rank 0's gradients for everyone", _each_grad(_broadcast_rank0), "broadcast copies"),
    # holdouts, written after the checker
    Wrong("returns new gradients instead", lambda model: [p.grad * 1.0 for p in model.parameters()], None),
]
RIGHT_AVERAGES = [
    Right("all_reduce then divide", average_loop),
    Right("divide then all_reduce", average_divide_first),
    Right("one flat bucket", average_flat_bucket),
    Right("async all_reduce", average_async),
    Right("ReduceOp.AVG", average_with_avg_op),
]


# ----------------------------------------------------------------------------- the memory arithmetic

def bytes_by_kind(n, w, sharded):
    share = math.ceil(n / w) if sharded else n
    weights, grads, adam_m, adam_v = 4 * share, 4 * share, 4 * share, 4 * share
    return weights + grads + adam_m + adam_v


WRONG_BYTES = [
    Wrong("weights only", lambda n, w, s: 4 * (-(-n // w) if s else n), "only the float32 weights"),
    Wrong("no optimiser state", lambda n, w, s: 8 * (-(-n // w) if s else n), "not Adam's two moments"),
    Wrong("one moment", lambda n, w, s: 12 * (-(-n // w) if s else n), "12 bytes"),
    Wrong("bits", lambda n, w, s: 16 * 8 * (-(-n // w) if s else n), "bits"),
    Wrong("floor division", lambda n, w, s: 16 * (n // w) if s else 16 * n, "rounded the share down"),
    Wrong("float share", lambda n, w, s: 16 * n / w if s else 16 * n, "got float"),
    Wrong("ddp divided too", lambda n, w, s: 16 * -(-n // w), "for DDP too"),
    Wrong("sharding ignored", lambda n, w, s: 16 * n, "not divided for FSDP"),
    Wrong("ZeRO-1", lambda n, w, s: 8 * n + 8 * (-(-n // w) if s else n), "ZeRO stage 1"),
    Wrong("ZeRO-2", lambda n, w, s: 4 * n + 12 * (-(-n // w) if s else n), "ZeRO stage 2"),
    # holdouts
    Wrong("sharded flag inverted", lambda n, w, s: 16 * (n if s else -(-n // w)), None),
    Wrong("gigabytes", lambda n, w, s: 16 * (-(-n // w) if s else n) // 10**9, None),
]
RIGHT_BYTES = [
    Right("package", adam_bytes_per_rank),
    Right("by kind, math.ceil", bytes_by_kind),
    Right("negated floor", lambda n, w, s: 16 * (-(-n // w) if s else n)),
    Right("divmod", lambda n, w, s: 16 * (sum(divmod(n, w)[0:1]) + (1 if n % w else 0)) if s else 16 * n),
]


def gpus_by_search(n_params, gpu_bytes):
    w = 1
    while adam_bytes_per_rank(n_params, w, True) > gpu_bytes:
        w += 1
    return w


def gpus_by_share(n_params, gpu_bytes):
    fits = gpu_bytes // 16
    return max(1, math.ceil(n_params / fits))


WRONG_GPUS = [
    Wrong("bytes over memory, rounded up", lambda n, g: math.ceil(16 * n / g), "whole share"),
    Wrong("rounded down", lambda n, g: 16 * n // g, "rounded down"),
    Wrong("int plus one", lambda n, g: int(16 * n / g) + 1, "one GPU too many"),
    Wrong("loop one too far", lambda n, g: gpus_by_search(n, g) + 1, "one GPU too many"),
    Wrong("strictly less", lambda n, g: next(w for w in range(1, 10**6)
                                             if adam_bytes_per_rank(n, w, True) < g), "one GPU too many"),
    Wrong("4 bytes per parameter", lambda n, g: max(1, math.ceil(n / (g // 4))), "4 bytes per parameter"),
    Wrong("float answer", lambda n, g: 16 * n / g, "got float"),
]
RIGHT_GPUS = [
    Right("search", gpus_by_search),
    Right("share per GPU", gpus_by_share),
]

LIBRARY = {
    cd.check_shard_batch: (WRONG_SHARDS, RIGHT_SHARDS),
    cd.check_average_gradients: (WRONG_AVERAGES, RIGHT_AVERAGES),
    cd.check_adam_bytes_per_rank: (WRONG_BYTES, RIGHT_BYTES),
    cd.check_gpus_needed: (WRONG_GPUS, RIGHT_GPUS),
}


# Each wrong answer fails, in one line holding its words; each right answer passes.
test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


# ----------------------------------------------------------------------------- the checkers' own mistake lists

MISTAKE_CASES = ([(cd.check_shard_batch, m) for m in cd.SHARD_MISTAKES]
                 + [(cd.check_adam_bytes_per_rank, m) for m in cd.BYTES_MISTAKES]
                 + [(cd.check_gpus_needed, m) for m in cd.GPU_MISTAKES])


@pytest.mark.parametrize("checker, mistake", MISTAKE_CASES,
                         ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(MISTAKE_CASES)])
def test_each_registered_mistake_gets_its_own_hint(checker, mistake: Mistake):
    result = checker(mistake.fn)
    assert not result.passed and mistake.hint in result.line, result.line

test_an_unattempted_exercise_says_so = unattempted_test(LIBRARY)


@pytest.mark.parametrize("checker", list(LIBRARY), ids=lambda c: c.__name__)
def test_something_that_is_not_a_function_gets_one_line(checker):
    result = checker(42)
    assert not result.passed and "expected a function" in result.line


# ----------------------------------------------------------------------------- the simulated ranks

def test_simulated_collectives_work_in_place_like_a_process_group():
    def rank_fn(t):
        rank, world = dist.get_rank(), dist.get_world_size()
        total = t.clone()
        dist.all_reduce(total)
        biggest = t.clone()
        dist.all_reduce(biggest, op=dist.ReduceOp.MAX)
        first = t.clone()
        dist.broadcast(first, src=0)
        dist.barrier()
        return rank, world, total, biggest, first

    values = [torch.tensor([1.0, 5.0]), torch.tensor([2.0, -1.0]), torch.tensor([4.0, 0.5])]
    out = cd.simulate_ranks(rank_fn, values)
    for r, (rank, world, total, biggest, first) in enumerate(out):
        assert (rank, world) == (r, 3)
        assert torch.equal(total, torch.tensor([7.0, 4.5])) and torch.equal(biggest, torch.tensor([4.0, 5.0]))
        assert torch.equal(first, values[0])


def test_a_rank_left_waiting_is_reported_not_hung_and_dist_is_put_back():
    real = dist.all_reduce

    def rank_fn(t):
        if dist.get_rank() == 1:
            return None
        dist.all_reduce(t)

    with pytest.raises(cd.RanksOutOfStep, match="rank 0 waited in all_reduce call 1, but rank 1 never made it"):
        cd.simulate_ranks(rank_fn, [torch.ones(2), torch.ones(2)], time_limit=3)
    assert dist.all_reduce is real


def test_a_ranks_own_error_comes_before_the_waiting_it_causes():
    def rank_fn(t):
        if dist.get_rank() == 1:
            raise KeyError("rank 1's own mistake")
        dist.all_reduce(t)

    with pytest.raises(KeyError, match="rank 1's own mistake"):
        cd.simulate_ranks(rank_fn, [torch.ones(2), torch.ones(2)], time_limit=3)


def test_ranks_calling_different_collectives_are_reported():
    def rank_fn(t):
        if dist.get_rank() == 0:
            dist.all_reduce(t)
        else:
            dist.broadcast(t, src=0)

    with pytest.raises(cd.RanksOutOfStep, match="different collectives"):
        cd.simulate_ranks(rank_fn, [torch.ones(2), torch.ones(2)], time_limit=3)
