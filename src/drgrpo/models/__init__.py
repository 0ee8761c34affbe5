"""Policies: a local character tokenizer, tiny Llama models, and response log-probabilities."""

from drgrpo.models.logprobs import position_ids_from_mask, sequence_logprobs
from drgrpo.models.tiny import MODEL_SIZES, build_model, load_policy, save_policy
from drgrpo.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, build_tokenizer

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "MODEL_SIZES",
    "PAD_ID",
    "UNK_ID",
    "build_model",
    "build_tokenizer",
    "load_policy",
    "position_ids_from_mask",
    "save_policy",
    "sequence_logprobs",
]
