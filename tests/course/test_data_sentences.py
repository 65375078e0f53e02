"""The template grammar: deterministic, "it" referents right, test combinations held out."""
from __future__ import annotations

import pytest

from course.data import sentences as S


def test_it_sentences_are_deterministic_for_a_seed_and_differ_across_seeds():
    assert S.it_sentences(50, seed=3) == S.it_sentences(50, seed=3)
    assert S.it_sentences(50, seed=3) != S.it_sentences(50, seed=4)


def test_it_sentence_records_point_at_it_and_at_the_referent():
    for s in S.it_sentences(300, seed=0, split="all"):
        assert s.words[s.it_index] == "it"
        assert s.words[s.referent_index] == s.referent
        assert list(s.words) == S.split_words(s.text)
        if s.adjective in S.ANIMAL_ADJECTIVES:
            assert (s.label, s.referent, s.label_name) == (S.ANIMAL_LABEL, s.animal, "animal")
        else:
            assert (s.label, s.referent, s.label_name) == (S.PLACE_LABEL, s.place, "place")
        assert s.referent_index < s.it_index and s.words[-1] == "." and s.words[-2] == s.adjective


def test_labels_are_balanced():
    labels = [s.label for s in S.it_sentences(200, seed=1)]
    assert labels.count(0) == labels.count(1) == 100


def test_test_split_uses_only_combinations_the_train_split_never_uses():
    train = {(s.referent, s.adjective) for s in S.it_sentences(3000, seed=0, split="train")}
    test = {(s.referent, s.adjective) for s in S.it_sentences(1000, seed=0, split="test")}
    assert test and not (train & test)
    assert all(S.is_test_combo(n, a) for n, a in test)
    # every noun and adjective that is a referent still appears in training
    assert {a for _, a in test} <= {a for _, a in train}
    assert {n for n, _ in test} <= {n for n, _ in train}


def test_adjective_restriction_and_bad_arguments():
    chosen = ["tired", "icy"]
    assert {s.adjective for s in S.it_sentences(40, seed=0, split="all", adjectives=chosen)} == set(chosen)
    with pytest.raises(ValueError, match="split"):
        S.it_sentences(3, split="validation")
    with pytest.raises(ValueError, match="unknown adjective 'purple'"):
        S.it_sentences(3, adjectives=["purple"])
    with pytest.raises(ValueError, match="does not describe"):
        S.is_test_combo("dog", "icy")


def test_split_words_agrees_with_the_attention_explorer():
    viz = pytest.importorskip("course.viz")
    text = "The dog didn't cross the well-lit street, because it was too tired."
    assert S.split_words(text) == [w.lower() for w in viz.tokenize_words(text)]


def test_story_grammar_is_deterministic_and_stays_in_its_vocabulary():
    assert S.story_sentences(20, seed=2) == S.story_sentences(20, seed=2)
    corpus = S.sentence_corpus(2000, seed=0)
    words = {w for t in corpus for w in S.split_words(t)}
    assert words == set(S.grammar_vocabulary())
    story = S.stories(5, seed=0, sentences=(2, 3))
    assert all(2 <= s.count(" .") <= 3 for s in story)


def test_adjectives_in_front_of_a_noun_match_its_kind_in_stories():
    """'the tired fox', 'the icy road', never 'the icy fox': so pretraining can learn which is which."""
    seen = 0
    for text in S.story_sentences(2000, seed=5):
        words = S.split_words(text)
        for w, nxt in zip(words, words[1:]):
            if nxt in S.ANIMALS + S.PLACES and w in S.ANIMAL_ADJECTIVES + S.PLACE_ADJECTIVES:
                seen += 1
                assert (w in S.ANIMAL_ADJECTIVES) == (nxt in S.ANIMALS), text
    assert seen > 500
