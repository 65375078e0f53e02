#!/usr/bin/env python3
"""Record lesson 11's GPU reference table (maintainers, on a CUDA machine).

    python utils/gpu_reference.py                          # writes course/data/reference/sdpa_h100.json
    python utils/gpu_reference.py --out course/data/reference/sdpa_a100.json --quick

Runs every entry of ``course.sdpa_bench.gpu_preset()`` (naive and each SDPA backend; bf16/fp16;
causal or not; 1024/2048/4096 tokens; head sizes 64 and 128; forward and forward+backward; plus
float32 and an odd head size, recorded as "not supported here" where a kernel refuses), then times
the course's Triton kernel against SDPA's flash backend at head size 128, 4096 tokens, bf16
(the issue's target: Triton TFLOP/s at least 0.7 of flash's; on a GPU older than sm 8.0, float16
against the memory-efficient backend, since flash and bf16 tensor cores need sm 8.0). The JSON keeps the GPU's name,
torch's and CUDA's versions and the date; the lesson plots it next to the learner's own results.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from course import sdpa_bench as sb  # noqa: E402
from course.utils import describe_exception  # noqa: E402


def triton_ratio() -> dict:
    """The Triton kernel against SDPA (flash from sm 8.0, memory-efficient below), non-causal and causal;
    a one-line reason if it cannot run."""
    try:
        from course.triton_flash import HAVE_TRITON, TRITON_MISSING, time_against_sdpa
        if not HAVE_TRITON:
            return {"status": TRITON_MISSING}
        return {"status": "ok", "runs": [time_against_sdpa(causal=c) for c in (False, True)]}
    except Exception as exc:  # keep the table even if the kernel fails on this GPU
        return {"status": f"failed: {describe_exception(exc, 200)}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=sb.REFERENCE_FILE)
    parser.add_argument("--quick", action="store_true", help="the lesson's smaller GPU preset only (sized for this GPU)")
    parser.add_argument("--min-run-time", type=float, default=0.2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: the reference table must be recorded on a GPU machine")
        return 1
    entries = sb.plan_gpu_lesson("cuda")[0] if args.quick else sb.gpu_preset()
    results = sb.run_table(entries, device="cuda", min_run_time=args.min_run_time)
    print(sb.format_table(results))
    ratio = triton_ratio()
    print("triton vs SDPA:", ratio)
    path = sb.save_table(results, args.out, device="cuda",
                         extra={"preset": "gpu_lesson_preset" if args.quick else "gpu_preset",
                                "triton_vs_sdpa": ratio})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
