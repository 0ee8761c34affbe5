"""A LoRA run (model.lora_rank): only adapters train, the reference is the base with adapters
off (no copy), checkpoints hold adapters and resume bit-identically, final/ is the merged model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from drgrpo.train.logging import read_metrics
from drgrpo.train.trainer import train

pytest.importorskip("peft")

LORA = ["model.lora_rank=4", "model.lora_alpha=8", "monitor_kl=true", "optim.lr=5e-2"]


def _algorithmic(rows):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def test_lora_trains_adapters_resumes_exactly_and_exports_merged(small_run, dense_reward,
                                                                 tiny_policy_dir):  # fmt: skip
    straight = small_run(*LORA, "steps=4", "checkpoint_every=1", name="straight")
    summary = train(straight, progress=False)
    rows = [r for r in read_metrics(straight.output_dir) if "policy/kl" in r]
    # B starts at 0: step 1's policy is the base, so its KL to the reference is exactly 0; later
    # the adapters have moved and it is not.
    assert rows[0]["policy/kl"] == 0.0 and rows[-1]["policy/kl"] > 0
    ckpt = sorted(Path(straight.output_dir, "checkpoints").iterdir())[-1] / "model"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "config.json").exists()
    assert all("lora_" in k for k in load_file(str(ckpt / "adapter_model.safetensors")))

    # 2 steps, then resume to 4: the same metrics and the same exported model.
    split = small_run(*LORA, "steps=4", "checkpoint_every=1", name="split")
    train(split, progress=False, stop_at_step=2)
    train(split, progress=False, resume=True)
    assert _algorithmic(read_metrics(split.output_dir)) == _algorithmic(
        read_metrics(straight.output_dir)
    )

    final = AutoModelForCausalLM.from_pretrained(summary["final_model"], local_files_only=True)
    resumed = AutoModelForCausalLM.from_pretrained(split.output_dir + "/final")
    base = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    changed = 0
    for (name, a), (_, b), (_, c) in zip(final.named_parameters(), resumed.named_parameters(),
                                         base.named_parameters(), strict=True):  # fmt: skip
        assert torch.equal(a, b), name
        if name.endswith("_proj.weight"):
            changed += int(not torch.equal(a, c))  # merged adapters moved the projections
        else:
            assert torch.equal(a, c), name  # embeddings and norms are frozen: untouched
    assert changed > 0
    meta = json.loads((Path(summary["final_model"]) / "drgrpo_export.json").read_text())
    assert meta["step"] == 4
