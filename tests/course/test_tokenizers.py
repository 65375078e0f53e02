"""Character, word (plain and with BERT's special tokens) and byte-pair tokenisers, their common interface,
and the embedding lookup as a one-hot product."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course.data import stdlib_corpus
from course.data.sentences import grammar_vocabulary
from course.seed import seed_everything
from course.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    SpecialWordTokenizer,
    Tokenizer,
    WordTokenizer,
    get_pair_counts,
    merge,
    most_frequent_pair,
    one_hot_embedding,
    tokenization_report,
    train_bpe_plain,
)

# Strings a byte-level tokenizer must round-trip exactly: accents (composed and decomposed),
# emoji (4-byte UTF-8, with modifiers and joiners), other scripts, control characters, spacing.
AWKWARD_STRINGS = [
    "",
    "a",
    "hello world",
    "café naïve façade",
    "cafe\u0301",                      # e + combining acute accent
    "😀 🤖👍🏽 👩‍👩‍👧",
    "日本語のテキスト",
    "Ελληνικά και русский",
    "עברית ومرحبا",
    "tabs\tand\nnewlines\r\n  indented",
    "    \n\n   ",
    "x = [1, 2, 3]  # ¿qué? €100 — “quotes”",
    "\x00\x01 nul and control",
    "aaaaaaaaaaaaaaaaaaaaaaaa",
    "１２３ ½ ² ⅷ",
]


@pytest.fixture(scope="module")
def corpus() -> str:
    return stdlib_corpus()


@pytest.fixture(scope="module")
def bpe(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus[:60_000], 400)


# --- characters -------------------------------------------------------------------------------
def test_char_tokenizer_round_trips_its_training_text():
    text = "hello, world\n"
    tok = CharTokenizer.fit(text)
    assert tok.vocab_size == len(set(text))
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("\n") == [0]  # ids follow sorted character order


def test_char_tokenizer_names_unknown_characters_in_its_error():
    tok = CharTokenizer.fit("abc")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("abz")


def test_char_tokenizer_with_unk_maps_unknown_characters_to_id_zero():
    tok = CharTokenizer.fit("abc", unk=True)
    assert tok.vocab_size == 4
    ids = tok.encode("azb")
    assert ids[1] == 0 and ids[0] != 0
    assert tok.decode(ids) == "a\ufffdb"


def test_char_tokenizer_rejects_out_of_range_ids_and_empty_text():
    tok = CharTokenizer.fit("abc")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([3])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.fit("")


def test_decode_accepts_a_tensor_of_ids():
    tok = CharTokenizer.fit("abc")
    assert tok.decode(torch.tensor([2, 1, 0])) == "cba"


# --- words ------------------------------------------------------------------------------------
def test_word_tokenizer_splits_words_and_punctuation():
    assert WordTokenizer.split("Don't stop, now!") == ["Don", "'", "t", "stop", ",", "now", "!"]


def test_word_tokenizer_orders_by_frequency_and_maps_unknown_words_to_unk():
    tok = WordTokenizer.fit("the cat the dog the end")
    assert tok.itos[:3] == ["<unk>", "the", "cat"]  # "the" most frequent; ties alphabetical
    assert tok.encode("the zebra") == [1, 0]
    assert tok.decode(tok.encode("the  cat\n")) == "the cat"  # spacing is lost


def test_word_tokenizer_max_vocab_caps_the_vocabulary():
    tok = WordTokenizer.fit("a a a b b c", max_vocab=3)
    assert tok.itos == ["<unk>", "a", "b"]
    assert tok.encode("c") == [0]


# --- byte-pair encoding: the pieces -------------------------------------------------------------
def test_pair_counts_count_overlapping_pairs_and_the_last_pair():
    assert get_pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert get_pair_counts([5, 5, 5]) == {(5, 5): 2}
    assert get_pair_counts([7]) == {} and get_pair_counts([]) == {}


def test_pair_counts_accumulate_with_a_weight():
    counts = get_pair_counts([1, 2], weight=3)
    assert get_pair_counts([1, 2, 1], counts, 2) == {(1, 2): 5, (2, 1): 2}


def test_merge_replaces_non_overlapping_occurrences_left_to_right():
    assert merge([1, 2, 3, 1, 2], (1, 2), 99) == [99, 3, 99]
    assert merge([5, 5, 5], (5, 5), 256) == [256, 5]
    assert merge([5, 5, 5, 5], (5, 5), 256) == [256, 256]
    assert merge([2, 1], (1, 2), 9) == [2, 1]


def test_merge_does_not_change_its_input():
    ids = [1, 2, 1, 2]
    merge(ids, (1, 2), 7)
    assert ids == [1, 2, 1, 2]


def test_most_frequent_pair_breaks_ties_by_the_smallest_pair():
    assert most_frequent_pair({(3, 4): 2, (1, 9): 2, (2, 2): 1}) == (1, 9)
    with pytest.raises(ValueError):
        most_frequent_pair({})


# --- byte-pair encoding: training and use -------------------------------------------------------
def test_split_chunks_join_back_to_any_text():
    for s in AWKWARD_STRINGS:
        assert "".join(BPETokenizer.split(s)) == s


@pytest.mark.parametrize("text", AWKWARD_STRINGS)
def test_bpe_round_trip_is_exact_for_any_unicode_string(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_round_trips_the_whole_corpus_and_compresses_it(bpe, corpus):
    ids = bpe.encode(corpus)
    assert bpe.decode(ids) == corpus
    assert len(ids) < len(corpus.encode("utf-8")) / 1.5


def test_fast_training_learns_exactly_the_merges_of_the_plain_loop(corpus):
    text = corpus[:8_000]
    assert BPETokenizer.train(text, 330).merges == train_bpe_plain(text, 330)


def test_training_is_deterministic_and_merges_count_up_from_256(corpus):
    a = BPETokenizer.train(corpus[:20_000], 300)
    b = BPETokenizer.train(corpus[:20_000], 300)
    assert a.merge_list() == b.merge_list()
    assert [new for _, new in a.merge_list()] == list(range(256, 300))
    assert a.vocab_size == 300


def test_each_token_is_the_bytes_of_its_two_parts(bpe):
    for (x, y), new in bpe.merge_list():
        assert bpe.vocab[new] == bpe.vocab[x] + bpe.vocab[y]


def test_training_on_the_whole_corpus_takes_seconds(corpus):
    started = time.perf_counter()
    tok = BPETokenizer.train(corpus, 512)
    seconds = time.perf_counter() - started
    assert tok.vocab_size == 512
    assert seconds < 20, f"training 256 merges on {len(corpus)} characters took {seconds:.1f} s"


def test_training_stops_early_when_no_pair_repeats():
    tok = BPETokenizer.train("abcd", 1000)
    assert tok.vocab_size == 256


def test_bpe_rejects_bad_vocab_sizes_invalid_unicode_and_unknown_ids(bpe):
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer.train("abc", 100)
    with pytest.raises(ValueError, match="not valid Unicode"):
        bpe.encode("lone \ud800 surrogate")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bpe.decode([bpe.vocab_size])


def test_bpe_decodes_a_cut_multibyte_character_to_the_replacement_character(bpe):
    ids = bpe.encode("😀")
    assert bpe.decode(list("😀".encode("utf-8"))[:2]) == "\ufffd"
    assert bpe.decode(ids) == "😀"


def test_bpe_built_from_merges_rejects_out_of_order_ids():
    with pytest.raises(ValueError, match="count up"):
        BPETokenizer([((1, 2), 300)])


def test_token_text_shows_spaces_and_newlines_visibly():
    tok = BPETokenizer([((32, 32), 256), ((10, 256), 257)])
    assert tok.token_text(257) == "↵␣␣"
    assert tok.token_text(0xF0) == "\\xf0"


def test_bytes_per_token_is_one_without_merges():
    assert BPETokenizer().bytes_per_token("héllo") == 1.0


# --- the widget's report ------------------------------------------------------------------------
def test_tokenization_report_gives_one_line_per_tokenizer():
    toks = {"char": CharTokenizer.fit("abc "), "bytes": BPETokenizer()}
    report = tokenization_report("ab c", toks)
    assert report.splitlines() == ["char (4 tokens): a | b | ␣ | c", "bytes (4 tokens): a | b | ␣ | c"]


@pytest.mark.parametrize("text, words", [("", "Type some text"), ("   ", "Type some text"),
                                         ("x" * 500, "at most 400"), (42, "Expected text")])
def test_tokenization_report_answers_bad_input_in_one_line(text, words):
    report = tokenization_report(text, {"bytes": BPETokenizer()})
    assert words in report and "\n" not in report


def test_tokenization_report_says_which_tokenizer_cannot_encode():
    report = tokenization_report("abz", {"char": CharTokenizer.fit("abc"), "bytes": BPETokenizer()})
    lines = report.splitlines()
    assert lines[0].startswith("char: cannot encode") and "'z'" in lines[0]
    assert lines[1].startswith("bytes (3 tokens)")


# --- embedding lookup ---------------------------------------------------------------------------
def test_one_hot_times_matrix_matches_nn_embedding_with_the_same_weights():
    seed_everything(0)
    weight = torch.randn(11, 6)
    ids = torch.randint(0, 11, (3, 5))
    ours = one_hot_embedding(ids, weight)
    theirs = nn.Embedding.from_pretrained(weight)(ids)
    assert ours.shape == (3, 5, 6)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)  # float32; a one-hot product is exact
    torch.testing.assert_close(ours, F.embedding(ids, weight), atol=1e-6, rtol=1e-5)


def test_one_hot_embedding_gradient_reaches_only_the_rows_used():
    weight = torch.randn(5, 3, requires_grad=True)
    one_hot_embedding(torch.tensor([1, 1, 3]), weight).sum().backward()
    assert weight.grad[[0, 2, 4]].abs().sum() == 0
    torch.testing.assert_close(weight.grad[1], torch.full((3,), 2.0))


def test_one_hot_embedding_rejects_bad_ids_and_shapes():
    weight = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        one_hot_embedding(torch.tensor([4]), weight)
    with pytest.raises(ValueError, match="integer"):
        one_hot_embedding(torch.tensor([1.0]), weight)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        one_hot_embedding(torch.tensor([1]), torch.randn(4))


# ----------------------------------------------------------------------------- words with special tokens

@pytest.fixture(scope="module")
def tok():
    return SpecialWordTokenizer(grammar_vocabulary())


def test_tokenizer_puts_specials_first_and_wraps_texts_in_cls_sep(tok):
    assert tok.itos[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ids = tok.encode("The fox didn't cross the [MASK] .")
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and tok.mask_id in ids
    assert tok.decode(ids, skip_special=True) == "the fox didn't cross the ."
    assert tok.encode("zebra", add_special=False) == [tok.unk_id]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_batch_pads_with_pad_and_marks_real_tokens(tok):
    ids, mask = tok.batch(["the fox .", "the tired fox walked to the road ."])
    assert ids.shape == mask.shape == (2, 10)
    assert (ids[0, 5:] == tok.pad_id).all() and mask[0].tolist() == [1] * 5 + [0] * 5 and mask[1].all()
    with pytest.raises(ValueError, match="text 1 has 10 tokens.*context_length=8"):
        tok.batch(["the fox .", "the tired fox walked to the road ."], context_length=8)


# ----------------------------------------------------------------------------- one interface

def test_every_tokenizer_offers_the_tokenizer_interface(tok):
    text = "the fox ."
    for tokenizer in (CharTokenizer.fit(text), WordTokenizer.fit(text), tok, BPETokenizer.train(text, 256)):
        assert isinstance(tokenizer, Tokenizer)
        ids = tokenizer.encode(text)
        assert all(0 <= i < tokenizer.vocab_size for i in ids) and isinstance(tokenizer.decode(ids), str)
