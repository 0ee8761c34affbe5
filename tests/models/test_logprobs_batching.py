"""How sequence_logprobs batches an RL batch: shared prompts and length buckets.

Both are work-saving rewrites of one padded forward (`_padded_logprobs`, which
test_logprobs.py checks against a per-row full log-softmax): same values and same gradients.
"""

import pytest
import torch

from drgrpo.models import logprobs as lp
from drgrpo.models import sequence_logprobs
from drgrpo.models.forward import LogprobModel

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


def scored(model, ids, mask, p, *, seed, **kwargs):
    """A function computing (logprobs, entropy, gradient of a fixed random weighting of both)."""
    params = [q for q in model.parameters() if q.requires_grad]
    weights = torch.randn(ids.shape[0], ids.shape[1] - p, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(seed))  # fmt: skip

    def run():
        logp, entropy = sequence_logprobs(model, ids, mask, p, **kwargs)
        loss = (logp * weights).sum() + (0.1 * entropy.sum() if entropy is not None else 0.0)
        return logp, entropy, torch.autograd.grad(loss, params)

    return run


@pytest.mark.parametrize("with_entropy", [False, True])
def test_bucketed_equals_one_padded_batch(model64, monkeypatch, with_entropy):
    ids, mask, p = ragged_batch(40, 6, 24, seed=1)
    run = scored(model64, ids, mask, p, seed=2, temperature=0.7, with_entropy=with_entropy)

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


def grouped_batch(prompts, k, t_max, seed=0):
    """Each prompt repeated k times (a group), responses of 1..t_max tokens, padded as rollouts."""
    g = torch.Generator().manual_seed(seed)
    p_max = max(len(p) for p in prompts)
    n = len(prompts) * k
    ids = torch.full((n, p_max + t_max), PAD)
    mask = torch.zeros((n, p_max + t_max), dtype=torch.bool)
    for i in range(n):
        prompt = prompts[i // k]
        t = int(torch.randint(1, t_max + 1, (), generator=g))
        ids[i, p_max - len(prompt) : p_max] = torch.tensor(prompt)
        ids[i, p_max : p_max + t] = torch.randint(3, 90, (t,), generator=g)
        mask[i, p_max - len(prompt) : p_max + t] = True
    return ids, mask, p_max


PROMPTS = [[1, 20, 15, 21, 33], [1, 22], [1, 23, 15, 24]]


def test_shared_prompts_are_found_once_each():
    ids, mask, p = grouped_batch(PROMPTS, 4, 6)
    unique_ids, unique_mask, which = lp.shared_prompts(ids, mask, p)
    assert unique_ids.shape == (3, 5) and unique_mask.sum(1).tolist() == sorted([5, 2, 4])
    # Every row maps to a distinct prompt equal to its own (padding columns cut: none here).
    for row in range(12):
        assert torch.equal(
            unique_ids[which[row]][unique_mask[which[row]]], ids[row, :p][mask[row, :p]]
        )
    # Distinct prompts only: nothing to share.
    assert lp.shared_prompts(ids[::4], mask[::4], p) is None


@pytest.mark.parametrize("min_rows", [8, 10**9])  # with and without length buckets
def test_shared_prompts_equal_one_padded_batch(model64, monkeypatch, min_rows):
    monkeypatch.setattr(lp, "BUCKET_MIN_ROWS", min_rows)
    ids, mask, p = grouped_batch(PROMPTS * 2, 4, 12, seed=3)  # 24 rows, 3 distinct prompts
    params = [q for q in model64.parameters() if q.requires_grad]
    weights = torch.randn(ids.shape[0], ids.shape[1] - p, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(4))  # fmt: skip

    def grads(logp, entropy):
        return torch.autograd.grad((logp * weights).sum() + 0.1 * entropy.sum(), params)

    got = sequence_logprobs(model64, ids, mask, p, temperature=0.8, with_entropy=True)
    want = LogprobModel(model64)._padded(ids, mask, p, 0.8, 1024, True)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-12)
    # Sharing a prompt sums its K rows' gradients before the prompt's backward instead of after.
    # HF's RMSNorm runs in float32 even in a float64 model, so the two orders differ by float32
    # round-off (measured 1.5e-6 relative): the bound is 1e-5 of the gradient's norm. A prompt
    # whose keys/values or last hidden state lost their gradient is off by > 1e-2.
    got_g, want_g = (
        torch.cat([g.flatten() for g in grads(*got)]),
        torch.cat([g.flatten() for g in grads(*want)]),
    )
    assert float((got_g - want_g).norm() / want_g.norm()) < 1e-5


def test_one_token_responses_need_no_response_forward(model64):
    ids, mask, p = grouped_batch(PROMPTS, 4, 1)
    got, _ = sequence_logprobs(model64, ids, mask, p)
    want, _ = LogprobModel(model64)._padded(ids, mask, p, 1.0, 1024, False)
    assert got.shape == (12, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_vocabulary_tiles_equal_whole_logits(model64, monkeypatch, temperature):
    """A large vocabulary is cut into tiles with an online log-sum-exp (and entropy): with tiles
    of 7 columns over V=100 (15 tiles, the last one ragged) it must give the whole-row numbers,
    the head bias and the entropy's gradient included."""
    # model64 is shared by the session: the bias comes off again at the end.
    model64.lm_head.bias = torch.nn.Parameter(
        torch.linspace(-1, 1, model64.config.vocab_size, dtype=torch.float64)
    )
    try:
        _check_tiles_against_whole_logits(model64, monkeypatch, temperature)
    finally:
        model64.lm_head.bias = None


def _check_tiles_against_whole_logits(model64, monkeypatch, temperature):
    ids, mask, p = ragged_batch(6, 5, 9, seed=5)
    run = scored(model64, ids, mask, p, seed=6, temperature=temperature, chunk_size=4,
                 with_entropy=True)  # fmt: skip

    want = run()
    monkeypatch.setattr(lp, "CHUNK_BYTES", 4 * 4 * 7)  # 4 rows x 7 columns of fp32
    monkeypatch.setattr(lp, "MIN_TILE", 1)
    assert lp._vocab_tile(4, model64.config.vocab_size) == 7
    got = run()
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-12)
    for g, w in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
