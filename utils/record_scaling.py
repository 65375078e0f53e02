#!/usr/bin/env python3
"""Record lesson 13's reference sweep (maintainers; a CPU is enough).

    python utils/record_scaling.py                 # writes course/data/reference/scaling_stdlib.json
    python utils/record_scaling.py --threads 1         # on a machine other jobs share (no thread oversubscription)
    python utils/record_scaling.py --quick --out sweep.json   # a few steps per run: tests the script, not the science

Every run uses the recipes of ``course.scaling`` (``LMRecipe``, ``AdditionRecipe``), the ones the lesson's
live sweep uses, so the lesson can put its live points beside these:

1. the parameter sweep: ``RECORDED_SIZES`` (7 GPTs, 3.3k to 234k non-embedding parameters), each trained on
   the same number of tokens;
2. the data sweep: one size (L1-d32) at five token budgets, 0.25x to 4x the sweep's;
3. an IsoFLOP profile: the seven sizes, each trained for as many tokens as the budget ``6 N D`` of L2-d32 in
   the parameter sweep allows it;
4. the emergence sweep: ``EMERGENCE_SIZES`` (one-layer GPTs of widths 16 to 96) on two-digit addition,
   three seeds each.

A run that two sections share (same size, same steps) is trained once. The JSON keeps the machine, the
date, the command, the duration, the load average and torch's version; it is written after every run
with ``"complete": false``, so an interrupted recording leaves a file that says so (the lesson then
refuses it in one line and shows its live sweep alone). Never edit the numbers by hand.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from course import scaling as sc  # noqa: E402

DATA_SIZE = sc.Size(1, 32)
DATA_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
ISOFLOP_ANCHOR = sc.Size(2, 32)
ISOFLOP_SIZES = (sc.Size(1, 16), sc.Size(1, 24), sc.Size(1, 32), sc.Size(2, 32), sc.Size(2, 48), sc.Size(2, 64),
                 sc.Size(3, 80))
EMERGENCE_SEEDS = (0, 1, 2)


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo; elsewhere what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "system": f"{platform.system()} {platform.machine()}", "python": platform.python_version(),
            "torch": torch.__version__, "load_average_at_start": None if load is None else [round(x, 2) for x in load]}


def plan(quick: bool = False) -> dict:
    """The runs of each section: language-model runs as ``(size, steps)``, emergence runs as ``(size, seed)``."""
    lm = sc.LMRecipe(steps=4 if quick else sc.LMRecipe().steps)
    sizes = sc.RECORDED_SIZES[:3] if quick else sc.RECORDED_SIZES
    params = [(s, lm.steps) for s in sizes]
    data = [(DATA_SIZE, max(1, round(lm.steps * f))) for f in (DATA_FACTORS[1:4] if quick else DATA_FACTORS)]
    anchor_n = sc.non_embedding_formula(ISOFLOP_ANCHOR.num_layers, ISOFLOP_ANCHOR.d_model)
    budget = sc.six_n_d(anchor_n, lm.tokens())
    iso_sizes = ISOFLOP_SIZES[1:4] if quick else ISOFLOP_SIZES
    isoflop = [(s, lm.steps_for(budget / (6 * sc.non_embedding_formula(s.num_layers, s.d_model)))) for s in iso_sizes]
    emergence = [(s, seed) for s in (sc.EMERGENCE_SIZES[:2] if quick else sc.EMERGENCE_SIZES)
                 for seed in (EMERGENCE_SEEDS[:1] if quick else EMERGENCE_SEEDS)]
    add = sc.AdditionRecipe(steps=4) if quick else sc.AdditionRecipe()
    return {"lm_recipe": lm, "addition_recipe": add, "params_sweep": params, "data_sweep": data,
            "isoflop": isoflop, "isoflop_budget": budget, "emergence": emergence}


def record(out: Path, quick: bool = False, command: str = "python utils/record_scaling.py") -> int:
    """Train every run of :func:`plan`, writing ``out`` after each; 0 when complete, 1 when interrupted."""
    p = plan(quick)
    lm, add = p["lm_recipe"], p["addition_recipe"]
    data = sc.lm_data(lm)
    sums = sc.addition_data()
    started, t0 = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    doc = {"what": "lesson 13's recorded sweep (utils/record_scaling.py); never edited by hand",
           "command": command, "date": started.isoformat(timespec="seconds"), "machine": machine(),
           "corpus_fingerprint": data.fingerprint, "lm_recipe": asdict(lm), "addition_recipe": asdict(add),
           "isoflop_budget_flops": p["isoflop_budget"], "complete": False, "duration_s": 0.0,
           "params_sweep": [], "data_sweep": [], "isoflop": [], "emergence": []}
    lm_jobs = list(dict.fromkeys(p["params_sweep"] + p["data_sweep"] + p["isoflop"]))
    jobs = [("lm", j) for j in lm_jobs] + [("emergence", j) for j in p["emergence"]]
    done: dict = {}

    def write() -> None:
        for section in ("params_sweep", "data_sweep", "isoflop"):
            doc[section] = [done[("lm", j)].to_dict() for j in p[section] if ("lm", j) in done]
        doc["emergence"] = [done[("emergence", j)].to_dict() for j in p["emergence"] if ("emergence", j) in done]
        doc["duration_s"] = round(time.perf_counter() - t0, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")

    write()
    for i, (kind, job) in enumerate(jobs):
        try:
            if kind == "lm":
                size, steps = job
                result = sc.train_lm(size, data, lm, steps=steps)
                print(f"[{i + 1}/{len(jobs)}] {size.name:>7} {steps:>5} steps  N={result.params:>7,}  "
                      f"D={result.tokens:>9,}  val {result.val_loss:.4f}  {result.seconds:.0f} s", flush=True)
            else:
                size, seed = job
                result = sc.train_addition(size, sums, replace(add, seed=seed))
                print(f"[{i + 1}/{len(jobs)}] {size.name:>7} addition seed {seed}  exact {result.exact_match:.3f}  "
                      f"per digit {result.per_digit:.3f}  log-lik {result.log_likelihood:.3f}  {result.seconds:.0f} s",
                      flush=True)
        except KeyboardInterrupt:
            doc["stopped"] = f"interrupted during run {i + 1} of {len(jobs)}"
            write()
            print(f"interrupted: {out.name} keeps {len(done)} of {len(jobs)} runs, marked incomplete")
            return 1
        done[(kind, job)] = result
        write()
    doc["complete"] = True
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    doc["machine"]["load_average_at_end"] = None if load is None else [round(x, 2) for x in load]
    write()
    print(f"wrote {out.name}: {len(jobs)} runs in {doc['duration_s']:.0f} s")
    return 0


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=sc.REFERENCE_FILE)
    parser.add_argument("--quick", action="store_true", help="a few steps per run and fewer runs: checks the script only")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's choice; 1 on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print(f"--threads must be at least 1, got {args.threads}")
            return 2
        torch.set_num_threads(args.threads)
    if args.quick and args.out.resolve() == sc.REFERENCE_FILE.resolve():
        print("--quick writes a test file, not the reference: give --out")
        return 2
    signal.signal(signal.SIGTERM, _stop)      # a `kill` is an interruption too: the file says so
    command = "python utils/record_scaling.py" + ("" if argv is None else "".join(f" {a}" for a in argv))
    if argv is None:
        command += "".join(f" {a}" for a in sys.argv[1:])
    previous = signal.signal(signal.SIGTERM, _stop)    # a `kill` is an interruption too: the file says so
    try:
        return record(args.out, args.quick, command)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
