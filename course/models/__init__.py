"""Whole models built from the course's pieces: BERT (encoder-only), GPT (decoder-only) and the
original Transformer's encoder-decoder."""
from .bert import BertClassifier, BertConfig, BertEncoder, BertForMaskedLM
from .encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from .gpt import GPT, GPTConfig
from course.weights import WeightMismatchError

__all__ = ["GPT", "GPTConfig", "BertConfig", "BertEncoder", "BertForMaskedLM", "BertClassifier",
           "EncoderDecoder", "EncoderDecoderConfig", "WeightMismatchError"]
