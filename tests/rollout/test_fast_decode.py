"""The preallocated-cache decode step (`LlamaStepper`) against the model's own forward.

`fast_decode=False` steps through `decoder(...)` with a DynamicCache, the path any HF model
takes; the fast path must give the same greedy tokens and the same sampler log-probs, while
dropping rows as they finish.
"""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from drgrpo.models import build_model
from drgrpo.rollout import HFRolloutEngine
from drgrpo.rollout.hf_fast import LlamaStepper

PAD, BOS, EOS = 0, 1, 2
PROMPTS = [[BOS, 20, 15, 21, 33], [BOS, 22], [BOS, 23, 15, 24], [BOS], [BOS, 40, 41]]


def eos_biased(model, bonus):
    """An lm_head bias on EOS, so that rows stop at varied steps (and get dropped)."""
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size, dtype=model.dtype))
    with torch.no_grad():
        model.lm_head.bias[EOS] = bonus
    return model


def llama(tokenizer, **overrides):
    return build_model("tiny", len(tokenizer), seed=0, num_hidden_layers=2, initializer_range=0.3,
                       **overrides).double()  # fmt: skip


def qwen2():
    config = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD,
                         bos_token_id=BOS, eos_token_id=EOS, initializer_range=0.3)  # fmt: skip
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).double()


@pytest.fixture(params=["llama", "llama-gqa", "qwen2"])
def model(request, tokenizer):
    if request.param == "llama":
        return eos_biased(llama(tokenizer), 1.5)
    if request.param == "llama-gqa":
        return eos_biased(llama(tokenizer, num_key_value_heads=2), 1.5)
    return eos_biased(qwen2(), 1.5)


def test_fast_path_is_taken_for_llama_and_qwen2(model, monkeypatch):
    assert LlamaStepper.supports(model)
    built = []
    init = LlamaStepper.__init__
    monkeypatch.setattr(
        LlamaStepper, "__init__", lambda self, *a, **k: built.append(1) or init(self, *a, **k)
    )
    HFRolloutEngine(model, EOS, PAD).generate(PROMPTS, max_new_tokens=3, temperature=0)
    assert built == [1]


def test_greedy_equals_the_models_own_forward(model):
    fast = HFRolloutEngine(model, EOS, PAD).generate(PROMPTS * 3, max_new_tokens=20, temperature=0)
    slow = HFRolloutEngine(model, EOS, PAD, fast_decode=False).generate(
        PROMPTS * 3, max_new_tokens=20, temperature=0
    )
    assert set(fast.finish_reason) == {"stop", "length"}  # rows really were dropped midway
    assert torch.equal(fast.response_ids, slow.response_ids)
    assert torch.equal(fast.response_mask, slow.response_mask)
    assert fast.finish_reason == slow.finish_reason
    torch.testing.assert_close(fast.sampler_logprobs, slow.sampler_logprobs, rtol=0, atol=1e-6)


def test_sampled_rows_score_as_the_model_scores_them(model):
    """Dropping rows changes which random numbers each row gets, not the distribution: each
    sampled row's log-probs are the model's (recomputed without any cache)."""
    from drgrpo.models import sequence_logprobs

    out = HFRolloutEngine(model, EOS, PAD).generate(PROMPTS * 4, max_new_tokens=16, seed=3)
    with torch.no_grad():
        recomputed, _ = sequence_logprobs(
            model, out.input_ids, out.attention_mask, out.response_start
        )
    torch.testing.assert_close(out.sampler_logprobs, recomputed.float(), rtol=0, atol=1e-5)


def test_finished_rows_leave_the_batch(tokenizer):
    model = eos_biased(llama(tokenizer), 2.5)
    sizes = []
    hook = model.get_decoder().embed_tokens.register_forward_hook(
        lambda m, args, out: sizes.append(out.shape[0])
    )
    try:
        out = HFRolloutEngine(model, EOS, PAD).generate(PROMPTS * 8, max_new_tokens=24, seed=0)
    finally:
        hook.remove()
    # sizes[0] is the prefill: each of the 5 distinct prompts once, not 40 rows. Each decode step
    # then feeds only the rows still running.
    running = (~out.response_mask[:, :-1] | (out.response_ids[:, :-1] == EOS)).logical_not()
    assert sizes[0] == len(PROMPTS)
    assert sizes[1:] == running.sum(0)[: len(sizes) - 1].tolist()
    assert sizes[-1] < 40


def test_unsupported_models_take_the_generic_path(tokenizer, monkeypatch):
    model = llama(tokenizer)
    model.config.model_type = "something-else"
    assert not LlamaStepper.supports(model)

    def refuse(*args, **kwargs):
        raise AssertionError("the fast stepper was used for an unsupported model")

    monkeypatch.setattr(LlamaStepper, "__init__", refuse)
    sizes = []
    hook = model.get_decoder().embed_tokens.register_forward_hook(
        lambda m, args, out: sizes.append(out.shape[0])
    )
    try:
        out = HFRolloutEngine(model, EOS, PAD).generate(
            PROMPTS * 2, max_new_tokens=5, temperature=0
        )
    finally:
        hook.remove()
    assert out.response_ids.shape == (10, 5)
    assert sizes == [10] * 5  # every row prefilled and stepped: no sharing, no dropping


def test_transposed_head_copy_gives_the_same_rollout(model, monkeypatch):
    """Large heads are applied from a transposed copy of the weight (bias included)."""
    from drgrpo.rollout import hf

    calls = []
    monkeypatch.setattr(hf, "transpose_pays", lambda head, steps: calls.append(steps) or True)
    fast = HFRolloutEngine(model, EOS, PAD).generate(PROMPTS * 2, max_new_tokens=12, temperature=0)
    slow = HFRolloutEngine(model, EOS, PAD, fast_decode=False).generate(
        PROMPTS * 2, max_new_tokens=12, temperature=0
    )
    assert calls == [12]
    assert torch.equal(fast.response_ids, slow.response_ids)
    torch.testing.assert_close(fast.sampler_logprobs, slow.sampler_logprobs, rtol=0, atol=1e-6)
