"""Transformers from scratch: the pieces the lessons build, in one importable package."""
__version__ = "0.1.0"
