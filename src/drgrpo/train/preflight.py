"""Checks before any expensive work: does prompt + response fit the model's context, and what
memory will the run need (printed, so a user sees what will not fit before the OOM)."""

from __future__ import annotations

import torch

from drgrpo.config import TrainConfig
from drgrpo.models.memory import count_parameters, estimate_memory

PROBE_PROMPTS = 256
"""Training and held-out prompts encoded to find the longest (a bound, not a guarantee)."""


def longest_prompt(cfg: TrainConfig, task, rule, tokenizer) -> int:
    """Tokens of the longest of the first PROBE_PROMPTS training and held-out prompts."""
    examples = [task.train_example(i) for i in range(PROBE_PROMPTS)]
    examples += task.heldout(min(cfg.eval.num_prompts, PROBE_PROMPTS))
    return max(len(ids) for ids in rule.encode_examples(tokenizer, examples))


def check_context(cfg: TrainConfig, model_config, prompt_tokens: int) -> None:
    """A clear error when the longest prompt + rollout.max_new_tokens exceeds the context."""
    limit = getattr(model_config, "max_position_embeddings", None)
    need = prompt_tokens + cfg.rollout.max_new_tokens
    if limit is not None and need > limit:
        raise ValueError(
            f"the longest prompt ({prompt_tokens} tokens) + rollout.max_new_tokens "
            f"({cfg.rollout.max_new_tokens}) = {need} exceeds the model's context of {limit} "
            f"tokens (max_position_embeddings): lower rollout.max_new_tokens to at most "
            f"{limit - prompt_tokens}, or shorten the prompts (template, data)"
        )


def memory_report(cfg: TrainConfig, model_config, prompt_tokens: int, device) -> str:
    """The start-up memory estimate as text (with the device's capacity on CUDA)."""
    rows = cfg.rollout.num_sequences
    micro = cfg.optim.micro_batch_size or rows // cfg.optim.mini_batches
    estimate = estimate_memory(
        model_config, rollout_rows=cfg.rollout.chunk_rows or rows, prompt_tokens=prompt_tokens,
        max_new_tokens=cfg.rollout.max_new_tokens, micro_batch_rows=micro,
        param_dtype="float32", compute_dtype=cfg.model.dtype,
        reference_model=cfg.objective.uses_reference or cfg.monitors_kl(count_parameters(model_config)),
    )  # fmt: skip
    capacity = None
    if device.type == "cuda":
        capacity = torch.cuda.get_device_properties(device).total_memory
    return estimate.format_estimate(capacity)
