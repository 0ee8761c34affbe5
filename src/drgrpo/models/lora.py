"""LoRA through peft: adapters on a frozen base, the reference policy as the base itself.

    W x  ->  W x + (alpha / r) B A x        A: (r, in), B: (out, r); only A and B train

(Hu et al. 2021, peft's `LoraConfig`). The reference log-probs of the KL term are the base
model's, so they are computed with the adapters switched off (`reference_logprobs`): no second
copy of the model. An export merges the adapters into a COPY, in float32 or wider, and casts
once: merging and unmerging a bf16 base in place rounds W every time, and W drifts.

peft is an optional extra: `pip install 'drgrpo[lora]'`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from drgrpo.models.logprobs import sequence_logprobs

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Every linear map of a Llama/Qwen2 decoder layer (the head and embedding stay frozen)."""


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError(
            "LoRA needs peft: pip install 'drgrpo[lora]' (or pip install 'peft==0.21.2')"
        ) from e
    return peft


def apply_lora(
    model: torch.nn.Module,
    *,
    target_modules: Sequence[str] = LLAMA_TARGETS,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    init_identity: bool = True,
    seed: int = 0,
) -> torch.nn.Module:
    """`model` (modified: its base parameters are frozen) inside a peft model with LoRA
    adapters on every module whose name ends in one of `target_modules`.

    `init_identity`: B = 0, so the adapted model starts as the base (peft's default); False
    draws B at random too (tests: an adapter that changes the outputs). `seed` makes A (and B)
    reproducible without touching the caller's RNG stream.
    """
    peft = _peft()
    if rank < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise ValueError(
            f"need rank >= 1, alpha > 0, 0 <= dropout < 1; got {rank}, {alpha}, {dropout}"
        )
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing:
        raise ValueError(
            f"LoRA target modules {missing} are not in this model (its module names include "
            f"{sorted(n for n in names if n)[:12]}); set lora target_modules to names it has"
        )
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    if tied and {"lm_head", "embed_tokens"} & set(target_modules):
        # The merged head would also be the embedding: the export could not equal the model.
        raise ValueError(
            "this model ties lm_head to embed_tokens: LoRA on either cannot be merged into one "
            "export; drop them from target_modules (or load the model untied)"
        )
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        init_lora_weights=init_identity,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, config)


def is_lora(model: torch.nn.Module) -> bool:
    return any(type(m).__module__.startswith("peft.tuners.lora") for m in model.modules())


@contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The base model for the duration: every adapter layer computes W x only. `model` is the
    peft model or a `LogprobModel` root over it (FSDP2: the sharded root)."""
    peft_model = model if hasattr(model, "disable_adapter") else getattr(model, "model", None)
    if not hasattr(peft_model, "disable_adapter"):
        raise TypeError(f"{type(model).__name__} has no LoRA adapters to disable (see apply_lora)")
    with peft_model.disable_adapter():
        yield model


def reference_logprobs(model, input_ids, attention_mask, response_start, *, temperature=1.0):
    """(N, T) log-probs of the base model (adapters off), without gradient: pi_ref of the KL."""
    with torch.no_grad(), adapters_disabled(model):
        logprobs, _ = sequence_logprobs(
            model, input_ids, attention_mask, response_start, temperature=temperature
        )
    return logprobs


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors only (A and B per adapted module): what a LoRA checkpoint holds."""
    return _peft().get_peft_model_state_dict(model)


def load_adapter_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put `adapter_state_dict`'s tensors back; every adapter tensor must be present."""
    result = _peft().set_peft_model_state_dict(model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"adapter state does not fit this model: missing {missing[:4]}, unexpected "
            f"{list(result.unexpected_keys)[:4]} (was it saved with other target modules or rank?)"
        )


def save_adapter(model: torch.nn.Module, path: str | Path) -> None:
    """adapter_config.json + adapter_model.safetensors (peft's format; megabytes, not the base)."""
    model.save_pretrained(str(path))


def load_adapter(base: torch.nn.Module, path: str | Path, *, trainable: bool = True):
    """`base` with the adapters saved by `save_adapter` (`trainable`: to continue training)."""
    return _peft().PeftModel.from_pretrained(base, str(path), is_trainable=trainable)


def merged_copy(model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A plain HF model whose weights are W + (alpha / r) B A, computed in >= float32 on a copy
    and cast once to `dtype` (default: the base's); `model` and its base are left untouched.

    It holds one extra copy of the model at float32 while it merges: export from CPU for a
    model that fills the accelerator.
    """
    base_dtype = next(model.get_base_model().parameters()).dtype
    work_dtype = torch.promote_types(base_dtype, torch.float32)
    duplicate = copy.deepcopy(model).to(work_dtype)
    merged = duplicate.merge_and_unload()
    return merged.to(dtype or base_dtype)
