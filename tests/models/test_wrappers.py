"""Fast paths that read raw weights refuse peft-wrapped models, and sample the adapted model.

peft's LoRA layer returns the BASE weight on `.weight`; a fast path that reads it (the rollout's
`LlamaStepper`, its `TransposedHead`, the fused head of the log-probs) would compute the base
model on the adapted projections. The sharded (DTensor) case is in tests/distributed/.
"""

import pytest
import torch

pytest.importorskip("peft")

from drgrpo.models import build_model, sequence_logprobs  # noqa: E402
from drgrpo.models.lora import apply_lora, merged_copy  # noqa: E402
from drgrpo.models.wrappers import describe_wrapping  # noqa: E402
from drgrpo.rollout import HFRolloutEngine  # noqa: E402
from drgrpo.rollout import hf_fast as rollout_hf  # noqa: E402

PAD, BOS, EOS = 0, 1, 2
PROMPTS = [[BOS, 20, 15, 21, 33], [BOS, 22], [BOS, 23, 15, 24], [BOS, 40, 41]]


def base(**overrides):
    return build_model(
        "tiny", 100, seed=0, num_hidden_layers=2, initializer_range=0.3, **overrides
    ).double()


def lora_model(**kwargs):
    """Random A and B (B != 0) on every projection: far from its base model."""
    return apply_lora(base(), rank=4, alpha=8.0, init_identity=False, **kwargs)


def test_plain_model_is_plain_and_peft_is_named():
    assert describe_wrapping(base()) is None
    model = lora_model()
    assert "peft" in describe_wrapping(model)
    assert not rollout_hf.LlamaStepper.supports(model)
    assert rollout_hf.LlamaStepper.supports(base())


def rollout(model, **kwargs):
    engine = HFRolloutEngine(model, EOS, PAD, fast_decode=True)
    return engine.generate(PROMPTS * 2, max_new_tokens=12, seed=5, **kwargs)


def rescored(model, out):
    ids = torch.cat([out.prompt_ids, out.response_ids], dim=1)
    mask = torch.cat([out.prompt_mask, out.response_mask], dim=1)
    with torch.no_grad():
        return sequence_logprobs(model, ids, mask, out.prompt_ids.shape[1])[0]


def test_fast_decode_on_a_lora_model_samples_the_adapted_model():
    model = lora_model()
    out = rollout(model)
    mask = out.response_mask
    # The sampler's log-probs are the adapted model's (its merge, a plain Llama, rescored).
    want = rescored(merged_copy(model), out)
    # The engine stores sampler log-probs in float32: |log p| < 20, so 2e-6 is a float32 ulp or two.
    torch.testing.assert_close(out.sampler_logprobs[mask].double(), want[mask], rtol=0, atol=2e-6)
    # Greedy: the same tokens as the merged model's own fast decode.
    greedy = rollout(model, temperature=0)
    assert torch.equal(greedy.response_ids, rollout(merged_copy(model), temperature=0).response_ids)


def test_without_the_guard_the_stepper_would_sample_the_base_weights(monkeypatch):
    """The control: force the fast stepper onto the peft model and it is far off."""
    model = lora_model()
    monkeypatch.setattr(rollout_hf, "reads_raw_weights", lambda module: True)
    out = rollout(model)
    mask = out.response_mask
    want = rescored(merged_copy(model), out)
    assert float((out.sampler_logprobs[mask].double() - want[mask]).abs().max()) > 1e-2


def test_fused_head_refuses_a_wrapped_head_and_log_probs_are_the_adapted_models():
    model = apply_lora(
        base(tie_word_embeddings=False),
        rank=4,
        alpha=8.0,
        init_identity=False,
        target_modules=("q_proj", "lm_head"),
    )
    assert "peft" in describe_wrapping(model.get_output_embeddings())
    out = rollout(model)
    mask = out.response_mask
    params = [p for p in model.parameters() if p.requires_grad]
    ids = torch.cat([out.prompt_ids, out.response_ids], dim=1)
    full = torch.cat([out.prompt_mask, out.response_mask], dim=1)
    logprobs, _ = sequence_logprobs(model, ids, full, out.prompt_ids.shape[1])
    grads = torch.autograd.grad(logprobs.sum(), params)
    assert all(float(g.abs().max()) > 0 for g in grads)  # the head's adapter gets its gradient
    want = rescored(merged_copy(model), out)
    torch.testing.assert_close(logprobs.detach()[mask], want[mask], rtol=0, atol=1e-9)
    # The engine stores sampler log-probs in float32: |log p| < 20, so 2e-6 is a float32 ulp or two.
    torch.testing.assert_close(out.sampler_logprobs[mask].double(), want[mask], rtol=0, atol=2e-6)
