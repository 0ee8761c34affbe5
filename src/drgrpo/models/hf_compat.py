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
