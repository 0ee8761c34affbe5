"""The optimizer-step gradient does not depend on the micro-batch size (a memory setting only),
for every aggregation mode, with and without the KL term and old log-probs."""

from __future__ import annotations

import pytest
import torch

from drgrpo.models import build_model
from drgrpo.objective import resolve_objective
from drgrpo.train.step import TrainBatch, accumulate_gradients, normalizer_for, run_updates

MODES = [
    ("seq_mean_token_mean", "num_sequences"),
    ("token_mean", "num_sequences"),
    ("constant", "num_sequences"),
    ("constant", "num_sequences_x_max_tokens"),
]


def tiny_model() -> torch.nn.Module:
    model = build_model("tiny", vocab_size=40, seed=0, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    return model.double()


def random_batch(seed: int = 0, n: int = 8, p: int = 5, t: int = 7, kl: bool = True) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(1, p + 1, (n,), generator=g)
    resp_lens = torch.randint(1, t + 1, (n,), generator=g)
    prompt_mask = torch.arange(p).flip(0).unsqueeze(0) < prompt_lens.unsqueeze(1)  # left-padded
    response_mask = torch.arange(t).unsqueeze(0) < resp_lens.unsqueeze(1)  # right-padded
    ids = torch.randint(4, 40, (n, p + t), generator=g)
    attention = torch.cat([prompt_mask, response_mask], dim=1)
    ids = torch.where(attention, ids, torch.zeros_like(ids))
    return TrainBatch(
        input_ids=ids,
        attention_mask=attention,
        response_start=p,
        response_mask=response_mask,
        advantages=torch.randn(n, generator=g, dtype=torch.float64),
        old_logprobs=-torch.rand(n, t, generator=g, dtype=torch.float64) * 4,
        ref_logprobs=-torch.rand(n, t, generator=g, dtype=torch.float64) * 4 if kl else None,
    )


def grads_for(batch: TrainBatch, spec, micro: int) -> list[torch.Tensor]:
    model = tiny_model()
    z = normalizer_for(spec, batch, max_tokens=7)
    accumulate_gradients(model, batch, spec, z, micro_batch_size=micro, with_entropy=False)
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("aggregation,constant", MODES)
@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_gradient_same_for_any_micro_batch_size(aggregation, constant, kl_coef):
    spec = resolve_objective("dr_grpo", aggregation=aggregation, constant_normalizer=constant,
                             kl_coef=kl_coef)  # fmt: skip
    batch = random_batch(kl=kl_coef > 0)
    whole = grads_for(batch, spec, micro=0)
    assert sum(float(g.abs().sum()) for g in whole) > 0  # the comparison below is not vacuous
    for micro in (1, 3, 5):
        split = grads_for(batch, spec, micro=micro)
        for a, b in zip(whole, split, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_select_cuts_padding_without_changing_the_loss():
    spec = resolve_objective("grpo")
    batch = random_batch(seed=3)
    part = batch.select(torch.tensor([1, 4]))
    assert part.input_ids.shape[1] <= batch.input_ids.shape[1]
    # Every kept row keeps all of its real tokens.
    for i, row in enumerate([1, 4]):
        assert int(part.attention_mask[i].sum()) == int(batch.attention_mask[row].sum())
        assert int(part.response_mask[i].sum()) == int(batch.response_mask[row].sum())
    z = normalizer_for(spec, batch, max_tokens=7)
    m1, m2 = tiny_model(), tiny_model()
    full = accumulate_gradients(m1, batch.select(torch.tensor([1, 4])), spec, z, with_entropy=False)
    ref = TrainBatch(**{**batch.__dict__, **{
        k: v[[1, 4]] for k, v in batch.__dict__.items() if isinstance(v, torch.Tensor)}})  # fmt: skip
    uncut = accumulate_gradients(m2, ref, spec, z, with_entropy=False)
    assert full["loss"] == pytest.approx(uncut["loss"], rel=1e-12, abs=1e-14)


def test_nonfinite_step_is_skipped_and_parameters_do_not_move():
    spec = resolve_objective("dr_grpo")
    batch = random_batch(kl=False)
    bad = TrainBatch(**{**batch.__dict__, "advantages": batch.advantages * float("nan")})
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    out = run_updates(model, opt, sched, bad, spec, updates_per_rollout=2, mini_batches=2,
                      micro_batch_size=0, max_grad_norm=1.0, max_tokens=7, temperature=1.0,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out["skipped_steps"] == 4 and out["optimizer_steps"] == 4
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b.detach())
