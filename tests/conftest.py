"""Suite-wide settings: offline Hugging Face, and one intra-op thread.

One thread keeps float reductions in the same order on every machine (golden values stay
golden) and avoids oversubscribing a small CI machine; the tests use tiny tensors anyway.
"""

import os

import pytest
import torch

from drgrpo.models import build_model, build_tokenizer, save_policy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def model64(tokenizer):
    """Two-layer tiny model in float64, so that exact comparisons can use 1e-10 tolerances.

    initializer_range 0.3 (not 0.02) gives peaked, context-dependent logits: at 0.02 greedy
    decoding repeats the last prompt token whatever the positions, and lets position bugs pass.
    """
    return build_model(
        "tiny", len(tokenizer), seed=0, num_hidden_layers=2, initializer_range=0.3
    ).double()


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


def use_dense_reward(monkeypatch) -> None:
    """An untrained model never solves a task, and all-equal rewards give no gradient under a group
    baseline; this verifier pays for digits in the completion so that every step learns."""
    from drgrpo.train import run as setup

    real_make = setup.make_task

    def make(name, **options):
        task = real_make(name, **options)

        def verify(completion: str, reference: str) -> float:
            return sum(c.isdigit() for c in completion) / max(len(completion), 1)

        object.__setattr__(task, "verify", verify)
        return task

    monkeypatch.setattr(setup, "make_task", make)


@pytest.fixture
def dense_reward(monkeypatch):
    use_dense_reward(monkeypatch)


@pytest.fixture(scope="module")
def dense_reward_module():
    with pytest.MonkeyPatch.context() as mp:
        use_dense_reward(mp)
        yield
