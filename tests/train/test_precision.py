"""A bf16 run learns: parameters stay fp32 (master weights) while compute runs in bf16.

The bug this guards against: with bf16 parameters an AdamW update of lr 1e-6 is far below
bf16's resolution, so after 3 steps 0.43% of the weights had changed. Here the same kind of
run, with model.dtype=bfloat16, must move essentially every weight that has a gradient.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from drgrpo.train.checkpoint import list_checkpoints
from drgrpo.train.trainer import train


def test_bf16_compute_at_lr_1e_6_changes_every_weight_with_a_gradient(small_run, dense_reward):
    cfg = small_run("steps=2", "optim.lr=1e-6", "model.dtype=bfloat16", "checkpoint_every=1",
                    "rollout.max_new_tokens=8")  # fmt: skip
    train(cfg, progress=False)
    first, second = (load_file(str(p / "model" / "model.safetensors"))
                     for p in list_checkpoints(cfg.output_dir))  # fmt: skip
    moved = total = 0
    for key, before in first.items():
        assert before.dtype == torch.float32, key  # saved master weights, not bf16
        if "norm" in key and torch.equal(before, second[key]):
            continue  # RMSNorm gains can have an exactly zero gradient in a short run
        total += before.numel()
        moved += int((before != second[key]).sum())
    assert moved / total > 0.99


def test_plain_bf16_parameters_would_not_learn_at_that_rate():
    """The control that makes the test above meaningful: the same update applied to bf16
    storage rounds away (so an fp32 master copy is what makes it learn)."""
    torch.manual_seed(0)
    weight = (torch.randn(4096) * 0.02).to(torch.bfloat16)
    updated = weight - torch.full_like(weight, 1e-6)  # one AdamW step moves each weight ~lr
    assert (updated != weight).float().mean() < 0.05  # only weights near 0 move (2% here)
    master = weight.float() - 1e-6
    assert (master != weight.float()).float().mean() > 0.99
