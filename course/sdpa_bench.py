"""The timing table of lesson 11: naive attention against each of PyTorch's SDPA backends.

Each :class:`Entry` is one cell of the table: a backend (``naive`` is the course's
:func:`course.efficient.naive_attention`; ``math``, ``efficient``, ``flash`` and ``cudnn`` are
``torch.nn.functional.scaled_dot_product_attention`` restricted to one kernel with
``torch.nn.attention.sdpa_kernel``), a dtype, causal or not, a sequence length, a head size and
``fwd`` or ``fwd+bwd``. :func:`run_entry` never raises for a combination the device cannot do
(flash in float32, the CUDA kernels on a CPU, an unsupported head size, out of memory): the entry is
recorded with status ``"not supported here"`` (or ``"out of memory"``) and the reason.

    results = run_table(cpu_preset())
    print(format_table(results))
    save_table(results, "my_table.json")
"""
from __future__ import annotations

import datetime as _dt
import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from course import utils
from course.bench import benchmark
from course.efficient import attention_flops, measure_peak_bytes, naive_attention
from course.utils import describe_exception, first_line

BACKENDS = ("naive", "math", "efficient", "flash", "cudnn")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
OK, NOT_SUPPORTED, OUT_OF_MEMORY = "ok", "not supported here", "out of memory"
REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "reference"
REFERENCE_FILE = REFERENCE_DIR / "sdpa_h100.json"

# Quoted from the course's issue tracker: ONE measurement someone made on an H100, not measured
# by this course. Shown (and labelled so) only while no reference table has been recorded.
QUOTED_H100 = {
    "label": "figures quoted from one H100 measurement, not measured by this course",
    "config": "bf16, batch 4, 16 heads, head size 128, 4096 tokens, non-causal, forward",
    "rows": [
        {"backend": "naive", "ms": 12.0, "tflops": 46.0, "peak_gb": 10.5},
        {"backend": "flash", "ms": 1.5, "tflops": 358.0, "peak_gb": 0.3},
        {"backend": "cudnn", "ms": 0.84, "tflops": 650.0, "peak_gb": 0.3},
    ],
}


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend
    return {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]


@dataclass(frozen=True)
class Entry:
    """One configuration to time. ``mode`` is ``"fwd"`` or ``"fwd+bwd"``."""

    backend: str
    dtype: str
    causal: bool
    seq: int
    head_dim: int
    mode: str = "fwd"
    batch: int = 1
    heads: int = 4

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if self.mode not in ("fwd", "fwd+bwd"):
            raise ValueError(f"mode must be 'fwd' or 'fwd+bwd', got {self.mode!r}")
        if min(self.seq, self.head_dim, self.batch, self.heads) < 1:
            raise ValueError(f"sizes must be positive: {self}")

    @property
    def config(self) -> tuple:
        """Everything but the backend: entries with the same config are compared with each other."""
        return (self.dtype, self.causal, self.seq, self.head_dim, self.mode, self.batch, self.heads)

    @property
    def flops(self) -> float:
        return attention_flops(self.batch, self.heads, self.seq, self.head_dim, self.causal,
                               backward=self.mode == "fwd+bwd")


@dataclass
class Result:
    """A measured (or refused) entry. ``peak_mb`` excludes the inputs q, k, v."""

    entry: Entry
    status: str
    reason: str = ""
    ms: float | None = None
    tflops: float | None = None
    speedup: float | None = None
    peak_mb: float | None = None
    peak_method: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("entry"))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        d = dict(d)
        names = Entry.__dataclass_fields__
        entry = Entry(**{k: d.pop(k) for k in list(d) if k in names})
        return cls(entry=entry, **{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def enumerate_entries(backends: Sequence[str], dtypes: Sequence[str], causal: Sequence[bool],
                      seqs: Sequence[int], head_dims: Sequence[int], modes: Sequence[str] = ("fwd", "fwd+bwd"),
                      batch: int = 1, heads: int = 4) -> list[Entry]:
    """Every combination, naive first within each configuration (speed-ups are relative to it)."""
    order = sorted(backends, key=lambda b: b != "naive")
    return [Entry(b, dt, c, n, d, m, batch, heads)
            for dt in dtypes for c in causal for d in head_dims for n in seqs for m in modes for b in order]


def cpu_preset() -> list[Entry]:
    """Small sizes that run in a few seconds on a laptop CPU (batch 1, 4 heads, float32).

    The CUDA-only backends (efficient, cudnn) are included on purpose: they are recorded as
    "not supported here", which is what the table should say on a CPU.
    """
    return enumerate_entries(BACKENDS, ["float32"], [False, True], [256, 512, 1024], [64],
                             modes=("fwd", "fwd+bwd"), batch=1, heads=4)


def gpu_lesson_preset() -> list[Entry]:
    """What the lesson runs on a GPU (about half a minute on an H100): bf16, head size 128."""
    return enumerate_entries(BACKENDS, ["bfloat16"], [False, True], [1024, 2048, 4096], [128],
                             modes=("fwd", "fwd+bwd"), batch=4, heads=16)


def gpu_preset() -> list[Entry]:
    """The full reference table (the issue's orientation: batch 4, 16 heads, head size 128).

    bf16 and fp16, causal and not, 1024/2048/4096 tokens, head sizes 64 and 128, forward and
    forward+backward, every backend; plus float32 entries and an odd head size (100), which some
    fused kernels refuse: the table records that.
    """
    main = enumerate_entries(BACKENDS, ["bfloat16", "float16"], [False, True], [1024, 2048, 4096], [64, 128],
                             modes=("fwd", "fwd+bwd"), batch=4, heads=16)
    odd = enumerate_entries(BACKENDS, ["float32"], [False], [2048], [128], modes=("fwd",), batch=4, heads=16)
    odd += enumerate_entries(BACKENDS, ["bfloat16"], [False], [2048], [100], modes=("fwd",), batch=4, heads=16)
    return main + odd


def _inputs(entry: Entry, device: torch.device, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    shape = (entry.batch, entry.heads, entry.seq, entry.head_dim)
    dtype = DTYPES[entry.dtype]
    need_grad = entry.mode == "fwd+bwd"
    return [torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_(need_grad) for _ in range(3)]


def make_callable(entry: Entry, q, k, v) -> Callable[[], object]:
    """A no-argument function running the entry once (forward, or forward and backward)."""
    if entry.backend == "naive":
        def forward():
            return naive_attention(q, k, v, causal=entry.causal)
    else:
        from torch.nn.attention import sdpa_kernel
        backend = _sdpa_backend(entry.backend)

        def forward():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=entry.causal)
    if entry.mode == "fwd":
        return forward
    grad_out = torch.ones_like(q)

    def forward_backward():
        out = forward()
        return torch.autograd.grad(out, (q, k, v), grad_out)
    return forward_backward


def _peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[float, str]:
    """Peak MB above what was allocated before one call of ``fn`` (the inputs are not counted)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 1e6, "torch.cuda.max_memory_allocated"
    return measure_peak_bytes(fn) / 1e6, "tensors seen by the dispatcher (fused kernels' scratch not counted)"


def run_entry(entry: Entry, device: torch.device | str = "cpu", min_run_time: float = 0.05,
              measure_memory: bool = True) -> Result:
    """Time one entry; a combination the device cannot run is recorded, never raised."""
    device = torch.device(device)
    if entry.backend in ("efficient", "cudnn") and device.type != "cuda":
        return Result(entry, NOT_SUPPORTED, f"the {entry.backend} kernel exists only for CUDA GPUs")
    try:
        q, k, v = _inputs(entry, device)
        fn = make_callable(entry, q, k, v)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()  # one trial call: a refusal shows here (PyTorch warns with the reason, then raises)
        peak, method = _peak_memory(fn, device) if measure_memory else (None, "")
        timing = benchmark(fn, f"{entry.backend} {entry.mode}", min_run_time=min_run_time, device=device)
    except Exception as exc:  # one entry must never stop the table: record why and carry on
        oom = isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()
        if oom and device.type == "cuda":
            torch.cuda.empty_cache()
        # PyTorch explains a refused kernel in warnings ("Flash attention requires ..."), then raises.
        why = [first_line(w.message) for w in locals().get("caught", [])]
        reason = "; ".join(dict.fromkeys(why[:2])) or describe_exception(exc)
        return Result(entry, OUT_OF_MEMORY if oom else NOT_SUPPORTED, reason)
    ms = timing.median_ms
    return Result(entry, OK, ms=ms, tflops=entry.flops / (ms * 1e-3) / 1e12, peak_mb=peak, peak_method=method)


def add_speedups(results: Iterable[Result]) -> list[Result]:
    """Fill ``speedup`` = naive's ms / this entry's ms, for entries whose naive twin was measured."""
    results = list(results)
    naive = {r.entry.config: r.ms for r in results if r.entry.backend == "naive" and r.status == OK}
    for r in results:
        if r.status == OK and r.entry.config in naive:
            r.speedup = naive[r.entry.config] / r.ms
    return results


def run_table(entries: Sequence[Entry], device: torch.device | str | None = None, min_run_time: float = 0.05,
              progress: bool = True, measure_memory: bool = True) -> list[Result]:
    """Run every entry (with a progress bar) and fill in the speed-ups over naive."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    items: Iterable[Entry] = entries
    if progress:
        from course.progress import progress as bar
        items = bar(entries, desc="timing")
    results = [run_entry(e, device, min_run_time, measure_memory) for e in items]
    return add_speedups(results)


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def save_table(results: Sequence[Result], path: str | Path, device: torch.device | str | None = None,
               extra: dict | None = None) -> Path:
    """Write the table as JSON with the device's name, torch's version and the date."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"device": device_name(device), "torch": torch.__version__,
               "cuda": torch.version.cuda, "date": _dt.date.today().isoformat(),
               "entries": [r.to_dict() for r in results], **(extra or {})}
    path.write_text(json.dumps(payload, indent=1))
    return path


def load_table(path: str | Path) -> tuple[dict, list[Result]]:
    """Read a table written by :func:`save_table`: (metadata, results)."""
    payload = json.loads(Path(path).read_text())
    results = [Result.from_dict(d) for d in payload.pop("entries")]
    return payload, results


def load_reference(path: str | Path = REFERENCE_FILE) -> tuple[dict, list[Result]] | None:
    """The kept GPU reference table, or None when none has been recorded yet."""
    path = Path(path)
    return load_table(path) if path.exists() else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: Sequence[Result], only: Callable[[Result], bool] | None = None) -> str:
    """A plain-text table: one line per entry; refused entries say why."""
    rows = []
    for r in results:
        if only is not None and not only(r):
            continue
        e = r.entry
        left = [e.backend, e.dtype, str(e.causal), e.seq, e.head_dim, e.mode]
        if r.status == OK:
            rows.append(left + [f"{r.ms:.3f}", f"{r.tflops:.3f}", _fmt(r.speedup, ".2f") + "x", _fmt(r.peak_mb, ".1f")])
        else:
            rows.append(left + [f"{r.status}: {r.reason}"])
    header = ["backend", "dtype", "causal", "seq", "d", "mode", "ms", "TFLOP/s", "speed-up", "peak MB"]
    return utils.format_table(rows, header, align="<<<>><>>>>", notes=True)


def _series(results: Sequence[Result], dtype: str, causal: bool, head_dim: int, mode: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in results:
        e = r.entry
        if r.status == OK and (e.dtype, e.causal, e.head_dim, e.mode) == (dtype, causal, head_dim, mode):
            out.setdefault(e.backend, []).append((e.seq, r.ms, r.tflops))
    return {b: sorted(v) for b, v in out.items()}


def _first_slice(results: Sequence[Result]) -> tuple | None:
    for r in results:
        if r.status == OK:
            e = r.entry
            return (e.dtype, e.causal, e.head_dim, e.mode)
    return None


def plot_tables(own: Sequence[Result], reference: Sequence[Result] | None = None, own_label: str = "this machine",
                reference_label: str = "reference", causal: bool = False, mode: str = "fwd"):
    """Milliseconds against sequence length for each backend: own results left, the reference right."""
    import matplotlib.pyplot as plt
    panels = [(own, own_label)] + ([(reference, reference_label)] if reference else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, (results, label) in zip(axes[0], panels):
        first = _first_slice(results)
        if first is None:
            ax.set_title(f"{label}: nothing measured")
            continue
        dtype, _, head_dim, _ = first
        for backend, points in _series(results, dtype, causal, head_dim, mode).items():
            seqs, ms, _ = zip(*points)
            ax.plot(seqs, ms, marker="o", label=backend)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("milliseconds (median)")
        ax.set_title(f"{label}\n{dtype}, head {head_dim}, {'causal' if causal else 'non-causal'}, {mode}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
