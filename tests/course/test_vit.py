"""course.vit (lesson 14): each piece checked against PyTorch or an independent computation, to a stated
tolerance; the explorer driven through its Python objects."""
from __future__ import annotations

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from course.layers import load_from_torch_encoder_layer  # noqa: E402
from course.vit import (  # noqa: E402
    MEAN_OF_HEADS, MLP, PatchEmbedding, SmallCNN, TorchViT, ViTConfig, VisionTransformer,
    add_class_token_and_positions, class_token_attention, similarity_by_distance, draw_patches, draw_position_similarity,
    image_batches, load_from_torch_vit, patchify, position_similarity, rollout_map, unpatchify,
    validate_image, validate_vit_choice, vit_attentions, vit_explorer,
)
from course.weights import WeightMismatchError  # noqa: E402

TINY = ViTConfig(image_size=12, patch_size=4, in_channels=3, num_classes=5, d_model=16, num_heads=2, num_layers=2)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- patches

@pytest.mark.parametrize("shape,p", [((2, 1, 28, 28), 7), ((3, 3, 8, 12), 4), ((1, 2, 6, 4), 2), ((2, 1, 5, 5), 1)])
def test_patchify_equals_torch_unfold(shape, p):
    # F.unfold with stride = kernel = p lists each patch's (channel, row, column) values, patches row by row.
    x = _images(*shape)
    torch.testing.assert_close(patchify(x, p), F.unfold(x, kernel_size=p, stride=p).transpose(1, 2), atol=0, rtol=0)


def test_patchify_numbers_patches_row_by_row():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    patches = patchify(x, 2)
    assert patches[0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]     # top left
    assert patches[0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]     # top right comes second
    assert patches[0, 2].tolist() == [8.0, 9.0, 12.0, 13.0]   # then the second row


def test_unpatchify_inverts_patchify():
    x = _images(2, 3, 8, 12)
    torch.testing.assert_close(unpatchify(patchify(x, 4), 4, 3, (2, 3)), x, atol=0, rtol=0)


def test_patchify_rejects_sizes_that_do_not_divide_in_one_line():
    with pytest.raises(ValueError, match="multiples of 7"):
        patchify(_images(1, 1, 28, 27), 7)
    with pytest.raises(ValueError, match=r"\[batch, channels, height, width\]"):
        patchify(_images(28, 28), 7)


def test_patch_embedding_as_linear_layer_equals_the_strided_convolution():
    torch.manual_seed(0)
    embed = PatchEmbedding(3, 4, 16)
    x = _images(2, 3, 12, 8)
    reference = F.conv2d(x, embed.proj.weight, embed.proj.bias, stride=4).flatten(2).transpose(1, 2)
    torch.testing.assert_close(embed(x, mode="conv"), reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(embed(x, mode="linear"), reference, atol=1e-5, rtol=1e-5)


def test_class_token_goes_first_and_every_token_gets_its_position():
    b, n, d = 3, 4, 5
    patches, cls, pos = _images(b, n, d, seed=1), _images(1, 1, d, seed=2), _images(1, n + 1, d, seed=3)
    out = add_class_token_and_positions(patches, cls, pos)
    assert out.shape == (b, n + 1, d)
    for i in range(b):
        torch.testing.assert_close(out[i, 0], cls[0, 0] + pos[0, 0])
        torch.testing.assert_close(out[i, 1:], patches[i] + pos[0, 1:])
    with pytest.raises(ValueError, match="pos_embedding"):
        add_class_token_and_positions(patches, cls, pos[:, :n])


# ----------------------------------------------------------------------------- the model against PyTorch's

def _pair(config: ViTConfig = TINY) -> tuple[VisionTransformer, TorchViT]:
    torch.manual_seed(0)
    theirs = TorchViT(config).eval()
    for p in theirs.parameters():  # move every parameter off its initial value, biases and norms too
        p.data += 0.1 * torch.randn_like(p)
    return load_from_torch_vit(VisionTransformer(config), theirs).eval(), theirs


def test_vit_equals_the_same_network_built_from_pytorch_modules():
    ours, theirs = _pair()
    x = _images(4, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_vit_with_attention_weights_kept_gives_the_same_logits():
    ours, theirs = _pair()
    x = _images(3, 3, 12, 12)
    with torch.no_grad():
        hidden, weights = ours.hidden(x, need_weights=True)
        torch.testing.assert_close(ours.head(hidden[:, 0]), theirs(x), atol=1e-5, rtol=1e-5)
    assert len(weights) == TINY.num_layers and weights[0].shape == (3, TINY.num_heads, 10, 10)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(3, TINY.num_heads, 10), atol=1e-5, rtol=0)


def test_vit_gradients_equal_pytorchs():
    ours, theirs = _pair()
    x, y = _images(4, 3, 12, 12), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(ours(x), y).backward()
    F.cross_entropy(theirs(x), y).backward()
    torch.testing.assert_close(ours.patch_embed.proj.weight.grad, theirs.conv.weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.pos_embedding.grad, theirs.pos_embedding.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.cls_token.grad, theirs.cls_token.grad, atol=1e-5, rtol=1e-4)


def test_each_vit_block_equals_a_torch_encoder_layer():
    ours, theirs = _pair()
    x = _images(2, 10, TINY.d_model)
    for block, layer in zip(ours.blocks, theirs.encoder.layers):
        fresh = load_from_torch_encoder_layer(type(block)(TINY.d_model, TINY.num_heads, TINY.d_ff, norm_first=True,
                                                          activation="gelu", eps=TINY.eps), layer)
        with torch.no_grad():
            torch.testing.assert_close(block(x), layer(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fresh(x), layer(x), atol=1e-5, rtol=1e-5)


def test_the_comparison_would_notice_one_wrong_weight():
    ours, theirs = _pair()
    x = _images(2, 3, 12, 12)
    with torch.no_grad():
        # one patch's position (a random change: a constant added to all of it would vanish in LayerNorm)
        ours.pos_embedding[0, 3] += 0.05 * torch.randn(TINY.d_model)
        assert (ours(x) - theirs(x)).abs().max() > 1e-4


def test_loading_from_a_different_size_names_the_parameter():
    theirs = TorchViT(ViTConfig(image_size=12, patch_size=4, in_channels=3, num_classes=5, d_model=16, num_heads=2,
                                num_layers=2, d_ff=32))
    with pytest.raises(WeightMismatchError, match="ffn.linear1.weight"):
        load_from_torch_vit(VisionTransformer(TINY), theirs)


def test_vit_refuses_images_of_the_wrong_size_in_one_line():
    model = VisionTransformer(TINY)
    with pytest.raises(ValueError, match=r"\[batch, 3, 12, 12\], got \(2, 1, 12, 12\)"):
        model(_images(2, 1, 12, 12))


def test_vit_embed_is_the_class_tokens_final_vector():
    model = VisionTransformer(TINY).eval()
    x = _images(2, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), model.hidden(x)[:, 0])
        torch.testing.assert_close(model(x), model.head(model.embed(x)))


# ----------------------------------------------------------------------------- baselines and batches

def test_mlp_learns_the_same_from_pixels_shuffled_the_same_way():
    # The MLP has no idea which pixels are neighbours: permute its first layer's inputs and the pixels alike,
    # and it computes exactly the same function.
    torch.manual_seed(0)
    mlp = MLP(in_features=16, num_classes=3, hidden=8)
    perm = torch.randperm(16)
    shuffled = MLP(in_features=16, num_classes=3, hidden=8)
    shuffled.load_state_dict(mlp.state_dict())
    with torch.no_grad():
        shuffled.net[1].weight.copy_(mlp.net[1].weight[:, perm])
    x = _images(5, 1, 4, 4)
    x_shuffled = x.flatten(1)[:, perm].reshape(5, 1, 4, 4)
    torch.testing.assert_close(shuffled(x_shuffled), mlp(x), atol=1e-6, rtol=1e-5)


def test_small_cnn_gives_one_logit_per_class_for_mnist_and_8x8_digits():
    assert SmallCNN()(_images(2, 1, 28, 28)).shape == (2, 10)
    assert SmallCNN(image_size=8, width=4)(_images(3, 1, 8, 8)).shape == (3, 10)


def test_image_batches_are_seeded_and_cover_every_image_once_per_epoch():
    images, labels = torch.arange(10.0)[:, None], torch.arange(10)
    next_batch = image_batches(images, labels, batch_size=3, seed=0)
    first_epoch = torch.cat([next_batch(s)[1] for s in range(3)])
    assert len(set(first_epoch.tolist())) == 9                # 3 batches of 3, no repeats
    assert torch.equal(next_batch(1)[1], image_batches(images, labels, 3, seed=0)(1)[1])
    assert not torch.equal(torch.cat([next_batch(s)[1] for s in range(3, 6)]), first_epoch)
    with pytest.raises(ValueError, match="batch_size"):
        image_batches(images, labels, batch_size=11)


# ----------------------------------------------------------------------------- looking inside

def test_class_token_attention_is_its_row_on_the_grid():
    att = torch.rand(2, 3, 7, 7).softmax(-1)  # 2 layers, 3 heads, class token + 2x3 patches
    maps = class_token_attention(att, (2, 3))
    assert maps.shape == (2, 3, 2, 3)
    assert maps[1, 2, 1, 0] == att[1, 2, 0, 1 + 3]           # patch (1, 0) is patch number 3
    with pytest.raises(ValueError, match="grid"):
        class_token_attention(att, (3, 3))


def _numpy_rollout(att: np.ndarray) -> np.ndarray:
    result = np.eye(att.shape[-1])
    for layer in att:
        a = 0.5 * layer.mean(0) + 0.5 * np.eye(att.shape[-1])
        a = a / a.sum(-1, keepdims=True)
        result = a @ result
    return result


def test_rollout_map_equals_a_numpy_rollout_from_the_class_token():
    att = torch.rand(3, 2, 7, 7, generator=torch.Generator().manual_seed(4)).softmax(-1)
    row = _numpy_rollout(att.double().numpy())[0, 1:]
    want = torch.from_numpy(row / row.sum()).float().reshape(2, 3)
    got = rollout_map(att, (2, 3))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert abs(float(got.sum()) - 1) < 1e-6


def test_position_similarity_is_the_cosine_between_position_vectors():
    pos = torch.randn(1, 7, 5)
    sim = position_similarity(pos, (2, 3))
    assert sim.shape == (2, 3, 2, 3)
    want = F.cosine_similarity(pos[0, 1 + 4], pos[0, 1 + 2], dim=0)   # patch (1, 1) against patch (0, 2)
    torch.testing.assert_close(sim[1, 1, 0, 2], want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sim[0, 0, 0, 0], torch.tensor(1.0), atol=1e-6, rtol=0)


def test_similarity_by_distance_averages_pairs_the_same_number_of_steps_apart():
    sim = position_similarity(torch.randn(1, 7, 5), (2, 3))
    flat = sim.reshape(6, 6)
    coords = [(i, j) for i in range(2) for j in range(3)]
    for k in (1, 2, 3):
        pairs = [flat[a, b] for a in range(6) for b in range(6)
                 if abs(coords[a][0] - coords[b][0]) + abs(coords[a][1] - coords[b][1]) == k]
        assert abs(similarity_by_distance(sim)[k] - float(torch.stack(pairs).mean())) < 1e-6
    assert sorted(similarity_by_distance(sim)) == [1, 2, 3]


def test_vit_attentions_stack_every_layer_for_every_image():
    model = VisionTransformer(TINY)
    att = vit_attentions(model, _images(4, 3, 12, 12))
    assert att.shape == (TINY.num_layers, 4, TINY.num_heads, 10, 10)


def test_pictures_draw():
    fig = draw_patches(_images(1, 28, 28), 7)
    assert len(fig.axes) == 3
    fig = draw_position_similarity(position_similarity(torch.randn(1, 17, 8), (4, 4)))
    assert len(fig.axes) == 16 + 1


# ----------------------------------------------------------------------------- the explorer

@pytest.mark.parametrize("args,words", [
    ((5, 0, 0, "class token"), "Image 5 is out of range: choose an image from 0 to 4"),
    ((-1, 0, 0, "class token"), "Image -1 is out of range"),
    ((0, 2, 0, "class token"), "Layer 2 is out of range"),
    ((0, 1, 2, "class token"), "Head 2 is out of range"),
    ((0, 1, 1.0, "class token"), "Head 1.0 is out of range"),
    ((0, 1, 0, "sideways"), "Unknown view 'sideways'"),
])
def test_validate_vit_choice_names_the_valid_range(args, words):
    assert words in validate_vit_choice(*args, num_images=5, num_layers=2, num_heads=2)
    assert validate_vit_choice(0, 1, MEAN_OF_HEADS, "rollout", 5, 2, 2) == ""


@pytest.mark.parametrize("image,words", [
    (torch.rand(3, 12, 12), ""),
    (torch.rand(1, 3, 12, 12), ""),
    (np.random.rand(3, 12, 12).astype("float32"), ""),
    (torch.rand(1, 12, 12), "1 channel(s): this model reads 3 (RGB)"),
    (torch.rand(3, 28, 28), "A 28x28 image: this model reads 12x12"),
    (torch.rand(12, 12), "this model reads one image [3, 12, 12]"),
    ([[0.0]], "not list"),
    (torch.full((3, 12, 12), float("nan")), "NaN"),
])
def test_validate_image_accepts_what_fits_and_says_why_not_in_one_line(image, words):
    x, problem = validate_image(image, 3, 12)
    if words:
        assert x is None and words in problem and "\n" not in problem
    else:
        assert problem == "" and x.shape == (3, 12, 12)


def _text(html_line: str) -> str:
    return html_line.split(">", 1)[1].rsplit("<", 1)[0].replace("&#x27;", "'")


def test_explorer_draws_and_survives_bad_input():
    pytest.importorskip("ipywidgets")
    model = VisionTransformer(TINY).eval()
    images, labels = _images(5, 3, 12, 12), torch.tensor([0, 1, 2, 3, 4])
    explorer = vit_explorer(model, images, labels, index=2)
    assert explorer.image.value and "label 2" in _text(explorer.message.value)
    first = explorer.image.value
    assert explorer.select(index=4, head=1)
    assert explorer.image.value != first and "label 4" in _text(explorer.message.value)
    picture = explorer.image.value
    for bad, words in [(dict(index=9), "Image 9 is out of range"), (dict(layer=5), "Layer 5 is out of range"),
                       (dict(head=7), "Head 7 is out of range")]:
        assert not explorer.select(**bad)
        assert words in _text(explorer.message.value) and explorer.image.value == picture
    explorer.index.value = 12                                   # typed into the box
    assert "Image 12 is out of range" in _text(explorer.message.value)
    assert explorer.index.value == 4                            # the box goes back to the image shown
    assert not explorer.show_image(torch.rand(1, 12, 12))
    assert "channel" in _text(explorer.message.value) and explorer.image.value == picture
    assert not explorer.show_image(torch.rand(3, 28, 28))
    assert "28x28" in _text(explorer.message.value)
    assert explorer.show_image(torch.rand(3, 12, 12))             # still working
    assert "the model says" in _text(explorer.message.value)
    assert explorer.select(index=1, view="rollout")
    weights, title = explorer.current()
    assert title.startswith("rollout") and abs(float(weights.sum()) - 1) < 1e-5
    assert explorer.snapshot().data == explorer.image.value


def test_explorer_head_map_is_the_class_token_row_of_that_head():
    pytest.importorskip("ipywidgets")
    model = VisionTransformer(TINY).eval()
    images = _images(3, 3, 12, 12)
    explorer = vit_explorer(model, images, index=1, layer=0, head=1)
    weights, _ = explorer.current()
    att = vit_attentions(model, images[1:2])[0, 0, 1]             # layer 0, image 0 of the batch, head 1
    torch.testing.assert_close(weights, att[0, 1:].reshape(3, 3))
