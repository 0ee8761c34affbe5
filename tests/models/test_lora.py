"""LoRA through peft: what trains, the reference with adapters off, checkpoints, the merged export."""

import copy

import pytest
import torch

pytest.importorskip("peft")

from drgrpo.models import build_model, sequence_logprobs  # noqa: E402
from drgrpo.models.lora import (  # noqa: E402
    adapter_state_dict,
    apply_lora,
    load_adapter,
    load_adapter_state_dict,
    merged_copy,
    reference_logprobs,
    save_adapter,
)

P, T = 5, 7


def batch(n=6, seed=0):
    """n rows: prompts of 2..P tokens (left-padded), responses of 1..T (right-padded)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (n, P + T), generator=g)
    mask = torch.ones((n, P + T), dtype=torch.bool)
    for i in range(n):
        mask[i, : i % (P - 1)] = False
        mask[i, P + 1 + i % T :] = False
    return ids, mask


def base_model(dtype=torch.float64, **overrides):
    return build_model(
        "tiny", 100, seed=0, num_hidden_layers=2, initializer_range=0.3, **overrides
    ).to(dtype)


def adapted(dtype=torch.float64, *, untied=False, **kwargs):
    """A LoRA model whose B is random (not 0): the adapted model really differs from its base."""
    base = base_model(dtype, **({"tie_word_embeddings": False} if untied else {}))
    return apply_lora(base, rank=4, alpha=8.0, init_identity=False, **kwargs)


def logprobs(model, ids, mask):
    with torch.no_grad():
        return sequence_logprobs(model, ids, mask, P)[0]


def test_only_adapter_parameters_change_after_an_optimizer_step():
    model = adapted()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    ids, mask = batch()
    sequence_logprobs(model, ids, mask, P)[0].sum().backward()
    optimizer.step()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    lora = {k for k in before if "lora_A" in k or "lora_B" in k}
    # 2 layers x 7 projections x (A, B) = 28 adapter tensors, every one moved; nothing else did.
    assert len(lora) == 28
    assert changed == lora


def test_adapters_off_is_the_base_model_exactly():
    base = base_model()
    model = apply_lora(copy.deepcopy(base), rank=4, init_identity=False)
    ids, mask = batch()
    reference = reference_logprobs(model, ids, mask, P)
    assert torch.equal(reference, logprobs(base, ids, mask))  # W x, the same ops
    # Control: with the adapters on the log-probs are far from the base's.
    assert float((logprobs(model, ids, mask) - reference).abs().max()) > 1e-2


def test_merged_export_equals_the_adapted_model_and_leaves_it_untouched():
    # An untied head: on a tied one the merged head would also be the embedding (refused).
    model = adapted(untied=True, target_modules=("q_proj", "v_proj", "down_proj", "lm_head"))
    ids, mask = batch()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    merged = merged_copy(model)
    assert not any("lora" in k for k in merged.state_dict())
    assert type(merged).__name__ == "LlamaForCausalLM"
    # (W + s B A) x against W x + s B (A x): float64 reassociation, ~1e-15 relative.
    torch.testing.assert_close(
        logprobs(merged, ids, mask), logprobs(model, ids, mask), rtol=0, atol=1e-10
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_bf16_export_never_rounds_the_base_in_place():
    model = adapted(dtype=torch.bfloat16)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        merged = merged_copy(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert next(merged.parameters()).dtype == torch.bfloat16
    # The copy merges in float32 and rounds once: W + s B A to bf16 at most half an ulp off.
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    exact = layer.base_layer.weight.float() + layer.scaling["default"] * (
        layer.lora_B["default"].weight.float() @ layer.lora_A["default"].weight.float()
    )
    got = merged.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(got, exact.to(torch.bfloat16))


def test_adapter_state_round_trips_in_memory_and_on_disk(tmp_path):
    model = adapted(seed=1)
    state = adapter_state_dict(model)
    assert len(state) == 28 and all("lora_A" in k or "lora_B" in k for k in state)
    ids, mask = batch()
    want = logprobs(model, ids, mask)
    other = adapted(seed=2)
    assert not torch.equal(logprobs(other, ids, mask), want)
    load_adapter_state_dict(other, state)
    assert torch.equal(logprobs(other, ids, mask), want)
    save_adapter(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # adapters only
    loaded = load_adapter(base_model(), tmp_path / "adapter")
    assert torch.equal(logprobs(loaded, ids, mask), want)
    assert any(p.requires_grad for p in loaded.parameters())


def test_unknown_target_module_names_the_fix():
    with pytest.raises(ValueError, match="target_modules"):
        apply_lora(base_model(), target_modules=("query",))
    with pytest.raises(ValueError, match="ties lm_head"):
        apply_lora(base_model(), target_modules=("q_proj", "lm_head"))
