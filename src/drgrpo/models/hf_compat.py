"""Every place where drgrpo depends on which transformers version is installed, in one module.

Supported: transformers 5.17 - 5.24 (pyproject); the older branches keep 4.x caches readable.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicCache


def new_cache(config) -> DynamicCache:
    """An empty key/value cache for a decoder of this config."""
    return DynamicCache(config=config)


def cache_kwarg(decoder: torch.nn.Module) -> str:
    """The keyword the decoder's forward takes its cache under."""
    # transformers 5 renamed `past_key_values` to `cache` (the old name warns until 5.40).
    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_layers(cache) -> list:
    """The per-layer entries of a cache (one per decoder layer that has run)."""
    return cache.layers if hasattr(cache, "layers") else cache.key_cache


def layer_keys_values(cache, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) of layer i, each (n, kv_heads, columns, head_dim)."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return cache.layers[i].keys, cache.layers[i].values
    return cache.key_cache[i], cache.value_cache[i]


class SoftcappedHead(torch.nn.Module):
    """head(h), then cap * tanh(logits / cap): Gemma 2's final_logit_softcapping, which its
    ForCausalLM.forward applies after the head (so a caller of the head alone must too)."""

    def __init__(self, head: torch.nn.Module, cap: float) -> None:
        super().__init__()
        self.head, self.cap = head, float(cap)

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped head's weight (callers read its shape: the vocabulary size)."""
        return self.head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(hidden) / self.cap) * self.cap


def output_head(model) -> torch.nn.Module:
    """The module that maps the decoder's last hidden states to the logits the model's own
    forward returns: the output embedding, plus any post-processing its config asks for."""
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return SoftcappedHead(head, cap) if cap else head
