"""Data the lessons train on, all available offline: nothing here downloads anything.

- :mod:`course.data.text`: real text that ships with Python (its standard library's source).
- :mod:`course.data.sentences`: a template grammar of short stories and "it"-resolution sentences.
"""
from .sentences import (
    ANIMAL_ADJECTIVES,
    ANIMAL_LABEL,
    ANIMALS,
    LABEL_NAMES,
    PLACE_ADJECTIVES,
    PLACE_LABEL,
    PLACES,
    ItSentence,
    grammar_vocabulary,
    is_test_combo,
    it_sentences,
    sentence_corpus,
    split_words,
    stories,
    story_sentences,
)
from .text import REFERENCE_FINGERPRINT, corpus_fingerprint, stdlib_corpus, train_val_split

__all__ = [
    "REFERENCE_FINGERPRINT", "corpus_fingerprint", "stdlib_corpus", "train_val_split",
    "ItSentence", "it_sentences", "is_test_combo", "split_words", "story_sentences", "stories",
    "sentence_corpus", "grammar_vocabulary", "ANIMALS", "PLACES", "ANIMAL_ADJECTIVES", "PLACE_ADJECTIVES",
    "ANIMAL_LABEL", "PLACE_LABEL", "LABEL_NAMES",
]
