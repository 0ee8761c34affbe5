import pytest
import torch

from drgrpo.models import build_model, build_tokenizer

# Two intra-op threads on a shared 2-core machine spin against other jobs: measured 61 s for
# these tests with 2 threads vs 17 s with 1, for matmuls this small. Sets it for the session.
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
