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
