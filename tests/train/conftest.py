from __future__ import annotations

import pytest
import torch

from drgrpo.config import build_config
from drgrpo.models import build_model, build_tokenizer, save_policy


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory) -> str:
    """A small untrained policy in a local HF folder: the trainer treats it like any real model."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_model("tiny", vocab_size=len(tokenizer), seed=0, hidden_size=32,
                        intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=2)  # fmt: skip
    path = tmp_path_factory.mktemp("policy")
    save_policy(model, tokenizer, path)
    return str(path)


@pytest.fixture
def small_run(tiny_policy_dir, tmp_path):
    """A config for a few cheap steps; extra overrides on top."""

    def make(*overrides: str, name: str = "run"):
        return build_config(overrides=[
            f"model.base={tiny_policy_dir}", f"output_dir={tmp_path / name}",
            "rollout.prompts_per_step=2", "rollout.group_size=3", "rollout.max_new_tokens=6",
            "eval.num_prompts=3", "eval.num_samples=2", "eval.ks=[1,2]", "steps=4",
            "optim.lr=1e-2", "log_samples_every=1", "checkpoint_every=2", "no_eos_patience=1000",
            *overrides,
        ])  # fmt: skip

    return make


@pytest.fixture
def dense_reward(monkeypatch):
    """An untrained model never solves a task, and all-equal rewards give no gradient under a group
    baseline; this verifier pays for digits in the completion so that every step learns."""
    from drgrpo.train import setup

    real_make = setup.make_task

    def make(name, **options):
        task = real_make(name, **options)

        def verify(completion: str, reference: str) -> float:
            return sum(c.isdigit() for c in completion) / max(len(completion), 1)

        object.__setattr__(task, "verify", verify)
        return task

    monkeypatch.setattr(setup, "make_task", make)
