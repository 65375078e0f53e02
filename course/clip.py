"""CLIP (lesson 15): an image encoder and a text encoder trained so that a picture and its caption land on the
same point of one shared space.

    images [b, 3, h, w] -> ViT (lesson 14) -> class token [b, d_img] -> linear -> unit vector [b, e]
    captions (b strings) -> text encoder -> mean of its tokens [b, d_txt] -> linear -> unit vector [b, e]
    logits = exp(logit_scale) * images @ texts.T                       [b, b]: pair i is on the diagonal
    loss = (cross-entropy over each row + cross-entropy over each column) / 2

This is Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021), at toy
size: the symmetric contrastive (InfoNCE) loss with a learned temperature, stored as its log, initialised to
0.07 and clamped so the logits are never scaled by more than 100, as in the paper.

Two text encoders share one interface (a list of captions in, a vector per caption out): :class:`WordTextEncoder`,
the course's own BERT-style encoder (lesson 07) with a word tokenizer fitted on the training captions, and
:class:`FrozenSentenceEncoder`, real all-MiniLM-L6-v2 weights (frozen; only the projection after it trains).

Also here: the batches (never two images with the same meaning in one batch), zero-shot classification,
recall@k for retrieval, and :class:`ClipExplorer`, a widget that retrieves images for a typed caption and
captions for a chosen image.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course.data.images import (COLOURS, DIGIT_NAMES, DIGIT_TEMPLATES, POSITIONS, SHAPE_TEMPLATES, SHAPES,
                                ShapeScene, caption_words, digit_caption, shape_caption)
from course.data.sentences import tokenize_words
from course.mlm import mean_pool
from course.models.bert import BertConfig, BertEncoder
from course.plotting import use_course_style
from course.seed import step_seed
from course.tokenizers import SpecialWordTokenizer
from course.utils import describe_exception, eval_mode
from course.vit import VisionTransformer, validate_image
from course.viz import Explorer, validate_sentence

__all__ = [
    "MAX_LOGIT_SCALE", "clip_logits", "clip_loss", "WordTextEncoder", "FrozenSentenceEncoder", "CLIP",
    "CaptionedImages", "captioned_digits", "captioned_shapes", "join", "clip_batches", "clip_step_loss",
    "encode_images", "encode_texts", "zero_shot_classify", "zero_shot_accuracy", "shape_combinations",
    "zero_shot_shapes", "recall_at_k", "recall_chance",
    "ClipExplorer", "clip_explorer", "draw_similarity", "caption_for", "class_captions", "vocabulary",
]

MAX_LOGIT_SCALE = 100.0


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------

def clip_logits(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
    """``[b, e]``, ``[m, e]`` and the log of the scale (0-dim) -> ``[b, m]``: cosine similarities times
    ``exp(logit_scale)`` (at most :data:`MAX_LOGIT_SCALE`). Row i: how well image i matches each caption."""
    images = F.normalize(image_features, dim=-1)
    texts = F.normalize(text_features, dim=-1)
    return logit_scale.exp().clamp(max=MAX_LOGIT_SCALE) * images @ texts.T


def clip_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
    """The symmetric contrastive (InfoNCE) loss of a batch of ``b`` matching pairs: ``[b, e]``, ``[b, e]``, 0-dim
    -> 0-dim. Image i's caption is text i: each row of :func:`clip_logits` is a b-way classification of the right
    caption, each column one of the right image; the loss is the mean of the two cross-entropies."""
    if image_features.shape != text_features.shape or image_features.dim() != 2:
        raise ValueError(f"clip_loss expects two [b, e] batches of the same shape, got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
    logits = clip_logits(image_features, text_features, logit_scale)
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


# ---------------------------------------------------------------------------------------------
# Text encoders: a list of captions in, one vector per caption out
# ---------------------------------------------------------------------------------------------

class WordTextEncoder(nn.Module):
    """The course's BERT-style encoder (lesson 07) on word tokens: ``captions (list of b strings) -> [b, d_model]``,
    the mean of the real tokens' final vectors. ``vocabulary`` is every word it knows (:meth:`validate` says
    which words of a caption it has never seen)."""

    def __init__(self, vocabulary: Sequence[str], d_model: int = 48, num_heads: int = 4, num_layers: int = 1,
                 context_length: int = 16):
        super().__init__()
        self.tokenizer = SpecialWordTokenizer(sorted(set(vocabulary)))
        self.config = BertConfig(vocab_size=self.tokenizer.vocab_size, context_length=context_length,
                                 d_model=d_model, num_heads=num_heads, num_layers=num_layers)
        self.encoder = BertEncoder(self.config)
        self.width = d_model

    @property
    def vocabulary(self) -> list[str]:
        return self.tokenizer.itos[self.tokenizer.num_special:]

    def validate(self, caption: str) -> str:
        """'' if the encoder can read ``caption``, else a one-line message (empty, unknown words, too long)."""
        return validate_sentence(caption, self.config.context_length - 2, self.vocabulary)[1]

    def forward(self, captions: Sequence[str]) -> Tensor:
        ids, mask = self.tokenizer.batch(list(captions), self.config.context_length)
        device = self.encoder.token_embedding.weight.device
        ids, mask = ids.to(device), mask.to(device)
        return mean_pool(self.encoder(ids, mask), mask)


class FrozenSentenceEncoder(nn.Module):
    """A real pretrained sentence encoder, frozen: ``captions -> [b, d_model]``, the mean of its token vectors
    (sentence-transformers' pooling for all-MiniLM-L6-v2). Its weights never train; vectors are cached per
    caption, so a training run computes each distinct caption once."""

    def __init__(self, encoder: BertEncoder, tokenizer, name: str = "all-MiniLM-L6-v2"):
        super().__init__()
        self.encoder, self.tokenizer, self.name = encoder.eval(), tokenizer, name
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.width = encoder.config.d_model
        self._cache: dict[str, Tensor] = {}

    def train(self, mode: bool = True) -> "FrozenSentenceEncoder":
        super().train(mode)
        self.encoder.eval()  # frozen: always in eval mode
        return self

    def validate(self, caption: str) -> str:
        """'' for any non-empty caption of at most 30 words (WordPiece reads unknown words in pieces)."""
        return validate_sentence(caption, 30)[1]

    @torch.no_grad()
    def forward(self, captions: Sequence[str]) -> Tensor:
        todo = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if todo:
            batch = self.tokenizer(todo, padding=True, return_tensors="pt")
            hidden = self.encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            for caption, vector in zip(todo, mean_pool(hidden, batch["attention_mask"])):
                self._cache[caption] = vector
        device = next(iter(self.parameters())).device
        return torch.stack([self._cache[c] for c in captions]).to(device)


class CLIP(nn.Module):
    """An image encoder and a text encoder, each followed by a linear projection into one ``embed_dim`` space,
    and the learned temperature, stored as ``logit_scale = log(1 / temperature)`` (logits are multiplied by
    ``exp(logit_scale)``, at first 1 / 0.07, about 14.3).

    ``forward(images [b, c, h, w], captions (b strings)) -> logits [b, b]``; ``encode_image`` and
    ``encode_text`` give unit vectors ``[b, embed_dim]``.
    """

    def __init__(self, image_encoder: VisionTransformer, text_encoder: nn.Module, embed_dim: int = 32,
                 temperature: float = 0.07):
        super().__init__()
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.image_proj = nn.Linear(image_encoder.config.d_model, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_encoder.width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def encode_image(self, images: Tensor) -> Tensor:
        return F.normalize(self.image_proj(self.image_encoder.embed(images)), dim=-1)

    def encode_text(self, captions: Sequence[str]) -> Tensor:
        return F.normalize(self.text_proj(self.text_encoder(captions)), dim=-1)

    @property
    def temperature(self) -> float:
        return float(1 / self.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))

    def forward(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        return clip_logits(self.encode_image(images), self.encode_text(captions), self.logit_scale)


# ---------------------------------------------------------------------------------------------
# Data: images with their meaning, captions drawn from templates
# ---------------------------------------------------------------------------------------------

@dataclass
class CaptionedImages:
    """Images ``[n, 3, h, w]`` and what each one shows: ``meaning[i]`` is a key two images share exactly when
    they show the same thing (``("digit", 7)`` or ``("shape", colour, shape, position)``)."""

    images: Tensor
    meaning: list[tuple]

    def __len__(self) -> int:
        return len(self.meaning)

    def caption(self, i: int, template: int = 0, split: str = "train") -> str:
        """Image ``i``'s caption from template ``template`` of ``split`` ("train" or "held_out")."""
        return caption_for(self.meaning[i], template, split)

    def templates(self, i: int, split: str = "train") -> int:
        kind = self.meaning[i][0]
        return len((DIGIT_TEMPLATES if kind == "digit" else SHAPE_TEMPLATES)[split])


def caption_for(meaning: tuple, template: int = 0, split: str = "train") -> str:
    """The caption of a meaning (see :class:`CaptionedImages`) from one template."""
    if meaning[0] == "digit":
        return digit_caption(meaning[1], template, split)
    return shape_caption(*meaning[1:], template=template, split=split)


def captioned_digits(images: Tensor, labels: Tensor, size: int = 28) -> CaptionedImages:
    """Grey digits ``[n, 1, h, w]`` as RGB ``[n, 3, size, size]`` (scikit-learn's 8x8 digits are scaled up to
    match the shapes) with meanings ``("digit", label)``."""
    from course.data.images import to_rgb
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return CaptionedImages(to_rgb(images), [("digit", int(y)) for y in labels])


def captioned_shapes(images: Tensor, scenes: Sequence[ShapeScene]) -> CaptionedImages:
    """Generated shapes with meanings ``("shape", colour, shape, position)``."""
    return CaptionedImages(images, [("shape", s.colour, s.shape, s.position) for s in scenes])


def join(*parts: CaptionedImages) -> CaptionedImages:
    return CaptionedImages(torch.cat([p.images for p in parts]), [m for p in parts for m in p.meaning])


def clip_batches(data: CaptionedImages, batch_size: int, seed: int = 0) -> Callable[[int], tuple[Tensor, list[str]]]:
    """``next_batch(step) -> (images [b, 3, h, w], captions)`` for :func:`course.train.train`: ``b`` images with
    ``b`` different meanings (so no other caption in the batch also fits an image: every off-diagonal pair is
    a true negative), each with one of its training templates at random; the same step gives the same batch."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(data.meaning):
        groups.setdefault(m, []).append(i)
    meanings = list(groups)
    if batch_size > len(meanings):
        raise ValueError(f"batch_size {batch_size} is more than the {len(meanings)} different meanings in the data")

    def next_batch(step: int) -> tuple[Tensor, list[str]]:
        rng = random.Random(step_seed(seed, step))
        chosen = rng.sample(meanings, batch_size)
        idx = [rng.choice(groups[m]) for m in chosen]
        captions = [data.caption(i, rng.randrange(data.templates(i))) for i in idx]
        return data.images[idx], captions

    return next_batch


def clip_step_loss(model: CLIP, batch: tuple[Tensor, list[str]]) -> Tensor:
    """:func:`clip_loss` of one batch from :func:`clip_batches`."""
    images, captions = batch
    return clip_loss(model.image_proj(model.image_encoder.embed(images)),
                     model.text_proj(model.text_encoder(captions)), model.logit_scale)


# ---------------------------------------------------------------------------------------------
# Zero-shot classification and retrieval
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def encode_images(model: CLIP, images: Tensor, batch_size: int = 500) -> Tensor:
    """Unit image vectors ``[n, e]`` on the CPU, in eval mode."""
    device = model.logit_scale.device
    with eval_mode(model):
        return torch.cat([model.encode_image(images[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(images), batch_size)])


@torch.no_grad()
def encode_texts(model: CLIP, captions: Sequence[str]) -> Tensor:
    """Unit caption vectors ``[m, e]`` on the CPU, in eval mode."""
    with eval_mode(model):
        return model.encode_text(list(captions)).cpu()


def zero_shot_classify(image_features: Tensor, class_text_features: Tensor) -> Tensor:
    """Each image's class: the one whose caption vectors are most like it (cosine similarity).

    ``image_features [n, e]``, ``class_text_features [classes, templates, e]`` (one caption per template per
    class) -> ``[n]`` long. Several templates are combined as CLIP's paper does (prompt ensembling): each
    caption vector made unit length, averaged over the templates, the average made unit length again.
    """
    if class_text_features.dim() != 3 or image_features.dim() != 2 or image_features.shape[-1] != class_text_features.shape[-1]:
        raise ValueError(f"zero_shot_classify expects images [n, e] and captions [classes, templates, e], got "
                         f"{tuple(image_features.shape)} and {tuple(class_text_features.shape)}")
    classes = F.normalize(F.normalize(class_text_features, dim=-1).mean(1), dim=-1)   # [classes, e]
    return (F.normalize(image_features, dim=-1) @ classes.T).argmax(-1)


def zero_shot_accuracy(model: CLIP, images: Tensor, labels: Tensor, class_captions: Sequence[Sequence[str]]) -> float:
    """Share of ``images`` whose :func:`zero_shot_classify` class is the label; ``class_captions[c]`` lists
    class c's captions (one per template)."""
    texts = encode_texts(model, [c for row in class_captions for c in row]).reshape(len(class_captions), -1,
                                                                                     model.image_proj.out_features)
    predicted = zero_shot_classify(encode_images(model, images), texts)
    return float((predicted == labels).float().mean())


def shape_combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, position) a generated picture can show: the classes of zero-shot on shapes."""
    return [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]


def zero_shot_shapes(model: CLIP, images: Tensor, scenes: Sequence[ShapeScene], template_split: str = "held_out"
                     ) -> dict[str, float]:
    """Zero-shot over every (colour, shape, position), one caption per template of ``template_split`` for each:
    ``{"all": share of images whose whole caption is right, "colour": share with the right colour, "shape": ...,
    "position": ..., "chance": 1 / number of combinations}``."""
    combos = shape_combinations()
    templates = len(SHAPE_TEMPLATES[template_split])
    texts = encode_texts(model, [shape_caption(*c, template=t, split=template_split) for c in combos
                                 for t in range(templates)]).reshape(len(combos), templates, -1)
    guesses = [combos[i] for i in zero_shot_classify(encode_images(model, images), texts).tolist()]
    truth = [(s.colour, s.shape, s.position) for s in scenes]
    out = {"all": float(np.mean([g == t for g, t in zip(guesses, truth)]))}
    for k, name in enumerate(("colour", "shape", "position")):
        out[name] = float(np.mean([g[k] == t[k] for g, t in zip(guesses, truth)]))
    out["chance"] = 1 / len(combos)
    return out


def recall_at_k(similarity: Tensor, k: int, matches: Tensor | None = None) -> Tensor:
    """Retrieval recall@k: the share of queries (rows) with a right item among their ``k`` best-scored items.

    ``similarity [queries, items]``; ``matches [queries, items]`` bool marks the right items (default: the
    diagonal, item i for query i, which needs ``items >= queries``). A query's rank is the number of wrong items
    scored strictly higher than its best right item (ties count in its favour); it is found when rank < k.
    Returns a 0-dim float tensor.
    """
    if similarity.dim() != 2:
        raise ValueError(f"recall_at_k expects similarity [queries, items], got {tuple(similarity.shape)}")
    if matches is None:
        if similarity.shape[1] < similarity.shape[0]:
            raise ValueError("with the diagonal as the matches, there must be at least as many items as queries")
        matches = torch.eye(*similarity.shape, dtype=torch.bool)
    best_right = similarity.masked_fill(~matches, float("-inf")).max(-1, keepdim=True).values
    rank = ((similarity > best_right) & ~matches).sum(-1)
    return (rank < k).float().mean()


def recall_chance(matches: Tensor, k: int) -> float:
    """recall@k of a random ranking: for each query with m right items among n, ``1 - C(n-m, k) / C(n, k)``, averaged."""
    n = matches.shape[1]
    out = []
    for m in matches.sum(-1).tolist():
        out.append(1.0 - (math.comb(n - m, k) / math.comb(n, k) if k <= n else 0.0))
    return float(np.mean(out))


# ---------------------------------------------------------------------------------------------
# Pictures and the explorer
# ---------------------------------------------------------------------------------------------

def draw_similarity(ax, similarity: Tensor, captions: Sequence[str] | None = None, title: str = "") -> None:
    """A batch's similarity matrix ``[images, captions]`` as a heatmap (the matching pairs on the diagonal)."""
    values = similarity.detach().float().cpu().numpy()
    im = ax.imshow(values, cmap="viridis", vmin=-1, vmax=1)
    ax.grid(False)
    ax.set_xlabel("caption")
    ax.set_ylabel("image")
    if captions is not None:
        ax.set_xticks(range(len(captions)), labels=list(captions), rotation=70, ha="right", fontsize=6)
    if title:
        ax.set_title(title, fontsize=9)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _show(ax, image: Tensor) -> None:
    ax.imshow(image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


class ClipExplorer(Explorer):
    """Retrieval, live: type a caption to see the ``k`` gallery images most like it, or pick a gallery image
    (by number) to see the ``k`` captions most like it; :meth:`show_image` takes an image of your own.

    Bad input (an empty caption, a word the text encoder never saw, an image number out of range, an image of
    the wrong size or channels) leaves a one-line ``message`` and keeps the last picture, greyed; the widget keeps
    working. Drawn with matplotlib into an ``ipywidgets.Image``: offline in JupyterLab, VS Code and Colab.
    Attributes the tests use: ``text``, ``index``, ``message``, ``image``, ``widget``, ``last`` (what was
    retrieved: ``("images", indices)`` or ``("captions", captions)``).
    """

    def __init__(self, model: CLIP, gallery: Tensor, captions: Sequence[str], caption: str = "", k: int = 5,
                 dpi: int = 90):
        import ipywidgets as widgets

        self.model, self.gallery, self.captions, self.k, self.dpi = model, gallery, list(captions), k, dpi
        self.image_features = encode_images(model, gallery)
        self.caption_features = encode_texts(model, self.captions)
        self.last: tuple[str, list] | None = None
        self.text = widgets.Text(value=caption, description="Caption:", continuous_update=False,
                                 layout=widgets.Layout(width="70%"))
        self.index = widgets.BoundedIntText(value=0, min=-10**9, max=10**9, description="Image:",
                                            layout=widgets.Layout(width="180px"))
        self.text.add_class("course-explorer-text")
        self._build("type a caption (press Enter) to retrieve the gallery images most like it, or pick an image by "
                    "number to retrieve the captions most like it", [widgets.HBox([self.text, self.index])])
        self.text.observe(lambda change: self.search_images(change["new"]), names="value")
        self.index.observe(lambda change: self.search_captions(change["new"]), names="value")
        if caption:
            self.search_images(caption)

    def _draw(self, fig) -> None:
        self.show_picture(fig, self.dpi)

    def search_images(self, caption: str) -> bool:
        """The ``k`` gallery images most like ``caption``. False (and one line) if the caption cannot be read."""
        problem = self.model.text_encoder.validate(caption)
        if problem:
            self._say(problem, ok=False)
            return False
        try:
            query = encode_texts(self.model, [" ".join(tokenize_words(caption)).lower()])[0]
        except Exception as exc:
            self._say(f"The text encoder could not read it: {describe_exception(exc)}", ok=False)
            return False
        scores = self.image_features @ query
        top = scores.topk(min(self.k, len(scores))).indices.tolist()
        use_course_style()
        fig, axes = plt.subplots(1, len(top), figsize=(1.6 * len(top), 1.9), squeeze=False)
        for ax, i in zip(axes[0], top):
            _show(ax, self.gallery[i])
            ax.set_title(f"#{i}  {float(scores[i]):.2f}", fontsize=8)
        fig.suptitle(f"images most like '{caption.strip()}'", fontsize=9)
        fig.tight_layout()
        self._draw(fig)
        self.last = ("images", top)
        self._say(f"The {len(top)} gallery images most like the caption (cosine similarity above each).", ok=True)
        return True

    def search_captions(self, index) -> bool:
        """The ``k`` captions most like gallery image ``index``."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.gallery):
            self._say(f"Image {index!r} is out of range: choose an image from 0 to {len(self.gallery) - 1}.", ok=False)
            return False
        return self._captions_for(self.gallery[int(index)], self.image_features[int(index)], f"image #{int(index)}")

    def show_image(self, image) -> bool:
        """The ``k`` captions most like an image of your own (``[3, h, w]``, values in [0, 1])."""
        c = self.model.image_encoder.config
        x, problem = validate_image(image, c.in_channels, c.image_size)
        if problem:
            self._say(problem, ok=False)
            return False
        return self._captions_for(x, encode_images(self.model, x[None])[0], "your image")

    def _captions_for(self, image: Tensor, feature: Tensor, name: str) -> bool:
        scores = self.caption_features @ feature
        top = scores.topk(min(self.k, len(scores))).indices.tolist()
        use_course_style()
        fig, (left, right) = plt.subplots(1, 2, figsize=(7.5, 2.2), gridspec_kw={"width_ratios": [1, 3]})
        _show(left, image)
        left.set_title(name, fontsize=9)
        right.barh(range(len(top)), [float(scores[i]) for i in top], color="#3a6fb0")
        right.set_yticks(range(len(top)), labels=[self.captions[i] for i in top], fontsize=8)
        right.invert_yaxis()
        right.set_xlim(-1, 1)
        right.set_xlabel("cosine similarity")
        fig.tight_layout()
        self._draw(fig)
        self.last = ("captions", [self.captions[i] for i in top])
        self._say(f"The {len(top)} captions most like {name}: '{self.captions[top[0]]}' first.", ok=True)
        return True


def clip_explorer(model: CLIP, gallery: Tensor, captions: Sequence[str], caption: str = "", **kw) -> ClipExplorer:
    """Build a :class:`ClipExplorer` (end a cell with it to show it)."""
    return ClipExplorer(model, gallery, captions, caption=caption, **kw)


def class_captions(template_split: str = "held_out") -> list[list[str]]:
    """For zero-shot digits: ``[10][templates]`` captions, class c's from every template of the split."""
    n = len(DIGIT_TEMPLATES[template_split])
    return [[digit_caption(c, t, template_split) for t in range(n)] for c in range(len(DIGIT_NAMES))]


def vocabulary() -> list[str]:
    """Every word of the training captions (what :class:`WordTextEncoder` should know)."""
    return caption_words()
