"""Whole models built from the course's pieces: BERT (encoder-only), GPT (decoder-only), the
original Transformer's encoder-decoder and Llama (a modern decoder, lesson 12)."""
from .bert import BertClassifier, BertConfig, BertEncoder, BertForMaskedLM
from .encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from .gpt import GPT, GPTConfig
from .llama import Llama, LlamaConfig
from course.weights import WeightMismatchError

__all__ = ["GPT", "GPTConfig", "BertConfig", "BertEncoder", "BertForMaskedLM", "BertClassifier",
           "EncoderDecoder", "EncoderDecoderConfig", "Llama", "LlamaConfig", "WeightMismatchError"]
