"""Data the lessons train on, all available offline: nothing here downloads anything."""
from .text import REFERENCE_FINGERPRINT, corpus_fingerprint, stdlib_corpus, train_val_split

__all__ = ["REFERENCE_FINGERPRINT", "corpus_fingerprint", "stdlib_corpus", "train_val_split"]
