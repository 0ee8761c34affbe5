"""The benchmark's FLOP counter against a hand count, and against torch's own FLOP counter.

Needs neither TRL nor the bench extra: benchmarks/flops.py imports nothing but the standard library.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds benchmarks/

from benchmarks.flops import Arch, forward_flops, rl_step_flops, row_forward_flops  # noqa: E402

# h=4, 2 layers, 2 heads of dim 2 (q_dim 4), 1 kv head (kv_dim 2), MLP 8, vocabulary 10.
TINY = Arch(hidden=4, layers=2, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10)


def test_forward_flops_hand_count():
    # One row, prompt 3 + response 2: the step forwards 3 + 2 - 1 = 4 tokens, head at 2 positions.
    # Per token per layer:  qkv 2*4*(4 + 2*2) = 64,  o 2*4*4 = 32,  MLP 3*2*4*8 = 192  -> 288
    #   4 tokens: 1152.  Attention keys 1+2+3+4 = 10, times 4*q_dim = 16: 160.  Layer: 1312.
    # 2 layers: 2624.  Head: 2 * 4 * 10 * 2 positions = 160.  Forward: 2784.
    assert TINY.params_per_token_matmul == 144
    assert forward_flops(TINY, 4, 2) == 2784
    assert row_forward_flops(TINY, 3, 2) == 2784


def test_rl_step_is_four_or_five_forwards():
    # Second row: prompt 1 + response 1 -> 1 token, head at 1 position.
    #   288*1 + 16*1 = 304 per layer, 608 for 2 layers, head 2*4*10 = 80: 688.
    rows = [(3, 2), (1, 1), (5, 0)]  # a row with no response token costs nothing
    fwd = 2784 + 688
    with_ref = rl_step_flops(TINY, rows, with_reference=True)
    assert (with_ref.rollout, with_ref.train, with_ref.reference) == (fwd, 3 * fwd, fwd)
    assert with_ref.total == 5 * fwd
    assert rl_step_flops(TINY, rows, with_reference=False).total == 4 * fwd


def test_arch_from_a_transformers_config():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=4, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=8, vocab_size=10)  # fmt: skip
    assert Arch.from_config(config) == TINY
    assert Arch.from_config(config.to_dict()) == TINY


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_matches_torch_flop_counter_on_a_real_forward(kv_heads):
    """Dense layers and head as torch counts them. torch counts full (not causal) attention and
    the head at every position, so the comparison adds exactly that difference."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=kv_heads, intermediate_size=24, vocab_size=50,
                         attn_implementation="eager")  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    n = 7
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.arange(n)[None] % 50)
    arch = Arch.from_config(config)
    q_dim = arch.heads * arch.head_dim
    full_attention_extra = arch.layers * 4 * q_dim * (n * n - n * (n + 1) // 2)
    assert counter.get_total_flops() == forward_flops(arch, n, n) + full_attention_extra


def test_a_group_runs_its_prompt_once():
    # Two rows of one prompt of 3 tokens, responses 2 and 1.
    # Prompt once: 3 tokens x 288 + keys (1+2+3) x 16 = 960 per layer, 1920 for 2 layers.
    # Row (3, 2) adds position 3 (4 keys): 288 + 4*16 = 352 per layer, 704, head 2*80 = 160: 864.
    # Row (3, 1) adds no token (its first response token is predicted from the prompt), head 80.
    # Forward: 1920 + 864 + 80 = 2864; rowwise it is 2784 + 2000 = 4784.
    rows = [(3, 2), (3, 1)]
    assert rl_step_flops(TINY, rows, with_reference=False, group=2).rollout == 2864
    assert rl_step_flops(TINY, rows, with_reference=False, group=1).rollout == 4784
    with pytest.raises(ValueError, match="different prompts"):
        rl_step_flops(TINY, [(3, 2), (4, 1)], with_reference=False, group=2)
    with pytest.raises(ValueError, match="whole groups"):
        rl_step_flops(TINY, [*rows, (3, 1)], with_reference=False, group=2)


def test_arch_defaults_kv_heads_and_head_dim_when_a_config_omits_them():
    fields = dict(hidden_size=4, num_hidden_layers=2, num_attention_heads=2, intermediate_size=8,
                  vocab_size=10)  # fmt: skip
    arch = Arch.from_config(fields)
    assert (arch.kv_heads, arch.head_dim) == (2, 2)  # multi-head attention, hidden / heads


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_param_count_is_the_models_own(size):
    from benchmarks.vs_trl import param_count

    from drgrpo.models import build_model

    model = build_model(size, 100)
    arch = Arch.from_config(model.config)
    assert param_count(arch) == sum(p.numel() for p in model.parameters())
