"""The SDPA timing table: CPU entries run, unsupported ones are recorded (never raised), JSON round-trips."""
from __future__ import annotations

import json

import pytest
import torch

from course import sdpa_bench as sb

TINY = dict(causal=False, seq=64, head_dim=16, batch=1, heads=2)


def test_cpu_entries_run_and_report_ms_tflops_and_peak_memory():
    entries = [sb.Entry(b, "float32", mode=m, **TINY) for b in ("naive", "math", "flash") for m in ("fwd", "fwd+bwd")]
    results = sb.run_table(entries, device="cpu", min_run_time=0.01, progress=False)
    for r in results:
        assert r.status == sb.OK, r
        assert r.ms > 0 and r.tflops > 0 and r.peak_mb > 0 and r.speedup > 0
    naive_fwd = results[0]
    assert naive_fwd.speedup == pytest.approx(1.0)
    # naive attention keeps the 64 x 64 scores and weights per head: at least 2 * 2 * 64 * 64 * 4 bytes
    assert naive_fwd.peak_mb * 1e6 >= 2 * 2 * 64 * 64 * 4


@pytest.mark.parametrize("backend", ["efficient", "cudnn"])
def test_cuda_only_backends_on_cpu_are_recorded_as_not_supported(backend):
    result = sb.run_entry(sb.Entry(backend, "float32", **TINY), device="cpu")
    assert result.status == sb.NOT_SUPPORTED and "CUDA" in result.reason and result.ms is None


def test_a_kernel_that_refuses_is_recorded_not_raised(monkeypatch):
    """What PyTorch does on a GPU for flash in float32: warn with the reason, then raise."""
    import warnings

    def refusing(entry, q, k, v):
        def fn():
            warnings.warn("Flash attention requires q, k, v to have dtype float16 or bfloat16")
            raise RuntimeError("No available kernel. Aborting execution.")
        return fn
    monkeypatch.setattr(sb, "make_callable", refusing)
    result = sb.run_entry(sb.Entry("flash", "float32", **TINY), device="cpu")
    assert result.status == sb.NOT_SUPPORTED
    assert "requires" in result.reason


def test_out_of_memory_is_recorded(monkeypatch):
    def oom(entry, q, k, v):
        def fn():
            raise RuntimeError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return fn
    monkeypatch.setattr(sb, "make_callable", oom)
    assert sb.run_entry(sb.Entry("naive", "float32", **TINY), device="cpu").status == sb.OUT_OF_MEMORY


def test_entry_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown backend"):
        sb.Entry("fast", "float32", **TINY)
    with pytest.raises(ValueError, match="unknown dtype"):
        sb.Entry("math", "fp8", **TINY)


def test_presets_cover_what_the_issue_asks():
    gpu = sb.gpu_preset()
    assert {e.backend for e in gpu} == set(sb.BACKENDS)
    assert {e.dtype for e in gpu} >= {"bfloat16", "float16"} and {e.seq for e in gpu} == {1024, 2048, 4096}
    assert {e.causal for e in gpu} == {False, True} and {e.mode for e in gpu} == {"fwd", "fwd+bwd"}
    assert any(e.head_dim == 128 and e.batch == 4 and e.heads == 16 for e in gpu)
    assert any(e.head_dim % 8 for e in gpu)          # an odd head size, recorded whatever happens
    cpu = sb.cpu_preset()
    assert max(e.seq for e in cpu) <= 1024 and {"efficient", "cudnn"} <= {e.backend for e in cpu}
    # naive comes first within each configuration, so speed-ups have their baseline
    assert cpu[0].backend == "naive"


def test_table_saves_and_loads_with_device_torch_version_and_date(tmp_path):
    results = sb.run_table([sb.Entry("naive", "float32", **TINY), sb.Entry("cudnn", "float32", **TINY)],
                           device="cpu", min_run_time=0.01, progress=False)
    path = sb.save_table(results, tmp_path / "t.json", device="cpu", extra={"triton_vs_flash": None})
    meta, loaded = sb.load_table(path)
    assert meta["torch"] == torch.__version__ and meta["device"].startswith("CPU") and len(meta["date"]) == 10
    assert [r.status for r in loaded] == [sb.OK, sb.NOT_SUPPORTED]
    assert loaded[0].entry == results[0].entry and loaded[0].ms == pytest.approx(results[0].ms)
    assert "triton_vs_flash" in json.loads(path.read_text())


def test_format_and_plot_handle_refused_entries(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    results = [sb.Result(sb.Entry("naive", "float32", seq=s, **{k: v for k, v in TINY.items() if k != "seq"}),
                         sb.OK, ms=float(s), tflops=1.0, peak_mb=1.0) for s in (64, 128)]
    results.append(sb.Result(sb.Entry("flash", "float32", **TINY), sb.NOT_SUPPORTED, "needs a GPU"))
    text = sb.format_table(sb.add_speedups(results))
    assert "not supported here: needs a GPU" in text and "1.00x" in text
    fig = sb.plot_tables(results, results, reference_label="reference")
    assert len(fig.axes) == 2


def test_missing_reference_file_gives_none(tmp_path):
    assert sb.load_reference(tmp_path / "absent.json") is None
    assert "not measured by this course" in sb.QUOTED_H100["label"]


# ---------------------------------------------------------------------------------------------
# Why a backend refused: PyTorch's warnings, as a CUDA build prints them (recorded texts)
# ---------------------------------------------------------------------------------------------
def _at(source: str) -> str:
    return f" (Triggered internally at /pytorch/aten/src/ATen/native/transformers/{source}.)"


# sdpa_kernel(FLASH_ATTENTION) on a T4 (sm 7.5), bf16: PyTorch re-runs every backend's checks in this
# order (memory-efficient, flash, cuDNN), warning once per failed check, then raises.
T4_FLASH_WARNINGS = [
    "Memory efficient kernel not used because:" + _at("cuda/sdp_utils.cpp:986"),
    "Memory Efficient attention has been runtime disabled." + _at("sdp_utils_cpp.h:552"),
    "Flash attention kernel not used because:" + _at("cuda/sdp_utils.cpp:988"),
    "Flash attention only supports gpu architectures in the range [sm80, sm121]. "
    "Attempting to run on a sm 7.5 gpu." + _at("cuda/sdp_utils.cpp:560"),
    "CuDNN attention kernel not used because:" + _at("cuda/sdp_utils.cpp:990"),
    "CuDNN attention has been runtime disabled." + _at("cuda/sdp_utils.cpp:706"),
]
# sdpa_kernel(CUDNN_ATTENTION) with float32 inputs on an H100.
FLOAT32_CUDNN_WARNINGS = [
    "Memory efficient kernel not used because:" + _at("cuda/sdp_utils.cpp:986"),
    "Memory Efficient attention has been runtime disabled." + _at("sdp_utils_cpp.h:552"),
    "Flash attention kernel not used because:" + _at("cuda/sdp_utils.cpp:988"),
    "Flash attention has been runtime disabled." + _at("sdp_utils_cpp.h:531"),
    "CuDNN attention kernel not used because:" + _at("cuda/sdp_utils.cpp:990"),
    "Expected query, key and value to all be of dtype: {Half, BFloat16}. Got Query dtype: float, "
    "Key dtype: float, and Value dtype: float instead." + _at("sdp_utils_cpp.h:110"),
]


def test_refusal_reason_keeps_only_the_requested_backends_section():
    assert sb.refusal_reason(T4_FLASH_WARNINGS, "flash") == (
        "Flash attention only supports gpu architectures in the range [sm80, sm121]. Attempting to run on a sm 7.5 gpu.")
    cudnn = sb.refusal_reason(FLOAT32_CUDNN_WARNINGS, "cudnn")
    assert cudnn.startswith("Expected query, key and value to all be of dtype: {Half, BFloat16}")
    assert "runtime disabled" not in cudnn and "Triggered" not in cudnn
    # the memory-efficient kernel's section says only that it was not the one asked for
    assert sb.refusal_reason(T4_FLASH_WARNINGS, "efficient") == "Memory Efficient attention has been runtime disabled."


def test_refusal_reason_reads_the_cpu_flash_section_and_warnings_without_headers():
    cpu = ["Flash attention kernel not used because:" + _at("sdp_utils_cpp.cpp:99"),
           "Flash attention requires q,k,v to have the same last dimension. Got Query.size(-1): 16, "
           "Key.size(-1): 16, Value.size(-1): 8 instead." + _at("sdp_utils_cpp.cpp:21")]
    assert sb.refusal_reason(cpu, "flash").startswith("Flash attention requires q,k,v to have the same last dimension")
    assert sb.refusal_reason(["a check that warned directly", "a check that warned directly"], "flash") == \
        "a check that warned directly"
    assert sb.refusal_reason(T4_FLASH_WARNINGS, "math") == ""


def test_clean_warning_removes_the_build_path_even_from_a_long_line():
    long = "Flash attention requires " + "x" * 300 + _at("sdp_utils_cpp.cpp:21")
    cleaned = sb.clean_warning(long)
    assert "Triggered" not in cleaned and "/" not in cleaned and len(cleaned) <= 200


def test_a_refused_flash_entry_records_flashs_reason_not_the_memory_efficient_kernels(monkeypatch):
    import warnings

    def refusing(entry, q, k, v):
        def fn():
            for text in T4_FLASH_WARNINGS:
                warnings.warn(text)
            raise RuntimeError("No available kernel. Aborting execution.")
        return fn
    monkeypatch.setattr(sb, "make_callable", refusing)
    result = sb.run_entry(sb.Entry("flash", "float16", **TINY), device="cpu")
    assert result.status == sb.NOT_SUPPORTED
    assert result.reason.startswith("Flash attention only supports gpu architectures in the range [sm80")
    assert "Memory" not in result.reason and "/" not in result.reason


def test_an_error_without_warnings_is_reported_by_its_own_message(monkeypatch):
    def failing(entry, q, k, v):
        def fn():
            raise RuntimeError("head dim 100 is not supported" + _at("cuda/attention.cu:1"))
        return fn
    monkeypatch.setattr(sb, "make_callable", failing)
    result = sb.run_entry(sb.Entry("efficient", "float16", **TINY), device="cpu")
    assert result.reason == "the efficient kernel exists only for CUDA GPUs"      # refused before running
    result = sb.run_entry(sb.Entry("math", "float16", **TINY), device="cpu")
    assert result.reason == "RuntimeError: head dim 100 is not supported"


def test_out_of_memory_releases_the_memory_after_the_handler_let_go_of_the_tensors(monkeypatch):
    """empty_cache() can only return memory nobody holds: the traceback holds the failed call's frames."""
    import sys
    import weakref

    big: list = []

    def oom(entry, q, k, v):
        def fn():
            scores = torch.empty(1000)              # stands for the [n, n] matrix the OOM interrupted
            big.append(weakref.ref(scores))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return fn
    seen = {}

    def empty_cache():
        seen["handling"] = sys.exc_info()[0] is not None
        seen["alive"] = big[0]() is not None

    monkeypatch.setattr(sb, "make_callable", oom)
    monkeypatch.setattr(sb, "_inputs", lambda entry, device, seed=0: [torch.zeros(1)] * 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    result = sb.run_entry(sb.Entry("naive", "float16", **TINY), device="cuda")
    assert result.status == sb.OUT_OF_MEMORY
    assert seen == {"handling": False, "alive": False}


# ---------------------------------------------------------------------------------------------
# The GPU preset: dtype from the compute capability, batch from the free memory (simulated GPUs)
# ---------------------------------------------------------------------------------------------
GB = 10**9


def _simulate_gpu(monkeypatch, capability: tuple[int, int], free_gb: float):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gb * GB), int(free_gb * GB) + GB))


@pytest.mark.parametrize("capability, free_gb, dtype, batch, longest", [
    ((7, 5), 14.7, "float16", 2, 4096),     # Colab's T4, 16 GB: no bf16 tensor cores; batch 4 would not fit
    ((8, 0), 39.0, "bfloat16", 4, 4096),    # A100 40 GB
    ((9, 0), 79.0, "bfloat16", 4, 4096),    # H100 80 GB
    ((8, 6), 3.0, "bfloat16", 1, 2048),     # a small card: even batch 1 at 4096 tokens would not fit
])
def test_gpu_plan_picks_dtype_by_capability_and_size_by_free_memory(monkeypatch, capability, free_gb, dtype,
                                                                     batch, longest):
    _simulate_gpu(monkeypatch, capability, free_gb)
    entries, note = sb.plan_gpu_lesson("cuda")
    assert {e.dtype for e in entries} == {dtype} and {e.batch for e in entries} == {batch}
    assert max(e.seq for e in entries) == longest
    assert {e.backend for e in entries} == set(sb.BACKENDS)
    assert note.startswith(f"{dtype}, batch {batch}") and f"{free_gb:.1f} GB free" in note
    biggest = max((e for e in entries if e.backend == "naive"), key=sb.naive_peak_estimate)
    assert sb.naive_peak_estimate(biggest) <= sb.MEMORY_FRACTION * free_gb * GB


def test_naive_peak_estimate_is_above_the_measured_peak():
    from course.efficient import measure_peak_bytes
    for dtype in ("bfloat16", "float32"):
        entry = sb.Entry("naive", dtype, False, 256, 64, "fwd+bwd", batch=2, heads=4)
        q, k, v = sb._inputs(entry, torch.device("cpu"))
        fn = sb.make_callable(entry, q, k, v)
        measured = measure_peak_bytes(fn) + 3 * q.numel() * q.element_size()
        assert measured <= sb.naive_peak_estimate(entry) <= 1.6 * measured


def test_math_reduced_is_left_out_in_float32_and_keeps_half_precision_in_the_math_kernel():
    assert "math_reduced" not in {e.backend for e in sb.cpu_preset()}
    assert "math_reduced" in {e.backend for e in sb.gpu_lesson_preset("float16")}
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 256, 64, generator=g).bfloat16() for _ in range(3))
    exact = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    errors = {}
    for backend in ("math", "math_reduced"):
        out = sb.make_callable(sb.Entry(backend, "bfloat16", **TINY), q, k, v)()
        errors[backend] = (out.double() - exact).abs().max().item()
    # math upcasts bf16 to float32 inside (PyTorch >= 2.5); math_reduced keeps bf16 reductions: less exact
    if hasattr(torch.backends.cuda, "allow_fp16_bf16_reduction_math_sdp"):
        assert errors["math_reduced"] > errors["math"]
    allowed = getattr(torch.backends.cuda, "fp16_bf16_reduction_math_sdp_allowed", lambda: False)
    assert allowed() is False                               # the switch is restored after the call


def test_device_name_labels_the_gpu_with_its_compute_capability(monkeypatch):
    _simulate_gpu(monkeypatch, (7, 5), 14.7)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert sb.device_name("cuda") == "Tesla T4 (sm 7.5)"
    assert sb.device_name("mps") == "Apple GPU (MPS)" and sb.device_name("cpu").startswith("CPU (")
