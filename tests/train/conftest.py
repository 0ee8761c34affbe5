from __future__ import annotations

import pytest

from drgrpo.config import build_config


@pytest.fixture
def small_run(tiny_policy_dir, tmp_path):
    """A config for a few cheap steps; extra overrides on top."""

    def make(*overrides: str, name: str = "run"):
        return build_config(overrides=[
            f"model.base={tiny_policy_dir}", f"output_dir={tmp_path / name}",
            "rollout.prompts_per_step=2", "rollout.group_size=3", "rollout.max_new_tokens=6",
            "eval.num_prompts=3", "eval.num_samples=2", "eval.ks=[1,2]", "steps=4",
            "optim.lr=1e-2", "log_samples_every=1", "checkpoint_every=2", "no_eos_patience=1000", "monitor_kl=false",
            *overrides,
        ])  # fmt: skip

    return make


@pytest.fixture(scope="session")
def eos_policy_dir(tiny_policy_dir, tmp_path_factory) -> str:
    """The tiny untrained policy with its head's EOS row pointed along the mean final hidden
    state, so that EOS has a logit of about +6 at a typical position: responses end after a
    few tokens (most rows stop, a few are truncated), as a policy that learned the format does."""
    import torch

    from drgrpo.models import load_policy, save_policy

    model, tokenizer = load_policy(tiny_policy_dir)
    prompts = torch.tensor([tokenizer.encode(f"{a}+{b}=") for a in range(4) for b in range(4)])
    with torch.no_grad():
        hidden = model.model(input_ids=prompts).last_hidden_state.flatten(0, 1)  # (rows*cols, h)
        direction = hidden.mean(0)
        head = model.get_output_embeddings().weight
        head[tokenizer.eos_token_id] = 6.0 * direction / direction.norm() ** 2
    path = tmp_path_factory.mktemp("eos-policy")
    save_policy(model, tokenizer, path)
    return str(path)
