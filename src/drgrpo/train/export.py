"""A trained policy as a standard Hugging Face folder that transformers and vLLM load as is.

model.safetensors + config.json     the weights (fp32 master weights, or cast to `dtype`)
generation_config.json              eos_token_id = the token rule's stop ids, pad_token_id
tokenizer files                     with its chat template and its own BOS convention, so
                                    `tokenizer(prompt)` gives the ids drgrpo trained on
drgrpo_export.json                  where it came from (run, step, config)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from drgrpo.models import load_policy
from drgrpo.rollout import TokenRule

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export_model(
    model, tokenizer, rule: TokenRule, out_dir: str | Path, *, dtype: str | None = None,
    source: dict | None = None,
) -> Path:  # fmt: skip
    """Write `model` and `tokenizer` to `out_dir` (replaced atomically if it exists)."""
    out = Path(out_dir)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"export dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    weights = model if dtype is None else _cast_copy(model, DTYPES[dtype])
    gen = weights.generation_config
    gen.eos_token_id = sorted(rule.stop_ids) if len(rule.stop_ids) > 1 else rule.eos_id
    gen.pad_token_id = rule.pad_id
    weights.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "drgrpo_export.json").write_text(json.dumps(source or {}, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, dtype: str | None = None):
    """`drgrpo export CHECKPOINT DIR`: a run's checkpoint (or its run folder: the newest
    checkpoint) as a standalone HF folder."""
    ckpt = Path(checkpoint)
    if (ckpt / "checkpoints").is_dir():
        from drgrpo.train.checkpoint import latest_checkpoint

        ckpt = latest_checkpoint(ckpt)
    if (ckpt / "model" / "adapter_config.json").is_file():
        raise ValueError(
            f"{ckpt} holds LoRA adapters only: the run's final/ folder is the merged model; for "
            "an earlier step, load its base and these adapters with peft (PeftModel.from_pretrained)"
        )
    if not (ckpt / "model" / "config.json").is_file():
        raise ValueError(
            f"{checkpoint} is neither a drgrpo checkpoint (checkpoints/step-NNNNNN with a model/ "
            "folder) nor a run folder holding one"
        )
    from drgrpo.train.dcp_checkpoint import is_dcp_checkpoint, load_dcp_policy

    if is_dcp_checkpoint(ckpt):  # a sharded run's (model.fsdp): the weights are in dcp/
        model, tokenizer = load_dcp_policy(ckpt)
    else:
        model, tokenizer = load_policy(ckpt / "model")
    rule = TokenRule.from_tokenizer(tokenizer, model.generation_config)
    source = {"checkpoint": str(ckpt)}
    config = ckpt / "config.json"
    if config.is_file():
        source["config"] = json.loads(config.read_text())
    return export_model(model, tokenizer, rule, out_dir, dtype=dtype, source=source)


def _cast_copy(model, dtype: torch.dtype):
    import copy

    return copy.deepcopy(model).to(dtype)
