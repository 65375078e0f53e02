"""The vision transformer (lesson 14): an image cut into patches, each patch a token, then the encoder of
lessons 05-06 unchanged.

    images [b, c, h, w]
      -> patches [b, n, c*p*p]                     (:func:`patchify`, n = (h/p) * (w/p))
      -> patch embeddings [b, n, d]               (:class:`PatchEmbedding`: a linear layer, or the same
                                                   weights as a strided convolution)
      -> [class token; patches] + positions [b, n+1, d]   (:func:`add_class_token_and_positions`)
      -> num_layers x pre-norm TransformerBlock (GELU), final LayerNorm
      -> the class token's vector [b, d] -> a linear head -> logits [b, classes]

This is the ViT of Dosovitskiy et al., "An Image is Worth 16x16 Words" (2020), at toy size. The
reference: :class:`TorchViT` is the same network built from PyTorch's own modules (``nn.Conv2d``,
``nn.TransformerEncoderLayer``, ``nn.LayerNorm``); :func:`load_from_torch_vit` copies its weights into ours
and the two agree to float32 rounding (tests/course/test_vit.py).

Also here: the two baselines the lesson trains against (:class:`SmallCNN`, :class:`MLP`), the pictures
(patches, position-embedding similarity, class-token attention, rollout) and :class:`ViTExplorer`, a widget
to pick an image, a layer and a head.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course.layers import LayerNorm, TransformerBlock, torch_encoder_layer_plan
from course.models.sizes import complete_sizes
from course.plotting import use_course_style
from course.seed import step_seed
from course.utils import describe_exception, eval_mode
from course.viz import Explorer, attention_rollout, figure_png
from course.weights import MODULE_QUESTION, Step, load_plan

__all__ = [
    "patchify", "unpatchify", "PatchEmbedding", "add_class_token_and_positions", "ViTConfig", "VisionTransformer",
    "TorchViT", "vit_plan", "load_from_torch_vit", "SmallCNN", "MLP", "image_batches", "classification_loss",
    "accuracy", "predict", "vit_attentions", "class_token_attention", "rollout_map", "position_similarity",
    "similarity_by_distance",
    "draw_patches", "draw_position_similarity", "draw_attention_over_image", "validate_image",
    "validate_vit_choice", "VIT_VIEWS", "MEAN_OF_HEADS", "ViTExplorer", "vit_explorer",
]


# ---------------------------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------------------------

def _check_images(images: Tensor, patch_size: int, what: str) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{what} expects images [batch, channels, height, width], got {shape}")
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"{what}: a {h}x{w} image does not cut into {patch_size}x{patch_size} patches "
                         f"({h} and {w} must both be multiples of {patch_size})")


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping square patches and flatten each one.

    ``images [b, c, h, w] -> [b, n, c * p * p]`` with ``n = (h / p) * (w / p)``. Patches are numbered row by
    row (left to right, then top to bottom); inside a patch the values run channel by channel, then row by
    row, which is the order of a convolution's weight ``[d, c, p, p]`` flattened.
    """
    _check_images(images, patch_size, "patchify")
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)      # [b, c, rows, p, cols, p]
    x = x.permute(0, 2, 4, 1, 3, 5)                      # [b, rows, cols, c, p, p]
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(patches: Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> Tensor:
    """The inverse of :func:`patchify`: ``[b, n, c*p*p] -> [b, c, rows*p, cols*p]`` for ``grid = (rows, cols)``."""
    b, n, _ = patches.shape
    rows, cols = grid
    p = patch_size
    if n != rows * cols or patches.shape[-1] != channels * p * p:
        raise ValueError(f"unpatchify: {tuple(patches.shape)} is not {rows * cols} patches of {channels}x{p}x{p}")
    x = patches.reshape(b, rows, cols, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, rows * p, cols * p)


class PatchEmbedding(nn.Module):
    """Each patch times one matrix: ``images [b, c, h, w] -> [b, n, d_model]``.

    The weight is stored as a convolution's, ``proj.weight [d_model, c, p, p]`` with ``proj.bias [d_model]``.
    ``mode="linear"`` flattens the patches (:func:`patchify`) and multiplies by the weight flattened to
    ``[d_model, c*p*p]``; ``mode="conv"`` runs the same weight as a convolution with stride ``p`` (a kernel
    the size of a patch, moved a whole patch at a time, touches each patch exactly once). The two are
    the same function.
    """

    def __init__(self, in_channels: int, patch_size: int, d_model: int):
        super().__init__()
        self.in_channels, self.patch_size, self.d_model = in_channels, patch_size, d_model
        self.proj = nn.Conv2d(in_channels, d_model, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor, mode: str = "conv") -> Tensor:
        _check_images(images, self.patch_size, "PatchEmbedding")
        if images.shape[1] != self.in_channels:
            raise ValueError(f"PatchEmbedding expects {self.in_channels} channel(s), got {images.shape[1]}")
        if mode == "linear":
            weight = self.proj.weight.reshape(self.d_model, -1)           # [d, c*p*p]
            return patchify(images, self.patch_size) @ weight.T + self.proj.bias
        if mode == "conv":
            return self.proj(images).flatten(2).transpose(1, 2)           # [b, d, rows, cols] -> [b, n, d]
        raise ValueError(f"mode must be 'linear' or 'conv', got {mode!r}")


def add_class_token_and_positions(patch_embeddings: Tensor, cls_token: Tensor, pos_embedding: Tensor) -> Tensor:
    """Put the class token in front of the patches, then add a position vector to every token.

    ``patch_embeddings [b, n, d]``, ``cls_token [1, 1, d]``, ``pos_embedding [1, n + 1, d]`` -> ``[b, n + 1, d]``.
    Position 0 belongs to the class token, positions 1..n to the patches in :func:`patchify`'s order.
    """
    b, n, d = patch_embeddings.shape
    if cls_token.shape != (1, 1, d) or pos_embedding.shape != (1, n + 1, d):
        raise ValueError(f"for patches {tuple(patch_embeddings.shape)} expected cls_token (1, 1, {d}) and "
                         f"pos_embedding (1, {n + 1}, {d}), got {tuple(cls_token.shape)} and {tuple(pos_embedding.shape)}")
    tokens = torch.cat([cls_token.expand(b, 1, d), patch_embeddings], dim=1)
    return tokens + pos_embedding


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

@dataclass
class ViTConfig:
    """Sizes of a :class:`VisionTransformer`; ``d_ff`` defaults to ``4 * d_model``. ``eps`` is 1e-6, ViT's."""

    image_size: int = 28
    patch_size: int = 7
    in_channels: int = 1
    num_classes: int = 10
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 3
    d_ff: int | None = None
    dropout: float = 0.0
    eps: float = 1e-6

    def __post_init__(self):
        complete_sizes(self)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row: ``(rows, cols)``."""
        side = self.image_size // self.patch_size
        return side, side

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


class VisionTransformer(nn.Module):
    """``forward(images [b, c, h, w]) -> logits [b, num_classes]``.

    ``hidden(images, need_weights=False)`` gives every token's vector after the final norm ``[b, n+1, d]``
    (with ``need_weights=True`` also the attention weights, one ``[b, heads, n+1, n+1]`` per layer);
    ``embed(images)`` the class token's ``[b, d]``, the image's one vector (lesson 15 projects it).
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbedding(c.in_channels, c.patch_size, c.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.pos_embedding = nn.Parameter(torch.randn(1, c.num_patches + 1, c.d_model) * 0.02)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.num_heads, c.d_ff, norm_first=True, activation="gelu",
                             dropout=c.dropout, eps=c.eps)
            for _ in range(c.num_layers))
        self.norm = LayerNorm(c.d_model, c.eps)
        self.head = nn.Linear(c.d_model, c.num_classes) if c.num_classes else nn.Identity()

    def check_images(self, images: Tensor) -> None:
        """Raise a one-line ``ValueError`` unless ``images`` is ``[b, in_channels, image_size, image_size]``."""
        c = self.config
        want = (c.in_channels, c.image_size, c.image_size)
        if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != want:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"this ViT reads images [batch, {c.in_channels}, {c.image_size}, {c.image_size}], got {shape}")

    def tokens(self, images: Tensor) -> Tensor:
        """``images -> [b, n+1, d]``: patch embeddings, the class token in front, positions added."""
        self.check_images(images)
        x = add_class_token_and_positions(self.patch_embed(images), self.cls_token, self.pos_embedding)
        return self.dropout(x)

    def hidden(self, images: Tensor, need_weights: bool = False):
        x = self.tokens(images)
        weights = []
        for block in self.blocks:
            if need_weights:
                x, w = block(x, need_weights=True)
                weights.append(w)
            else:
                x = block(x)
        x = self.norm(x)
        return (x, weights) if need_weights else x

    def embed(self, images: Tensor) -> Tensor:
        """The class token's final vector: ``[b, c, h, w] -> [b, d_model]``."""
        return self.hidden(images)[:, 0]

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.embed(images))


class TorchViT(nn.Module):
    """The same network from PyTorch's own modules: ``nn.Conv2d`` patches, ``nn.TransformerEncoder`` of
    pre-norm GELU ``nn.TransformerEncoderLayer``s, ``nn.LayerNorm``, ``nn.Linear``. The reference for
    :class:`VisionTransformer` (same ``forward``; copy weights with :func:`load_from_torch_vit`)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        c = self.config = config
        self.conv = nn.Conv2d(c.in_channels, c.d_model, c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, c.d_model) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, c.num_patches + 1, c.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(c.d_model, c.num_heads, c.d_ff, dropout=0.0, activation="gelu",
                                           layer_norm_eps=c.eps, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d_model, eps=c.eps)
        self.head = nn.Linear(c.d_model, c.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.conv(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.norm(self.encoder(x))[:, 0])


def vit_plan(num_layers: int) -> list[Step]:
    """How a :class:`VisionTransformer`'s parameters come from a :class:`TorchViT`'s (a weight plan)."""
    plan = [Step("patch_embed.proj.weight", "conv.weight"), Step("patch_embed.proj.bias", "conv.bias"),
            Step("cls_token", "cls_token"), Step("pos_embedding", "pos_embedding"),
            Step("norm.weight", "norm.weight"), Step("norm.bias", "norm.bias"),
            Step("head.weight", "head.weight"), Step("head.bias", "head.bias")]
    for i in range(num_layers):
        plan += torch_encoder_layer_plan(f"blocks.{i}.", f"encoder.layers.{i}.")
    return plan


def load_from_torch_vit(ours: VisionTransformer, theirs: TorchViT) -> VisionTransformer:
    """Copy :class:`TorchViT`'s weights into our ViT (in place; returns it). A parameter that does not fit
    raises :class:`course.weights.WeightMismatchError` naming it and both shapes."""
    return load_plan(ours, theirs.state_dict(), vit_plan(ours.config.num_layers), question=MODULE_QUESTION)


# ---------------------------------------------------------------------------------------------
# Baselines: what a ViT is measured against
# ---------------------------------------------------------------------------------------------

class SmallCNN(nn.Module):
    """Two 3x3 convolutions (each ReLU then 2x2 max-pooling) and a linear layer: ``[b, c, s, s] -> [b, classes]``.

    Its built-in assumptions (inductive biases): a pixel matters through its neighbours (small kernels), and
    a pattern means the same wherever it appears (one kernel slides over the whole image).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        side = image_size // 4
        self.head = nn.Linear(2 * width * side * side, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


class MLP(nn.Module):
    """The pixels as one flat vector, one hidden layer: ``[b, c, s, s] -> [b, classes]``. It assumes nothing
    about images: shuffle every image's pixels the same way and it learns just as well."""

    def __init__(self, in_features: int = 28 * 28, num_classes: int = 10, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


# ---------------------------------------------------------------------------------------------
# Training and measuring
# ---------------------------------------------------------------------------------------------

def image_batches(images: Tensor, labels: Tensor, batch_size: int, seed: int = 0) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``next_batch(step) -> (images [batch_size, ...], labels [batch_size])`` for :func:`course.train.train`:
    each epoch a seeded shuffle of the whole set, so every image is seen once per epoch and the same step
    always gives the same batch."""
    n = len(labels)
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be between 1 and {n}, got {batch_size}")
    per_epoch = n // batch_size
    orders: dict[int, Tensor] = {}

    def next_batch(step: int) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(step, per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, epoch)))
        idx = orders[epoch][i * batch_size:(i + 1) * batch_size]
        return images[idx], labels[idx]

    return next_batch


def classification_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Cross-entropy of ``model(images)`` against the labels."""
    images, labels = batch
    return F.cross_entropy(model(images), labels)


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """The model's probabilities ``[n, classes]``, in eval mode, on the model's device, returned on the CPU."""
    device = next(model.parameters()).device
    with eval_mode(model):
        return torch.cat([model(images[i:i + batch_size].to(device)).softmax(-1).cpu()
                          for i in range(0, len(images), batch_size)])


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """The share of ``images`` whose most probable class is the label."""
    return float((predict(model, images, batch_size).argmax(-1) == labels).float().mean())


# ---------------------------------------------------------------------------------------------
# Looking inside
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def vit_attentions(model: VisionTransformer, images: Tensor) -> Tensor:
    """Every layer's attention weights: ``images [b, ...] -> [layers, b, heads, n+1, n+1]`` (on the CPU)."""
    device = next(model.parameters()).device
    with eval_mode(model):
        _, weights = model.hidden(images.to(device), need_weights=True)
    return torch.stack(weights).cpu()


def class_token_attention(attentions: Tensor, grid: tuple[int, int]) -> Tensor:
    """Where the class token looks, as pictures: ``[..., n+1, n+1] -> [..., rows, cols]`` (its row, without
    its own column, laid out on the patch grid). The values are attention weights; they sum to 1 minus
    what the class token gives itself."""
    rows, cols = grid
    if attentions.shape[-1] != rows * cols + 1 or attentions.shape[-2] != rows * cols + 1:
        raise ValueError(f"attention over {attentions.shape[-1]} tokens does not fit a {rows}x{cols} grid plus a class token")
    return attentions[..., 0, 1:].reshape(*attentions.shape[:-2], rows, cols)


def rollout_map(attentions: Tensor, grid: tuple[int, int]) -> Tensor:
    """Attention rollout (:func:`course.viz.attention_rollout`, residual counted) from the class token to the
    patches: ``attentions [layers, heads, n+1, n+1]`` of one image -> ``[rows, cols]`` summing to 1."""
    if attentions.dim() != 4:
        raise ValueError(f"rollout_map expects one image's attentions [layers, heads, n+1, n+1], got {tuple(attentions.shape)}")
    row = attention_rollout(attentions, add_residual=True)[0, 1:]
    rows, cols = grid
    if row.numel() != rows * cols:
        raise ValueError(f"{row.numel()} patches do not fill a {rows}x{cols} grid")
    return (row / row.sum()).reshape(rows, cols)


def position_similarity(pos_embedding: Tensor, grid: tuple[int, int]) -> Tensor:
    """Cosine similarity between the patches' position vectors, laid out as pictures.

    ``pos_embedding [1, n+1, d]`` (the class token's position first, left out) or ``[n, d]`` ->
    ``[rows, cols, rows, cols]``: entry ``[i, j]`` is a ``rows x cols`` picture of how similar patch
    ``(i, j)``'s position vector is to every other patch's.
    """
    rows, cols = grid
    pos = pos_embedding.detach().float()
    if pos.dim() == 3:
        pos = pos[0, 1:]
    if pos.shape[0] != rows * cols:
        raise ValueError(f"{pos.shape[0]} position vectors do not fill a {rows}x{cols} grid")
    unit = F.normalize(pos, dim=-1)
    return (unit @ unit.T).reshape(rows, cols, rows, cols)


def similarity_by_distance(similarity: Tensor) -> dict[int, float]:
    """Mean of :func:`position_similarity` over all pairs of patches that lie ``k`` steps apart on the grid
    (rows plus columns, k >= 1): ``[rows, cols, rows, cols] -> {k: mean cosine similarity}``. Position vectors
    that have learned the 2-D layout are more alike the closer their patches are."""
    rows, cols = similarity.shape[:2]
    r = torch.arange(rows)[:, None].expand(rows, cols).reshape(-1)
    c = torch.arange(cols)[None, :].expand(rows, cols).reshape(-1)
    distance = (r[:, None] - r[None, :]).abs() + (c[:, None] - c[None, :]).abs()     # [n, n]
    flat = similarity.reshape(rows * cols, rows * cols)
    return {int(k): float(flat[distance == k].mean()) for k in distance.unique().tolist() if k > 0}


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------

def _show(ax, image: Tensor, cmap: str = "gray") -> None:
    img = image.detach().float().cpu()
    if img.dim() == 3 and img.shape[0] == 1:
        img = img[0]
    if img.dim() == 3:
        img = img.permute(1, 2, 0).clamp(0, 1)
    ax.imshow(img.numpy(), cmap=cmap if img.dim() == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def draw_patches(image: Tensor, patch_size: int, title: str = ""):
    """Three panels: one image ``[c, h, w]`` with its patch grid; the patches pulled apart and numbered in
    :func:`patchify`'s order; the flattened patches stacked as the matrix ``[n, c*p*p]`` the model reads.
    Returns the figure."""
    use_course_style()
    c, h, w = image.shape
    p = patch_size
    rows, cols = h // p, w // p
    patches = patchify(image[None], p)[0]                             # [n, c*p*p]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1, 1.15, 1.6]})
    _show(axes[0], image)
    for k in range(1, rows):
        axes[0].axhline(k * p - 0.5, color="#d62728", lw=1)
    for k in range(1, cols):
        axes[0].axvline(k * p - 0.5, color="#d62728", lw=1)
    axes[0].set_title(title or f"{h}x{w} image, {p}x{p} patches", fontsize=9)
    gap = max(1, p // 3)
    apart = torch.full((c, rows * (p + gap) - gap, cols * (p + gap) - gap), 0.35)   # grey between patches
    tiles = unpatchify(patches[None], p, c, (rows, cols))[0]
    for i in range(rows):
        for j in range(cols):
            apart[:, i * (p + gap):i * (p + gap) + p, j * (p + gap):j * (p + gap) + p] = tiles[:, i * p:(i + 1) * p,
                                                                                               j * p:(j + 1) * p]
            if rows * cols <= 25:
                axes[1].text(j * (p + gap), i * (p + gap), str(i * cols + j), color="#ffcc00", fontsize=7, va="top")
    _show(axes[1], apart)
    axes[1].set_title(f"{rows * cols} patches, numbered row by row", fontsize=9)
    axes[2].imshow(patches.numpy(), aspect="auto", cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[2].grid(False)
    axes[2].set_ylabel("patch")
    axes[2].set_xlabel(f"its {c * p * p} values, flattened")
    axes[2].set_title(f"the model's input: [{rows * cols}, {c * p * p}]", fontsize=9)
    fig.tight_layout()
    return fig


def draw_position_similarity(similarity: Tensor, title: str = "cosine similarity of position embeddings"):
    """``[rows, cols, rows, cols]`` as a grid of small pictures: tile ``(i, j)`` shows how similar patch
    ``(i, j)``'s position vector is to every patch's. Returns the figure."""
    use_course_style()
    rows, cols = similarity.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 0.8, 1.3 * rows), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            im = ax.imshow(similarity[i, j].numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
            ax.plot(j, i, marker="s", markersize=4, markerfacecolor="none", markeredgecolor="black")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=axes, fraction=0.04, pad=0.03)
    return fig


def draw_attention_over_image(ax, image: Tensor, weights: Tensor, title: str = "", alpha: float = 0.6) -> None:
    """The image in grey with a ``[rows, cols]`` map of weights laid over it (each cell one patch)."""
    img = image.detach().float().cpu()
    grey = img.mean(0) if img.dim() == 3 else img
    h, w = grey.shape
    ax.imshow(grey.numpy(), cmap="gray", vmin=0, vmax=1)
    top = float(weights.max()) or 1.0
    ax.imshow(weights.detach().float().cpu().numpy(), cmap="inferno", alpha=alpha, vmin=0, vmax=top,
              extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=9)


# ---------------------------------------------------------------------------------------------
# The explorer: pick an image, a layer and a head
# ---------------------------------------------------------------------------------------------

VIT_VIEWS = ("class token", "rollout")
MEAN_OF_HEADS = -1


def validate_image(image, channels: int, size: int) -> tuple[Tensor | None, str]:
    """A learner's image as ``[channels, size, size]`` float, or ``(None, one-line message)``.

    Accepts ``[size, size]`` for one channel, ``[channels, size, size]`` and ``[1, channels, size, size]``;
    a numpy array becomes a tensor.
    """
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, Tensor):
        return None, f"Give an image as a tensor [{channels}, {size}, {size}], not {type(image).__name__}."
    x = image.detach().float().cpu()
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 2 and channels == 1:
        x = x[None]
    if x.dim() != 3:
        return None, f"An image of shape {tuple(image.shape)}: this model reads one image [{channels}, {size}, {size}]."
    if x.shape[0] != channels:
        return None, (f"An image with {x.shape[0]} channel(s): this model reads {channels} "
                      f"({'grey' if channels == 1 else 'RGB'}), shape [{channels}, {size}, {size}].")
    if tuple(x.shape[1:]) != (size, size):
        return None, f"A {x.shape[1]}x{x.shape[2]} image: this model reads {size}x{size} pixels; resize it first."
    if not torch.isfinite(x).all():
        return None, "The image holds NaN or inf: give pixel values between 0 and 1."
    return x, ""


def validate_vit_choice(index, layer, head, view: str, num_images: int, num_layers: int, num_heads: int) -> str:
    """'' if the choice can be drawn, else a one-line message naming the valid range."""
    def bad_int(x) -> bool:
        return isinstance(x, bool) or not isinstance(x, (int, np.integer))

    if view not in VIT_VIEWS:
        return f"Unknown view {view!r}: choose one of {', '.join(VIT_VIEWS)}."
    if bad_int(index) or not 0 <= index < num_images:
        return f"Image {index!r} is out of range: choose an image from 0 to {num_images - 1}."
    if bad_int(layer) or not 0 <= layer < num_layers:
        return f"Layer {layer!r} is out of range: this model has layers 0 to {num_layers - 1}."
    if bad_int(head) or not (head == MEAN_OF_HEADS or 0 <= head < num_heads):
        return f"Head {head!r} is out of range: this model has heads 0 to {num_heads - 1} (or -1, their mean)."
    return ""


class ViTExplorer(Explorer):
    """Where a trained ViT's class token looks: pick an image, a layer and a head (or their mean), or the
    rollout through the layers; or give it an image of your own with :meth:`show_image`.

    Draws with matplotlib into an ``ipywidgets.Image`` (no JavaScript beyond ipywidgets: works offline in
    JupyterLab, VS Code and Colab). Bad input (an image index, layer or head out of range, an image of the
    wrong size or channels) leaves a one-line ``message`` and keeps the last picture, greyed. Attributes the tests
    use: ``index``, ``layer``, ``head``, ``view``, ``message``, ``image``, ``widget``, ``current_image``,
    ``attentions`` (of the current image, ``[layers, heads, n+1, n+1]``).
    """

    def __init__(self, model: VisionTransformer, images: Tensor, labels: Tensor | None = None,
                 class_names: Sequence[str] | None = None, index: int = 0, layer: int | None = None,
                 head: int = MEAN_OF_HEADS, view: str = "class token", dpi: int = 80):
        import ipywidgets as widgets

        self.model, self.images, self.labels, self.dpi = model, images, labels, dpi
        c = model.config
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(c.num_classes)]
        self.num_layers, self.num_heads = c.num_layers, c.num_heads
        self.current_image: Tensor | None = None
        self._shown = 0  # the index of the image drawn (the box may hold a refused one for a moment)
        self.current_label: int | None = None
        self.attentions: Tensor | None = None
        self.probabilities: Tensor | None = None
        self._busy = False
        self.index = widgets.BoundedIntText(value=0, min=-10**9, max=10**9, description="Image:",
                                            layout=widgets.Layout(width="180px"))
        self.layer = widgets.Dropdown(options=[(f"layer {i}", i) for i in range(self.num_layers)], value=0,
                                      description="Layer:")
        self.head = widgets.Dropdown(options=[(f"head {h}", h) for h in range(self.num_heads)]
                                     + [("mean of heads", MEAN_OF_HEADS)], value=MEAN_OF_HEADS, description="Head:")
        self.view = widgets.ToggleButtons(options=list(VIT_VIEWS), value="class token", description="View:")
        self._build("pick a test image (its number), a layer and a head, or the rollout through the layers, to see "
                    "where the class token looks over the image's patches", [widgets.HBox([self.index, self.layer, self.head]),
                                                                             self.view])
        self.index.observe(lambda change: self._on_index(change["new"]), names="value")
        for control in (self.layer, self.head, self.view):
            control.observe(lambda change: self.redraw(), names="value")
        self.select(index=index, layer=self.num_layers - 1 if layer is None else layer, head=head, view=view)

    def _on_index(self, value) -> None:
        if self._busy or self.select(index=value):
            return
        self._busy = True  # refused: the box goes back to the image still shown, the message stays
        try:
            self.index.value = self._shown
        finally:
            self._busy = False

    def _run(self, image: Tensor) -> None:
        self.attentions = vit_attentions(self.model, image[None])[:, 0]
        self.probabilities = predict(self.model, image[None])[0]
        self.current_image = image

    def select(self, index=None, layer=None, head=None, view=None) -> bool:
        """Choose what to draw from code; a choice out of range gives a one-line message (nothing changes)."""
        shown = self.index.value if index is None else index
        new = (shown, self.layer.value if layer is None else layer, self.head.value if head is None else head,
               self.view.value if view is None else view)
        problem = validate_vit_choice(new[0], new[1], new[2], new[3], len(self.images), self.num_layers, self.num_heads)
        if problem:
            self._say(problem, ok=False)
            return False
        try:
            if index is not None or self.current_image is None:
                self._run(self.images[int(new[0])])
                self.current_label = None if self.labels is None else int(self.labels[int(new[0])])
                self._shown = int(new[0])
        except Exception as exc:  # the model may refuse the image: one line, never a traceback
            self._say(f"The model could not run: {describe_exception(exc)}", ok=False)
            return False
        self._busy = True
        try:
            self.index.value, self.layer.value, self.head.value, self.view.value = int(new[0]), new[1], new[2], new[3]
        finally:
            self._busy = False
        return self.redraw()

    def show_image(self, image, label: int | None = None) -> bool:
        """Draw an image of your own ``[c, h, w]`` (or ``[h, w]`` for one channel). One line if it does not fit."""
        c = self.model.config
        x, problem = validate_image(image, c.in_channels, c.image_size)
        if problem:
            self._say(problem, ok=False)
            return False
        try:
            self._run(x)
        except Exception as exc:
            self._say(f"The model could not run: {describe_exception(exc)}", ok=False)
            return False
        self.current_label = label
        return self.redraw()

    def current(self) -> tuple[Tensor, str]:
        """The map being drawn ``[rows, cols]`` and its title."""
        grid, layer, head = self.model.config.grid, self.layer.value, self.head.value
        if self.view.value == "rollout":
            return rollout_map(self.attentions[:layer + 1], grid), f"rollout through layer {layer}"
        maps = class_token_attention(self.attentions[layer], grid)      # [heads, rows, cols]
        if head == MEAN_OF_HEADS:
            return maps.mean(0), f"layer {layer}, mean of heads"
        return maps[head], f"layer {layer}, head {head}"

    def redraw(self) -> bool:
        if self._busy or self.attentions is None:
            return False
        problem = validate_vit_choice(self._shown, self.layer.value, self.head.value, self.view.value,
                                      len(self.images), self.num_layers, self.num_heads)
        if not self.draw_unless(problem, self._render):
            return False
        guess = int(self.probabilities.argmax())
        truth = "" if self.current_label is None else f"label {self.class_names[self.current_label]}, "
        self._say(f"{truth}the model says {self.class_names[guess]} (probability {float(self.probabilities[guess]):.2f}).",
                  ok=True)
        return True

    def figure(self):
        """The current picture as a matplotlib figure: the image, where the class token looks over it, and the
        map alone with its values."""
        use_course_style()
        weights, title = self.current()
        fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.0))
        _show(axes[0], self.current_image)
        axes[0].set_title("image", fontsize=9)
        draw_attention_over_image(axes[1], self.current_image, weights, title)
        im = axes[2].imshow(weights.numpy(), cmap="inferno", vmin=0)
        axes[2].set_xticks([])
        axes[2].set_yticks([])
        axes[2].grid(False)
        axes[2].set_title("weight per patch", fontsize=9)
        fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
        fig.tight_layout()
        return fig

    def _render(self) -> bytes:
        return figure_png(self.figure(), self.dpi)


def vit_explorer(model: VisionTransformer, images: Tensor, labels: Tensor | None = None, **kw) -> ViTExplorer:
    """Build a :class:`ViTExplorer` (end a cell with it to show it)."""
    return ViTExplorer(model, images, labels, **kw)
