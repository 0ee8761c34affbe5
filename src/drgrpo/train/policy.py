"""The base policy of a run: a user's local Hugging Face folder, or the built-in model
SFT-warm-started on the task (trained once, then cached, keyed by everything that shapes it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rich.console import Console

from drgrpo.config import SFTConfig, TaskConfig, TrainConfig
from drgrpo.models import load_policy


def builtin_sft_config(cfg: TrainConfig, output_dir: str = "") -> SFTConfig:
    return SFTConfig(
        task=TaskConfig(name=cfg.task.name, options=dict(cfg.task.options)),
        size=cfg.model.size,
        output_dir=output_dir,
        max_new_tokens=cfg.rollout.max_new_tokens,
    )


TOKEN_RULE_VERSION = 2
"""Part of the cache key: bases cached before the tokenizer added its own BOS are not reused."""


def cached_base_dir(cfg: TrainConfig) -> Path:
    key = json.dumps(
        {**builtin_sft_config(cfg).to_dict(), "token_rule": TOKEN_RULE_VERSION}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return Path(cfg.model.cache_dir) / f"sft-{cfg.task.name}-{cfg.model.size}-{digest}"


def load_base_policy(cfg: TrainConfig, console: Console):
    """(model, tokenizer, folder). Runs the SFT warm start first when no base is given or cached."""
    if cfg.model.base is not None:
        folder = Path(cfg.model.base)
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"model.base={cfg.model.base!r} is not a local Hugging Face model folder (no "
                "config.json); give a folder saved with save_pretrained, or leave model.base "
                "unset to use the built-in SFT model"
            )
    else:
        folder = cached_base_dir(cfg)
        if not (folder / "config.json").is_file():
            from drgrpo.sft import run_sft  # the built-in base is a cached SFT run

            console.print(f"[bold]No cached base policy: running the SFT warm start into {folder}")
            run_sft(builtin_sft_config(cfg, str(folder)), console=console)
        else:
            console.print(f"base policy: cached SFT model {folder}")
    model, tokenizer = load_policy(folder)
    # pad == eos is fine: every mask is explicit (`drgrpo.rollout.prompts.TokenRule`).
    return model, tokenizer, folder
