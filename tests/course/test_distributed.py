"""course.distributed and course.dist_train (lesson 19): the training script launched with torchrun on two
processes (gloo on the CPU) is checked against one process training on the same global batch; FSDP2's
memory per rank against DDP's; the memory arithmetic against a brute-force count; the launcher's errors
come back as one line."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.distributed.run as torchrun
from torch import nn

from course import dist_train
from course import distributed as D
from course.checks.distributed import simulate_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="this PyTorch has no torch.distributed")

CONFIG = D.RunConfig(steps=6)      # a short run: the launch takes seconds
LOSS_TOL = 1e-5                    # the lesson's tolerance for equal training, on every step's loss
PARAM_TOL = 1e-5                   # ... and on every final parameter but the key biases (see below)


@pytest.fixture(scope="module")
def runs():
    """One torchrun launch of every mode on two ranks, and the one-process reference."""
    return D.launch(["ddp", "manual", "fsdp", "allreduce"], nproc=2, config=CONFIG), D.train_single(CONFIG)


# ----------------------------------------------------------------------------------------------- the pieces

def test_shards_in_rank_order_give_the_batch_back_as_torch_chunk_splits_it():
    batch = torch.arange(36).view(12, 3)
    for world_size in (1, 2, 3, 4, 6, 12):
        shards = [D.shard_batch(batch, r, world_size) for r in range(world_size)]
        assert torch.equal(torch.cat(shards), batch)
        for r, shard in enumerate(shards):
            assert torch.equal(shard, torch.chunk(batch, world_size)[r])


@pytest.mark.parametrize("rows, rank, world_size, words", [(15, 0, 2, "does not split evenly"), (8, 2, 2, "not in 0..1"),
                                                           (8, -1, 2, "not in 0..1")])
def test_shard_batch_refuses_what_cannot_be_split_in_one_line(rows, rank, world_size, words):
    with pytest.raises(ValueError, match=words):
        D.shard_batch(torch.zeros(rows, 2), rank, world_size)


def test_every_process_draws_the_same_global_batch_and_model():
    data, vocab = D.corpus_ids(CONFIG.corpus_chars)
    x1, y1 = D.global_batch(data, 3, CONFIG)
    x2, y2 = D.global_batch(data, 3, CONFIG)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (CONFIG.global_batch, CONFIG.context_length)
    assert torch.equal(y1[:, :-1], x1[:, 1:])
    a, b = D.make_model(CONFIG, vocab), D.make_model(CONFIG, vocab)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_averaged_shard_gradients_equal_the_whole_batch_gradient_on_simulated_ranks():
    """The arithmetic DDP relies on, in one process: the mean of the ranks' gradients (each the mean loss over
    its shard) is the gradient of the mean loss over the whole global batch, to float32 rounding."""
    from course.lm import lm_loss

    world_size = 4
    data, vocab = D.corpus_ids(CONFIG.corpus_chars)
    x, y = D.global_batch(data, 0, CONFIG)
    whole = D.make_model(CONFIG, vocab)
    lm_loss(whole(x), y).backward()
    replicas = []
    for r in range(world_size):
        model = D.make_model(CONFIG, vocab)
        lm_loss(model(D.shard_batch(x, r, world_size)), D.shard_batch(y, r, world_size)).backward()
        replicas.append(model)
    simulate_ranks(D.average_gradients, replicas)
    for replica in replicas:
        for (name, p), q in zip(whole.named_parameters(), replica.parameters()):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_memory_per_rank_counts_weights_gradients_and_adams_state_once_for_tied_weights():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight                    # tied: one tensor, counted once
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.tensor([[1, 2]])).sum().backward()
    optimizer.step()
    memory = D.memory_per_rank(model, optimizer)
    assert memory["parameters"] == memory["gradients"] == 40 * 4
    # Adam: two moments per parameter (8 bytes each) and one float32 step count per tensor
    assert memory["optimizer"] == 40 * 8 + 4
    assert memory["total"] == sum(memory[k] for k in ("parameters", "gradients", "optimizer"))
    assert D.tensor_bytes(None) == 0


@pytest.mark.parametrize("n_params", [0, 1, 10, 1000, 1001, 124_000_000, 7_000_000_000])
@pytest.mark.parametrize("world_size", [1, 3, 8])
def test_adam_bytes_per_rank_equal_a_count_of_each_ranks_padded_share(n_params, world_size):
    # Independent count: deal n_params out in equal shares, padding the last, then 16 bytes per share entry.
    share = math.ceil(n_params / world_size)
    assert D.adam_bytes_per_rank(n_params, world_size, sharded=False) == (4 + 4 + 4 + 4) * n_params
    assert D.adam_bytes_per_rank(n_params, world_size, sharded=True) == 16 * share
    assert share * world_size >= n_params > (share - 1) * world_size or n_params == 0


@pytest.mark.parametrize("n_params, gpu_bytes", [(1000, 16_000), (1001, 16_000), (10, 40), (100, 127), (1, 16),
                                                 (7_000_000_000, 80_000_000_000), (70_000_000_000, 80_000_000_000)])
def test_gpus_needed_is_the_first_world_size_that_fits_by_search(n_params, gpu_bytes):
    w = 1
    while D.adam_bytes_per_rank(n_params, w, True) > gpu_bytes:
        w += 1
    assert D.gpus_needed(n_params, gpu_bytes) == w


def test_gpus_needed_says_when_a_gpu_cannot_hold_one_parameter():
    with pytest.raises(ValueError, match="cannot hold even one parameter"):
        D.gpus_needed(10, 15)


def test_the_latency_bandwidth_fit_recovers_known_figures():
    sizes = [2.0**k for k in range(8, 25, 2)]
    times = [50e-6 + s / 2e9 for s in sizes]
    latency, bandwidth = D.fit_latency_bandwidth(sizes, times)
    assert latency == pytest.approx(50e-6, rel=1e-3) and bandwidth == pytest.approx(2e9, rel=1e-3)
    for noisy in (0, 3, len(sizes) - 1):       # one slow timing (the first, a middle one, the last) moves nothing much
        slow = list(times)
        slow[noisy] *= 10
        latency, bandwidth = D.fit_latency_bandwidth(sizes, slow)
        assert latency == pytest.approx(50e-6, rel=0.05) and bandwidth == pytest.approx(2e9, rel=0.05), noisy
    assert D.bus_bandwidth(1e6, 1e-3, 2) == pytest.approx(1e9)   # 2 ranks: 2 * (2 - 1) / 2 = 1x the bytes
    with pytest.raises(ValueError, match="did not take longer"):
        D.fit_latency_bandwidth([1e3, 1e6], [2e-3, 1e-3])


def test_the_commands_the_lesson_shows_parse_with_torchruns_own_parser():
    parser = torchrun.get_args_parser()
    single = parser.parse_args(D.torchrun_command(["ddp", "fsdp"], 2, CONFIG)[1:])
    assert single.standalone and single.nproc_per_node == "2" and single.module
    assert single.training_script == "course.dist_train" and "--steps=6" in single.training_script_args
    multi = parser.parse_args(D.multinode_command(2, 8, "node0.example.org:29400", "job42")[1:])
    assert (multi.nnodes, multi.nproc_per_node, multi.rdzv_backend) == ("2", "8", "c10d")
    assert multi.rdzv_endpoint == "node0.example.org:29400" and multi.rdzv_id == "job42"
    # ... and the script's own parser reads what the command passes it
    args, config = dist_train.parse_args(single.training_script_args)
    assert args.modes == ["ddp", "fsdp"] and config == CONFIG


@pytest.mark.parametrize("gpus, local_world, world, backend", [
    (8, 8, 16, "nccl"),     # two nodes of 8 GPUs, 8 ranks each: every rank has its own GPU
    (8, 16, 16, "gloo"),    # 16 ranks on one machine of 8 GPUs: not enough
    (0, 2, 2, "gloo"),      # no GPU
])
def test_setup_chooses_nccl_when_every_rank_on_its_machine_has_a_gpu(monkeypatch, gpus, local_world, world, backend):
    chosen = {}
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "init_process_group", lambda name, **kw: chosen.setdefault("backend", name))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: world)
    assert dist_train.setup()[3] == backend == chosen["backend"]


def test_the_launchers_last_error_line_is_the_reason():
    stderr = ("W0101 12:00:00 torch/distributed/run.py:800] Setting OMP_NUM_THREADS\nTraceback (most recent call last):\n"
              '  File "x.py", line 3, in <module>\ntorch.distributed.DistNetworkError: The server socket has failed '
              "to listen on any local network address. port: 29500, useIpv6: 0, code: -98, name: EADDRINUSE\n")
    assert D._launcher_reason(stderr).startswith("torch.distributed.DistNetworkError: The server socket")
    argparse_error = ("usage: dist_train.py [-h] [--modes ...]\ndist_train.py: error: unrecognized arguments: --bogus\n"
                      "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n")
    assert D._launcher_reason(argparse_error) == "dist_train.py: error: unrecognized arguments: --bogus"


ABORTED = ("terminate called after throwing an instance of 'gloo::IoException'\n"
           "  what():  [gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:41234\n"
           "E1202 07:00:00 torch/distributed/elastic/multiprocessing/api.py:900] failed (exitcode: -6)\n"
           "[1]:\n  time      : 2026-12-02_07:00:00\n  rank      : 1 (local_rank: 1)\n  exitcode  : -6 (pid: 16251)\n"
           "  error_file: <N/A>\n  traceback : Signal 6 (SIGABRT) received by PID 16251\n")


def test_a_rank_aborted_by_a_cpp_exception_is_reported_by_the_exceptions_message():
    assert D._launcher_reason(ABORTED).startswith("what():  [gloo/transport/tcp/pair.cc:534] Connection closed")


def _aborted_once(monkeypatch, times: int) -> list[int]:
    """Make the first ``times`` launches end as if a rank had been aborted by SIGABRT; count the launches."""
    import subprocess

    real, calls = D._run_process_group, []

    def fake(argv, timeout_s, env, cwd):
        calls.append(1)
        if len(calls) <= times:
            return subprocess.CompletedProcess(argv, 1, "", ABORTED)
        return real(argv, timeout_s, env, cwd)

    monkeypatch.setattr(D, "_run_process_group", fake)
    return calls


def test_a_launch_whose_rank_was_killed_by_a_signal_runs_once_more_and_says_so(monkeypatch):
    calls = _aborted_once(monkeypatch, times=1)
    result = D.launch("ddp", nproc=2, config=D.RunConfig(steps=1))
    assert len(calls) == 2 and "Connection closed by peer" in result["retried"]
    assert len(result["ranks"]) == 2 and all(r["error"] is None for r in result["ranks"])


def test_a_launch_killed_twice_gives_up_with_the_abort_message_in_one_line(monkeypatch):
    calls = _aborted_once(monkeypatch, times=2)
    with pytest.raises(D.DistributedRunError, match="code 1: what\\(\\):  \\[gloo") as info:
        D.launch("ddp", nproc=2, config=D.RunConfig(steps=1))
    assert len(calls) == 2 and "\n" not in str(info.value)


def test_a_launch_whose_ranks_cannot_start_says_why_in_one_line():
    with pytest.raises(D.DistributedRunError, match="unrecognized arguments: --bogus") as info:
        D.launch("ddp", nproc=2, config=D.RunConfig(steps=1), extra=["--bogus"])
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------- the launches

def test_ddp_on_two_ranks_equals_one_process_on_the_same_global_batch(runs):
    launched, single = runs
    ranks = launched["ranks"]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["backend"] in ("gloo", "nccl")
    assert ranks[0]["threads"] == 1
    ddp = ranks[0]["modes"]["ddp"]
    assert len(ddp["losses"]) == CONFIG.steps
    assert D.max_abs_diff(ddp["losses"], single["losses"]) < LOSS_TOL
    assert ranks[1]["modes"]["ddp"]["losses"] == ddp["losses"]      # every rank reports the global batch's loss
    assert ddp["losses"][-1] < ddp["losses"][0]                      # and it trained


def test_final_parameters_agree_except_the_key_biases_whose_true_gradient_is_zero(runs):
    launched, single = runs
    for mode in ("ddp", "manual", "fsdp"):
        diffs = dict(D.differences_by_parameter(launched["params"][mode], single["params"]))
        others = {k: v for k, v in diffs.items() if not k.endswith("k_proj.bias")}
        assert max(others.values()) < PARAM_TOL, (mode, max(others.items(), key=lambda kv: kv[1]))


def test_key_bias_gradients_are_rounding_noise():
    """Why the key biases may differ: adding b to every key adds q.b to all of a query's scores, which a
    softmax ignores, so their gradient is zero up to rounding (and Adam scales that noise up to full steps)."""
    from course.lm import lm_loss

    data, vocab = D.corpus_ids(CONFIG.corpus_chars)
    model = D.make_model(CONFIG, vocab)
    x, y = D.global_batch(data, 0, CONFIG)
    lm_loss(model(x), y).backward()
    for block in model.blocks:
        assert block.self_attn.k_proj.bias.grad.abs().max() < 1e-6 < block.self_attn.q_proj.bias.grad.abs().max()


def test_averaging_by_hand_and_fsdp2_train_like_ddp(runs):
    launched, single = runs
    ddp = launched["ranks"][0]["modes"]["ddp"]["losses"]
    for mode in ("manual", "fsdp"):
        losses = launched["ranks"][0]["modes"][mode]["losses"]
        assert D.max_abs_diff(losses, ddp) < LOSS_TOL and D.max_abs_diff(losses, single["losses"]) < LOSS_TOL


def test_fsdp2_holds_half_of_ddps_bytes_per_rank_on_two_ranks(runs):
    launched, _ = runs
    ranks = [r["modes"] for r in launched["ranks"]]
    ddp = ranks[0]["ddp"]["memory"]
    n_params = ddp["parameters"] // 4
    assert ddp["gradients"] == ddp["parameters"] and ddp["optimizer"] >= 2 * ddp["parameters"]
    for kind in ("parameters", "gradients"):
        # the two ranks' shards together are the whole model, and each holds about half
        assert sum(r["fsdp"]["memory"][kind] for r in ranks) == ddp[kind]
        for r in ranks:
            assert abs(r["fsdp"]["memory"][kind] - ddp[kind] / 2) <= 0.05 * ddp[kind]
    assert sum(r["fsdp"]["local_parameters"] for r in ranks) == n_params
    assert ranks[0]["fsdp"]["memory"]["total"] < 0.55 * ddp["total"]


def test_fsdp2_gathers_one_block_at_a_time_in_forward_and_backward(runs):
    launched, _ = runs
    fsdp = launched["ranks"][0]["modes"]["fsdp"]
    events = {e["moment"]: e["gathered"] for e in fsdp["gathers"]["events"]}
    blocks = [f"block {i}" for i in range(CONFIG.num_layers)]
    for i, block in enumerate(blocks):
        for moment in (f"block {i} forward", f"block {i} backward"):
            assert [b for b in blocks if events[moment][b]] == [block], moment
        assert not any(events[f"block {i} forward done"][b] for b in blocks)
    assert not any(events["step starts"].values()) and not any(events["optimiser step done"].values())
    counts = fsdp["collectives"]
    if counts is not None:  # CommDebugMode: one all-gather per group in forward, one reduce-scatter per group in backward
        groups = CONFIG.num_layers + 1
        assert sum(v for k, v in counts["forward"].items() if "allgather" in k) == groups
        assert sum(v for k, v in counts["backward"].items() if "reduce_scatter" in k) == groups


def test_all_reduce_timings_cover_every_size_and_grow_with_it(runs):
    launched, _ = runs
    rows = launched["ranks"][0]["modes"]["allreduce"]["rows"]
    assert [r["numel"] for r in rows] == dist_train.ALL_REDUCE_SIZES
    assert all(r["seconds"] > 0 for r in rows) and rows[-1]["seconds"] > rows[0]["seconds"]


def test_a_rank_that_fails_comes_back_as_one_line_without_a_path():
    with pytest.raises(D.DistributedRunError) as info:
        D.launch("ddp", nproc=2, config=D.RunConfig(steps=1, global_batch=15))
    line = str(info.value)
    assert "rank 0 of 2 failed" in line and "does not split evenly over 2 ranks" in line
    assert "\n" not in line and "/tmp" not in line and "course-dist-" not in line
    assert info.value._render_traceback_() == [f"DistributedRunError: {line}"]


def test_a_run_past_its_time_limit_is_stopped_with_its_ranks_and_says_so():
    with pytest.raises(D.DistributedRunError, match=r"did not finish within 0.5 s"):
        D.launch("ddp", nproc=2, config=D.RunConfig(steps=1), timeout_s=0.5)


def test_launch_refuses_an_unknown_mode_before_starting_anything():
    with pytest.raises(ValueError, match="unknown mode 'zero': choose from ddp, manual, fsdp, allreduce"):
        D.launch("zero")
