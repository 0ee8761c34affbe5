"""Length bucketing in sequence_logprobs: same numbers as one padded batch, less padding."""

import pytest
import torch

from drgrpo.models import logprobs as lp
from drgrpo.models import sequence_logprobs

PAD = 0


def ragged_batch(n, p_max, t_max, seed=0):
    """n rows: left-padded prompts of 2..p_max tokens, right-padded responses of 1..t_max."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((n, p_max + t_max), PAD)
    mask = torch.zeros((n, p_max + t_max), dtype=torch.bool)
    for i in range(n):
        p = int(torch.randint(2, p_max + 1, (), generator=g))
        t = int(torch.randint(1, t_max + 1, (), generator=g))
        ids[i, p_max - p : p_max + t] = torch.randint(3, 90, (p + t,), generator=g)
        ids[i, p_max - p] = 1  # BOS
        mask[i, p_max - p : p_max + t] = True
    return ids, mask, p_max


def test_buckets_cover_every_row_once_and_save_tokens():
    ids, mask, p = ragged_batch(64, 8, 40)
    groups = lp.length_buckets(mask, p)
    assert len(groups) > 1 and all(len(g) >= lp.BUCKET_MIN_ROWS for g in groups)
    assert sorted(torch.cat(groups).tolist()) == list(range(64))
    padded = 64 * mask.shape[1]
    cut = sum(len(g) * int(mask[g].any(0).sum()) for g in groups)
    assert cut < 0.8 * padded


def test_uniform_lengths_stay_one_batch():
    mask = torch.ones((64, 20), dtype=torch.bool)
    assert len(lp.length_buckets(mask, 8)) == 1


def test_small_batches_are_never_split():
    ids, mask, p = ragged_batch(2 * lp.BUCKET_MIN_ROWS - 1, 8, 40)
    assert len(lp.length_buckets(mask, p)) == 1


@pytest.mark.parametrize("with_entropy", [False, True])
def test_bucketed_equals_one_padded_batch(model64, monkeypatch, with_entropy):
    ids, mask, p = ragged_batch(40, 6, 24, seed=1)
    params = [q for q in model64.parameters() if q.requires_grad]
    weights = torch.randn(ids.shape[0], ids.shape[1] - p, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(2))  # fmt: skip

    def run():
        logp, entropy = sequence_logprobs(model64, ids, mask, p, temperature=0.7,
                                          with_entropy=with_entropy)  # fmt: skip
        loss = (logp * weights).sum() + (0.1 * entropy.sum() if with_entropy else 0.0)
        return logp, entropy, torch.autograd.grad(loss, params)

    monkeypatch.setattr(lp, "BUCKET_MIN_ROWS", 8)
    assert len(lp.length_buckets(mask, p)) > 1
    got = run()
    monkeypatch.setattr(lp, "BUCKET_MIN_ROWS", 10**9)
    want = run()
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    if with_entropy:
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-12)
    for g, w in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
