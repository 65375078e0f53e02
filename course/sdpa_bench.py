"""The timing table of lesson 11: naive attention against each of PyTorch's SDPA backends.

Each :class:`Entry` is one cell of the table: a backend (``naive`` is the course's
:func:`course.efficient.naive_attention`; ``math``, ``efficient``, ``flash`` and ``cudnn`` are
``torch.nn.functional.scaled_dot_product_attention`` restricted to one kernel with
``torch.nn.attention.sdpa_kernel``; ``math_reduced`` is ``math`` with fp16/bf16 reductions allowed,
see below), a dtype, causal or not, a sequence length, a head size and ``fwd`` or ``fwd+bwd``.
:func:`run_entry` never raises for a combination the device cannot do (flash in float32, the CUDA
kernels on a CPU or on a GPU older than sm 8.0, an unsupported head size, out of memory): the entry is
recorded with status ``"not supported here"`` (or ``"out of memory"``) and the reason PyTorch gave for
that backend (:func:`refusal_reason`).

Since PyTorch 2.5 the ``math`` backend computes fp16 and bf16 inputs in float32 (for accuracy), so in
half precision it is not "the naive version": ``math_reduced`` times it with
``torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)``, which keeps the input dtype, and
the table shows both. In float32 the two are the same kernel, so presets leave ``math_reduced`` out.

    results = run_table(cpu_preset())
    print(format_table(results))
    save_table(results, "my_table.json")

On a GPU, :func:`plan_gpu_lesson` picks the dtype from the compute capability (bf16 from sm 8.0,
float16 below) and the batch from the free memory the GPU reports.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from course import utils
from course.bench import benchmark
from course.device import cuda_capability, free_memory_bytes, half_dtype
from course.efficient import attention_flops, measure_peak_bytes, naive_attention, naive_attention_bytes
from course.utils import first_line

BACKENDS = ("naive", "math", "math_reduced", "efficient", "flash", "cudnn")
HALF_ONLY = ("math_reduced",)         # the same kernel as math in float32: presets leave it out there
CUDA_ONLY = ("efficient", "cudnn")
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
    return {"math": SDPBackend.MATH, "math_reduced": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]


@contextlib.contextmanager
def reduced_precision_math(enabled: bool = True):
    """Inside the block, SDPA's math backend keeps fp16/bf16 inputs in their dtype (PyTorch >= 2.5
    upcasts them to float32 by default); the previous setting is restored after. Older PyTorch
    versions did not upcast and lack the switch: there the block changes nothing."""
    cuda = torch.backends.cuda
    setter = getattr(cuda, "allow_fp16_bf16_reduction_math_sdp", None)
    getter = getattr(cuda, "fp16_bf16_reduction_math_sdp_allowed", None)
    if setter is None or getter is None:
        yield
        return
    before = getter()
    setter(enabled)
    try:
        yield
    finally:
        setter(before)


# ---------------------------------------------------------------------------------------------
# Why a backend refused: PyTorch's warnings, one section per backend
# ---------------------------------------------------------------------------------------------
# When no kernel of the allowed ones can run, PyTorch re-runs every backend's checks and warns once per
# failed check, each backend's section opened by a header, in this order on CUDA: "Memory efficient
# kernel not used because:", "Flash attention kernel not used because:", "CuDNN attention kernel not used
# because:" (the CPU has only the flash section), then raises "No available kernel". The backends that
# were not requested say "... has been runtime disabled.". Each message ends with the C++ source
# location "(Triggered internally at /path/sdp_utils.cpp:NNN.)", a path of the machine that built PyTorch.
_HEADER = re.compile(r"^(?P<name>.+?) kernel not used because:?$", re.IGNORECASE)
_SOURCE_LOCATION = re.compile(r"\s*\(Triggered internally at [^)]*(\)\.?|$)")
_HEADER_NAMES = (("memory efficient", "efficient"), ("mem efficient", "efficient"), ("flash", "flash"),
                 ("cudnn", "cudnn"))


def clean_warning(message: object, limit: int = 200) -> str:
    """The first line of a warning or message, without PyTorch's "(Triggered internally at <source
    path>)" suffix (removed before the line is cut to ``limit`` characters, so no part of it stays)."""
    return first_line(_SOURCE_LOCATION.sub("", first_line(message, limit=10_000)), limit)


def _header_backend(name: str) -> str:
    name = name.lower()
    for prefix, backend in _HEADER_NAMES:
        if name.startswith(prefix):
            return backend
    return name


def refusal_reason(messages: Iterable[object], backend: str) -> str:
    """Why PyTorch refused ``backend``, in one line, from the warnings it gave (texts, ``Warning``s or
    the records of ``warnings.catch_warnings(record=True)``).

    Only the section that follows ``backend``'s own header counts (the other backends' sections explain
    why *they* could not run); warnings without any header (one check that warned directly) are all
    kept. Repeated lines are dropped. ``""`` when the warnings say nothing about ``backend``.
    """
    sections: dict[str | None, list[str]] = {}
    current: str | None = None
    for message in messages:
        line = clean_warning(getattr(message, "message", message))   # a caught warning, or its text
        header = _HEADER.match(line)
        if header:
            current = _header_backend(header["name"])
            sections.setdefault(current, [])
        elif line:
            sections.setdefault(current, []).append(line)
    lines = sections.get(backend, [])
    if not lines and set(sections) == {None}:
        lines = sections[None]
    return "; ".join(dict.fromkeys(lines))


def release_memory(device: torch.device | str) -> None:
    """Return the memory of freed tensors to the device (CUDA's and MPS's caching allocators keep it)."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "empty_cache"):
        torch.mps.empty_cache()


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
    """Every combination, naive first within each configuration (speed-ups are relative to it).

    ``math_reduced`` is left out in float32, where it is the same kernel as ``math``."""
    order = sorted(backends, key=lambda b: b != "naive")
    return [Entry(b, dt, c, n, d, m, batch, heads)
            for dt in dtypes for c in causal for d in head_dims for n in seqs for m in modes for b in order
            if not (b in HALF_ONLY and dt == "float32")]


def cpu_preset() -> list[Entry]:
    """Small sizes that run in a few seconds on a laptop CPU (batch 1, 4 heads, float32).

    The CUDA-only backends (efficient, cudnn) are included on purpose: they are recorded as
    "not supported here", which is what the table should say on a CPU.
    """
    return enumerate_entries(BACKENDS, ["float32"], [False, True], [256, 512, 1024], [64],
                             modes=("fwd", "fwd+bwd"), batch=1, heads=4)


LESSON_SEQS = (1024, 2048, 4096)
LESSON_BATCHES = (4, 2, 1)
MEMORY_FRACTION = 0.8     # of the free memory, for the largest naive entry
# Peak memory of naive attention over the intermediates ``naive_attention_bytes`` counts, measured with
# the tensor tracker (bf16, fp16, fp32): about 1.3x forward and 1.6-1.8x forward+backward; rounded up.
NAIVE_PEAK_FACTOR = {"fwd": 1.5, "fwd+bwd": 2.0}


def gpu_lesson_preset(dtype: str = "bfloat16", batch: int = 4, seqs: Sequence[int] = LESSON_SEQS) -> list[Entry]:
    """What the lesson runs on a GPU (about half a minute on an H100): head size 128, 16 heads,
    causal and not, forward and forward+backward, every backend. :func:`plan_gpu_lesson` chooses
    ``dtype``, ``batch`` and ``seqs`` for the GPU at hand."""
    return enumerate_entries(BACKENDS, [dtype], [False, True], list(seqs), [128],
                             modes=("fwd", "fwd+bwd"), batch=batch, heads=16)


def naive_peak_estimate(entry: Entry) -> int:
    """Bytes naive attention (and the math backend, which also forms the square matrices) needs for
    ``entry``: its intermediates (:func:`course.efficient.naive_attention_bytes`) times the measured
    peak factor, plus q, k, v (and their gradients for ``fwd+bwd``)."""
    dtype = DTYPES[entry.dtype]
    inner = naive_attention_bytes(entry.batch, entry.heads, entry.seq, entry.head_dim, dtype)
    qkv = 3 * entry.batch * entry.heads * entry.seq * entry.head_dim * torch.empty((), dtype=dtype).element_size()
    grads = 2 if entry.mode == "fwd+bwd" else 1
    return int(inner * NAIVE_PEAK_FACTOR[entry.mode] + qkv * grads)


def size_gpu_preset(free_bytes: int | None, dtype: str = "bfloat16",
                    seqs: Sequence[int] = LESSON_SEQS, batches: Sequence[int] = LESSON_BATCHES) -> tuple[int, list[int]]:
    """``(batch, seqs)`` for :func:`gpu_lesson_preset` on a GPU with ``free_bytes`` free.

    The largest batch of ``batches`` whose naive forward+backward at the longest sequence fits in
    ``MEMORY_FRACTION`` of the free memory; when even the smallest batch does not fit, the longest
    sequences are dropped until it does. ``free_bytes=None`` (unknown) keeps the largest batch.
    """
    if free_bytes is None:
        return max(batches), list(seqs)
    budget = MEMORY_FRACTION * free_bytes
    seqs = sorted(seqs)

    def fits(batch: int, seq: int) -> bool:
        return naive_peak_estimate(Entry("naive", dtype, False, seq, 128, "fwd+bwd", batch, 16)) <= budget
    for batch in sorted(batches, reverse=True):
        if fits(batch, seqs[-1]):
            return batch, seqs
    smallest = min(batches)
    kept = [n for n in seqs if fits(smallest, n)]
    return smallest, kept or seqs[:1]


def plan_gpu_lesson(device: torch.device | str = "cuda") -> tuple[list[Entry], str]:
    """The lesson's GPU entries for ``device`` and one line saying how they were chosen.

    dtype: :func:`course.device.half_dtype` (bf16 from compute capability 8.0, float16 below, as on a
    T4); batch and lengths: :func:`size_gpu_preset` from the free memory the GPU reports.
    """
    dtype = str(half_dtype(device)).removeprefix("torch.")
    free = free_memory_bytes(device)
    batch, seqs = size_gpu_preset(free, dtype)
    entries = gpu_lesson_preset(dtype, batch, seqs)
    longest = Entry("naive", dtype, False, seqs[-1], 128, "fwd+bwd", batch, 16)
    free_text = "unknown" if free is None else f"{free / 1e9:.1f} GB"
    note = (f"{dtype}, batch {batch}, 16 heads, head size 128, up to {seqs[-1]} tokens: naive forward+backward "
            f"there needs about {naive_peak_estimate(longest) / 1e9:.1f} GB; the GPU reports {free_text} free")
    return entries, note


def gpu_preset() -> list[Entry]:
    """The full reference table (the issue's orientation: batch 4, 16 heads, head size 128).

    bf16 and fp16, causal and not, 1024/2048/4096 tokens, head sizes 64 and 128, forward and
    forward+backward, every backend; plus float32 entries and an odd head size (100), which some
    fused kernels refuse: the table records that.
    """
    main = enumerate_entries(BACKENDS, ["bfloat16", "float16"], [False, True], list(LESSON_SEQS), [64, 128],
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
        reduced = entry.backend == "math_reduced"     # math without its float32 upcast of fp16/bf16

        def forward():
            with sdpa_kernel(backend), reduced_precision_math(reduced):
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
    if entry.backend in CUDA_ONLY and device.type != "cuda":
        return Result(entry, NOT_SUPPORTED, f"the {entry.backend} kernel exists only for CUDA GPUs")
    refused: Result | None = None
    caught: list = []
    q = k = v = fn = None
    try:
        q, k, v = _inputs(entry, device)
        fn = make_callable(entry, q, k, v)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()  # one trial call: a refusal shows here (PyTorch warns with the reasons, then raises)
        peak, method = _peak_memory(fn, device) if measure_memory else (None, "")
        timing = benchmark(fn, f"{entry.backend} {entry.mode}", min_run_time=min_run_time, device=device)
    except Exception as exc:  # one entry must never stop the table: record why and carry on
        oom = isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()
        # "No available kernel": PyTorch explained the refusal in warnings just before raising.
        reason = refusal_reason(caught, entry.backend) if "no available kernel" in str(exc).lower() else ""
        reason = reason or clean_warning(f"{type(exc).__name__}: {first_line(exc, limit=10_000)}")
        refused = Result(entry, OUT_OF_MEMORY if oom else NOT_SUPPORTED, reason)
    if refused is not None:
        # Outside the handler: the exception and its traceback, which held the frames with the large
        # intermediate tensors, are gone, so their memory can really be returned.
        q = k = v = fn = None
        release_memory(device)
        return refused
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
        major, minor = cuda_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm {major}.{minor})"
    if device.type == "mps":
        return "Apple GPU (MPS)"
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
