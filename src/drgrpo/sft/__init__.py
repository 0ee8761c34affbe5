"""The supervised warm start of the built-in model (`drgrpo sft`)."""

from drgrpo.sft.warm_start import build_batch, run_sft

__all__ = ["build_batch", "run_sft"]
