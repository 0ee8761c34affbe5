"""The optimizer-step gradient does not depend on the micro-batch size (a memory setting only),
for every aggregation mode, with and without the KL term and old log-probs."""

from __future__ import annotations

import pytest
import torch

from drgrpo.config import OptimConfig
from drgrpo.models import build_model
from drgrpo.objective import resolve_objective
from drgrpo.train.update import TrainBatch, accumulate_gradients, normalizer_for, run_updates

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
        loss_mask=response_mask,
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
        assert int(part.loss_mask[i].sum()) == int(batch.loss_mask[row].sum())
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
    optim = OptimConfig(updates_per_rollout=2, mini_batches=2, max_grad_norm=1.0)
    out = run_updates(model, opt, sched, bad, spec, optim, max_tokens=7, temperature=1.0,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out["skipped_steps"] == 4 and out["optimizer_steps"] == 4
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b.detach())


def test_policy_loss_is_a_mean_over_optimizer_steps_not_a_sum():
    """With lr = 0 every optimizer step sees the same policy, so each of the 2 x 2 steps has
    the loss of its mini-batch. Under Dr.GRPO's sum / N, a mini-batch of 4 of the 8 rows has
    loss S_mb / 4, and the two of a pass average to (S_1 + S_2) / 8: the whole batch's loss,
    whatever the shuffle. The reported loss is that mean (the old sum was 4x it)."""
    spec = resolve_objective("dr_grpo")
    batch = random_batch(kl=False)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    optim = OptimConfig(updates_per_rollout=2, mini_batches=2, max_grad_norm=0.0)
    out = run_updates(model, opt, sched, batch, spec, optim, max_tokens=7, temperature=1.0,
                      generator=torch.Generator().manual_seed(0), group_size=2)  # fmt: skip
    want = accumulate_gradients(model, batch, spec, normalizer_for(spec, batch, 7))["loss"]
    assert out["optimizer_steps"] == 4
    assert out["loss"] == pytest.approx(want, rel=1e-12)


def test_mini_batches_hold_whole_groups():
    from drgrpo.train.update import _mini_batch_rows

    rows = _mini_batch_rows(6, 4, 3, torch.Generator().manual_seed(1))
    assert sorted(torch.cat(rows).tolist()) == list(range(24))
    for part in rows:
        groups = {int(r) // 4 for r in part}
        assert len(part) == 8 and len(groups) == 2  # two complete groups of 4 rows each
