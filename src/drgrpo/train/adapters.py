"""LoRA in a run (`model.lora_rank > 0`), through peft (`drgrpo.models.lora`).

policy      the base, frozen, with adapters on `model.lora_target_modules`
reference   the same model with its adapters disabled: no second copy of the weights
checkpoint  the adapters only (peft's adapter_model.safetensors + adapter_config.json)
final/      the adapters merged into a copy of the base, out of place (the trained model
            stays unmerged; merging a bf16 base in place and back drifts)
"""

from __future__ import annotations

from pathlib import Path

import torch

from drgrpo.config import TrainConfig
from drgrpo.train.checkpoint import CheckpointError


def attach_lora(cfg: TrainConfig, policy: torch.nn.Module) -> torch.nn.Module:
    """`policy` with LoRA adapters when the config asks for them (unchanged otherwise)."""
    m = cfg.model
    if not m.lora_rank:
        return policy
    from drgrpo.models.lora import LLAMA_TARGETS, apply_lora

    return apply_lora(
        policy, target_modules=m.lora_target_modules or LLAMA_TARGETS, rank=m.lora_rank,
        alpha=m.lora_alpha, dropout=m.lora_dropout, seed=cfg.seed,
    )  # fmt: skip


def uses_lora(policy: torch.nn.Module) -> bool:
    from drgrpo.models.lora import is_lora

    return is_lora(policy)


def load_adapters(policy: torch.nn.Module, folder: Path) -> None:
    """A checkpoint's adapters into `policy` (refusing a checkpoint of full weights)."""
    from safetensors.torch import load_file

    from drgrpo.models.lora import load_adapter_state_dict

    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        raise CheckpointError(
            f"{folder} holds no LoRA adapters (adapter_model.safetensors): this checkpoint was "
            "not written by a run with model.lora_rank > 0; resume it with the same model.lora_*"
        )
    load_adapter_state_dict(policy, load_file(str(file)))


def reference_logprobs(policy, rollouts, temperature: float) -> torch.Tensor:
    """log pi_ref of the rollouts: the policy with its adapters disabled (the base model)."""
    from drgrpo.models.lora import reference_logprobs as base_logprobs

    return base_logprobs(policy, rollouts.input_ids, rollouts.attention_mask,
                         rollouts.response_start, temperature=temperature)  # fmt: skip


def exported_model(policy: torch.nn.Module) -> torch.nn.Module:
    """What `final/` holds: the merged model for a LoRA run (out of place), else the policy."""
    if not uses_lora(policy):
        return policy
    from drgrpo.models.lora import merged_copy

    return merged_copy(policy)
