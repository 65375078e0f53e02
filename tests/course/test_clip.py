"""course.clip (lesson 15): the loss against an independent computation, the text encoders against the course's
BERT and sentence-transformers' pooling, batches, zero-shot, recall@k against loops, and the explorer."""
from __future__ import annotations

import itertools
import math

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from course.clip import (  # noqa: E402
    CLIP, FrozenSentenceEncoder, MAX_LOGIT_SCALE, WordTextEncoder, captioned_digits, captioned_shapes, class_captions,
    clip_batches, clip_explorer, clip_logits, clip_loss, clip_step_loss, join, recall_at_k, recall_chance,
    shape_combinations, vocabulary, zero_shot_accuracy, zero_shot_classify, zero_shot_shapes,
)
from course.data.images import DIGIT_TEMPLATES, shape_dataset  # noqa: E402
from course.mlm import mean_pool  # noqa: E402
from course.vit import ViTConfig, VisionTransformer  # noqa: E402

TINY_VIT = ViTConfig(image_size=28, patch_size=7, in_channels=3, num_classes=0, d_model=16, num_heads=2, num_layers=1)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the loss

def _loss_by_hand(images, texts, scale):
    """The CLIP paper's pseudo-code, float64, with the log-softmax written out element by element."""
    i = F.normalize(images.double(), dim=-1)
    t = F.normalize(texts.double(), dim=-1)
    logits = (i @ t.T) * min(math.exp(scale), MAX_LOGIT_SCALE)
    b = len(logits)
    rows = -sum(logits[k, k] - torch.logsumexp(logits[k], 0) for k in range(b)) / b
    cols = -sum(logits[k, k] - torch.logsumexp(logits[:, k], 0) for k in range(b)) / b
    return float((rows + cols) / 2)


@pytest.mark.parametrize("b,e,scale", [(4, 3, math.log(1 / 0.07)), (7, 5, 1.0), (5, 8, 6.0), (1, 4, 2.0)])
def test_clip_loss_equals_a_hand_computation(b, e, scale):
    images, texts = _randn(b, e, seed=1) * 3, _randn(b, e, seed=2) * 0.5
    got = clip_loss(images, texts, torch.tensor(scale))
    assert abs(float(got) - _loss_by_hand(images, texts, scale)) < 1e-5


def test_clip_loss_is_symmetric_and_small_for_matching_pairs():
    images, texts = _randn(6, 4, seed=3), _randn(6, 4, seed=4)
    scale = torch.tensor(math.log(1 / 0.07))
    torch.testing.assert_close(clip_loss(images, texts, scale), clip_loss(texts, images, scale))
    assert float(clip_loss(images, images * 2, torch.tensor(math.log(100.0)))) < 0.01
    assert abs(float(clip_loss(images, texts, torch.tensor(-50.0))) - math.log(6)) < 1e-4   # scale ~ 0: chance


def test_the_scale_is_clamped_at_100_and_learns():
    images, texts = _randn(3, 4, seed=5), _randn(3, 4, seed=6)
    cosine = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    torch.testing.assert_close(clip_logits(images, texts, torch.tensor(10.0)), 100 * cosine)
    scale = torch.tensor(1.0, requires_grad=True)
    clip_loss(images, texts, scale).backward()
    assert scale.grad is not None and scale.grad != 0


# ----------------------------------------------------------------------------- text encoders

def test_word_text_encoder_is_the_course_bert_mean_pooled():
    torch.manual_seed(0)
    text = WordTextEncoder(vocabulary(), d_model=16, num_heads=2, num_layers=1)
    captions = ["a photo of the digit seven", "a red circle on the left"]
    ids, mask = text.tokenizer.batch(captions)
    want = mean_pool(text.encoder(ids, mask), mask)
    torch.testing.assert_close(text(captions), want)
    assert text(captions[:1]).shape == (1, 16)
    torch.testing.assert_close(text(captions[:1])[0], want[0], atol=1e-5, rtol=1e-5)  # padding changes nothing


def test_word_text_encoder_says_which_words_it_never_saw():
    text = WordTextEncoder(vocabulary(), d_model=16, num_heads=2, num_layers=1)
    assert text.validate("a photo of the digit seven") == ""
    assert "Unknown word(s) 'numeral'" in text.validate("a photo of the numeral seven")
    assert "empty" in text.validate("  ")


def test_frozen_sentence_encoder_gives_sentence_transformers_vectors_and_never_trains():
    from course.pretrained import load_pretrained_bert, sentence_embeddings

    real = load_pretrained_bert("minilm")
    if real is None:
        pytest.skip("all-MiniLM-L6-v2 is not installed")
    frozen = FrozenSentenceEncoder(real.ours, real.tokenizer)
    captions = ["a photo of the digit seven", "a red circle on the left", "a photo of the digit seven"]
    want = sentence_embeddings(real.ours, real.tokenizer, captions, normalize=False)
    torch.testing.assert_close(frozen(captions), want, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.encoder.training


# ----------------------------------------------------------------------------- data and batches

def _data():
    digits = captioned_digits(torch.rand(30, 1, 28, 28), torch.arange(30) % 10)
    images, scenes = shape_dataset(40, seed=0)
    return join(digits, captioned_shapes(images, scenes))


def test_small_digits_are_scaled_up_to_the_shapes_size():
    data = captioned_digits(torch.ones(2, 1, 8, 8), torch.tensor([3, 4]))
    assert data.images.shape == (2, 3, 28, 28) and abs(float(data.images.min()) - 1.0) < 1e-6
    assert data.caption(1) == "a photo of the digit four"


def test_a_batch_never_holds_two_images_with_the_same_meaning():
    data = _data()
    next_batch = clip_batches(data, batch_size=12, seed=0)
    images, captions = next_batch(3)
    assert images.shape == (12, 3, 28, 28) and len(set(captions)) == 12
    index = [next(i for i in range(len(data)) if torch.equal(data.images[i], img)) for img in images]
    assert len({data.meaning[i] for i in index}) == 12
    assert captions == next_batch(3)[1]                      # the same step gives the same batch
    digit_captions = [c for c in captions if "circle" not in c and "square" not in c and "triangle" not in c]
    held_out_words = {"picture of the digit", "photo of the number"}
    assert not any(h in c for c in digit_captions for h in held_out_words)
    with pytest.raises(ValueError, match="different meanings"):
        clip_batches(data, batch_size=1000)


def test_one_training_step_lowers_the_loss_of_that_batch():
    torch.manual_seed(0)
    model = CLIP(VisionTransformer(TINY_VIT), WordTextEncoder(vocabulary(), d_model=16, num_heads=2), embed_dim=8)
    batch = clip_batches(_data(), batch_size=8, seed=0)(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = clip_step_loss(model, batch)
    before.backward()
    optimiser.step()
    assert float(clip_step_loss(model, batch).detach()) < float(before.detach())
    torch.testing.assert_close(clip_step_loss(model, batch), F.cross_entropy(
        model(*batch), torch.arange(8)) / 2 + F.cross_entropy(model(*batch).T, torch.arange(8)) / 2)


# ----------------------------------------------------------------------------- zero-shot and retrieval

def test_zero_shot_classify_ensembles_unit_caption_vectors():
    images, texts = _randn(20, 5, seed=7), _randn(4, 3, 5, seed=8) * torch.rand(4, 3, 1) * 3
    want = []
    for img in images:
        scores = []
        for c in range(4):
            mean = sum(t / t.norm() for t in texts[c]) / 3
            scores.append(float(img @ mean / (img.norm() * mean.norm())))
        want.append(max(range(4), key=lambda k: scores[k]))
    assert zero_shot_classify(images, texts).tolist() == want
    with pytest.raises(ValueError, match="templates"):
        zero_shot_classify(images, texts[:, 0])


def test_zero_shot_accuracy_of_a_model_is_at_chance_when_untrained_and_uses_every_template():
    torch.manual_seed(0)
    model = CLIP(VisionTransformer(TINY_VIT), WordTextEncoder(vocabulary(), d_model=16, num_heads=2), embed_dim=8)
    captions = class_captions("held_out")
    assert len(captions) == 10 and len(captions[0]) == len(DIGIT_TEMPLATES["held_out"])
    accuracy = zero_shot_accuracy(model, torch.rand(50, 3, 28, 28), torch.arange(50) % 10, captions)
    assert 0.0 <= accuracy <= 0.4


class _ByCaption(torch.nn.Module):
    """A stand-in CLIP whose image and caption vectors are one-hot (colour, shape, position) codes, so zero-shot
    answers are known: the images carry their code in their first pixels."""

    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))
        self.image_proj = torch.nn.Linear(1, 48)
        self.combos = shape_combinations()

    def encode_image(self, images):
        return F.one_hot(images[:, 0, 0, 0].long(), 48).float()

    def encode_text(self, captions):
        words = [c.split() for c in captions]
        return F.one_hot(torch.tensor([next(i for i, (col, sh, pos) in enumerate(self.combos)
                                            if col in w and sh in w and pos in w) for w in words]), 48).float()


def test_zero_shot_shapes_scores_the_whole_caption_and_each_attribute():
    from course.data.images import ShapeScene
    model, combos = _ByCaption(), shape_combinations()
    scenes = [ShapeScene("red", "circle", "left"), ShapeScene("blue", "square", "top")]
    images = torch.zeros(2, 3, 28, 28)
    images[0, 0, 0, 0] = combos.index(("red", "circle", "left"))
    images[1, 0, 0, 0] = combos.index(("blue", "triangle", "top"))     # the model sees the wrong shape
    got = zero_shot_shapes(model, images, scenes)
    assert got == {"all": 0.5, "colour": 1.0, "shape": 0.5, "position": 1.0, "chance": 1 / 48}


def _recall_by_loops(similarity, k, matches):
    found = 0
    for q in range(similarity.shape[0]):
        right = [j for j in range(similarity.shape[1]) if matches[q, j]]
        best = max(similarity[q, j] for j in right)
        rank = sum(1 for j in range(similarity.shape[1]) if not matches[q, j] and similarity[q, j] > best)
        found += rank < k
    return found / similarity.shape[0]


@pytest.mark.parametrize("k", [1, 2, 5])
def test_recall_at_k_equals_loops_with_several_right_items(k):
    similarity = _randn(8, 10, seed=k).round(decimals=1)       # rounded: ties happen
    matches = torch.zeros(8, 10, dtype=torch.bool)
    matches[torch.arange(8), torch.arange(8)] = True
    matches[0, 9] = matches[3, 8] = True
    assert abs(float(recall_at_k(similarity, k, matches)) - _recall_by_loops(similarity, k, matches)) < 1e-6
    diagonal = _randn(6, 6, seed=9)
    assert abs(float(recall_at_k(diagonal, k)) - _recall_by_loops(diagonal, k, torch.eye(6, dtype=torch.bool))) < 1e-6


def test_recall_chance_is_the_exact_share_of_random_rankings():
    matches = torch.tensor([[True, False, False, False], [True, True, False, False]])
    for k in (1, 2):
        shares = []
        for row in matches:
            hits = [any(row[list(order)[:k]]) for order in itertools.permutations(range(4))]
            shares.append(sum(hits) / len(hits))
        assert abs(recall_chance(matches, k) - sum(shares) / 2) < 1e-9


# ----------------------------------------------------------------------------- the explorer

def _text(html_line: str) -> str:
    return html_line.split(">", 1)[1].rsplit("<", 1)[0].replace("&#x27;", "'")


def test_explorer_retrieves_and_survives_bad_input():
    pytest.importorskip("ipywidgets")
    torch.manual_seed(0)
    model = CLIP(VisionTransformer(TINY_VIT), WordTextEncoder(vocabulary(), d_model=16, num_heads=2), embed_dim=8)
    gallery = torch.rand(7, 3, 28, 28)
    captions = ["a photo of the digit seven", "a red circle on the left", "a handwritten two"]
    explorer = clip_explorer(model, gallery, captions, caption="a photo of the digit seven", k=3)
    assert explorer.last[0] == "images" and len(explorer.last[1]) == 3 and explorer.image.value
    picture = explorer.image.value
    for caption, words in [("", "empty"), ("a photo of the numeral seven", "Unknown word(s) 'numeral'")]:
        assert not explorer.search_images(caption)
        assert words in _text(explorer.message.value) and explorer.image.value == picture
    explorer.index.value = 7
    assert "Image 7 is out of range: choose an image from 0 to 6" in _text(explorer.message.value)
    assert not explorer.show_image(torch.rand(1, 28, 28))
    assert "channel" in _text(explorer.message.value)
    assert not explorer.show_image(torch.rand(3, 32, 32))
    assert "32x32" in _text(explorer.message.value) and explorer.image.value == picture
    assert explorer.search_captions(2) and explorer.last[0] == "captions"
    assert sorted(explorer.last[1]) == sorted(captions)
    assert explorer.show_image(torch.rand(3, 28, 28))
    assert explorer.snapshot().data == explorer.image.value
