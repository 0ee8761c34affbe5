"""sequence_logprobs (batched, padded, chunked, checkpointed) against a per-row full log_softmax."""

import pytest
import torch

from drgrpo.models import sequence_logprobs

PAD = 0
# (prompt, response) token ids; prompts start with BOS=1, responses may end with EOS=2.
ROWS = [
    ([1, 20, 15, 21, 33], [30, 31, 2]),
    ([1, 22], [40, 41, 42, 43, 44]),
    ([1, 23, 15, 24], [50]),
]


def padded_batch(rows):
    """Left-padded prompts + right-padded responses, as the rollout engine lays them out."""
    p = max(len(prompt) for prompt, _ in rows)
    t = max(len(response) for _, response in rows)
    ids = torch.full((len(rows), p + t), PAD)
    mask = torch.zeros((len(rows), p + t), dtype=torch.bool)
    for i, (prompt, response) in enumerate(rows):
        ids[i, p - len(prompt) : p + len(response)] = torch.tensor(prompt + response)
        mask[i, p - len(prompt) : p + len(response)] = True
    return ids, mask, p


def naive_logprobs(model, prompt, response, temperature=1.0):
    """One unpadded row, default positions, full-vocabulary log_softmax: obviously correct."""
    ids = torch.tensor([prompt + response])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].double() / temperature
    logp = logits.log_softmax(-1)
    token_logp = logp.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return token_logp, entropy


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_naive_row_by_row(model64, chunk_size, temperature):
    ids, mask, p = padded_batch(ROWS)
    logp, entropy = sequence_logprobs(
        model64, ids, mask, p, temperature=temperature, chunk_size=chunk_size, with_entropy=True
    )
    assert logp.shape == entropy.shape == (3, 5) and logp.dtype == torch.float64
    for i, (prompt, response) in enumerate(ROWS):
        want_logp, want_entropy = naive_logprobs(model64, prompt, response, temperature)
        n = len(response)
        torch.testing.assert_close(logp[i, :n], want_logp, rtol=0, atol=1e-10)
        torch.testing.assert_close(entropy[i, :n], want_entropy, rtol=0, atol=1e-10)
        # Padding after the response is exactly 0, not the log-prob of a pad token.
        assert torch.all(logp[i, n:] == 0) and torch.all(entropy[i, n:] == 0)


@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
def test_gradient_matches_naive(model64, chunk_size):
    params = [p for p in model64.parameters() if p.requires_grad]
    ids, mask, p = padded_batch(ROWS)
    # Arbitrary per-token weights, like advantages: a zero-weight-free check of every position.
    weights = torch.linspace(-1.0, 2.0, 15, dtype=torch.float64).reshape(3, 5)
    logp, entropy = sequence_logprobs(
        model64, ids, mask, p, chunk_size=chunk_size, with_entropy=True
    )
    got = torch.autograd.grad((logp * weights).sum() + 0.1 * entropy.sum(), params)

    naive_loss = 0.0
    for i, (prompt, response) in enumerate(ROWS):
        want_logp, want_entropy = naive_logprobs(model64, prompt, response)
        naive_loss = naive_loss + (want_logp * weights[i, : len(response)]).sum()
        naive_loss = naive_loss + 0.1 * want_entropy.sum()
    want = torch.autograd.grad(naive_loss, params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_head_never_sees_more_than_chunk_size_rows(model64):
    """The (rows, V) logits exist one chunk at a time, in forward and in the backward recompute."""
    seen = []
    hook = model64.lm_head.register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    try:
        ids, mask, p = padded_batch(ROWS)
        logp, _ = sequence_logprobs(model64, ids, mask, p, chunk_size=4)
        forward_calls = len(seen)
        logp.sum().backward()
    finally:
        hook.remove()
        model64.zero_grad(set_to_none=True)
    # 3 rows x 5 response columns = 15 rows -> chunks of 4, 4, 4, 3; each recomputed once in
    # backward (which visits them last chunk first).
    assert seen[:forward_calls] == [4, 4, 4, 3]
    assert seen[forward_calls:] == [3, 4, 4, 4]


def test_no_grad_path_gives_the_same_values(model64):
    ids, mask, p = padded_batch(ROWS)
    with_grad, _ = sequence_logprobs(model64, ids, mask, p, chunk_size=4)
    with torch.no_grad():
        without, _ = sequence_logprobs(model64, ids, mask, p, chunk_size=4)
    assert torch.equal(with_grad.detach(), without)
    assert sequence_logprobs(model64, ids, mask, p)[1] is None


def test_rejects_bad_arguments(model64):
    ids, mask, p = padded_batch(ROWS)
    with pytest.raises(ValueError, match="response_start"):
        sequence_logprobs(model64, ids, mask, 0)
    with pytest.raises(ValueError, match="temperature"):
        sequence_logprobs(model64, ids, mask, p, temperature=0.0)


def _checkpointing_grads(model64, ids, mask):
    import copy

    out = []
    for checkpoint in (False, True):
        model = copy.deepcopy(model64).train()
        if checkpoint:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        logprobs, _ = sequence_logprobs(model, ids, mask, 5)
        (logprobs * torch.linspace(-1, 1, 4, dtype=logprobs.dtype)).sum().backward()
        out.append((logprobs.detach(), [p.grad.clone() for p in model.parameters()]))
    return out


def test_gradient_checkpointing_gives_the_same_log_probs_and_gradients(model64):
    """Activation checkpointing is a memory setting only: same log-probs, same gradients."""
    torch.manual_seed(0)
    ids = torch.randint(4, 90, (4, 9))  # distinct prompts: the same path with and without
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 7:] = False
    (a, grads_a), (b, grads_b) = _checkpointing_grads(model64, ids, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for x, y in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def test_gradient_checkpointing_skips_the_shared_prompt_path(model64):
    """Rows sharing a prompt: HF turns the layers' cache off under checkpointing, so the shared-
    prompt path (which needs it) must not run; every row runs its own prompt instead. The two
    paths differ only by HF's float32 RMSNorm rounding (~1e-6), not by a wrong cache."""
    from drgrpo.models.forward import activation_checkpointing

    torch.manual_seed(0)
    ids = torch.randint(4, 90, (6, 9))
    ids[:3, :5] = ids[0, :5]
    ids[3:, :5] = ids[3, :5]
    mask = torch.ones_like(ids, dtype=torch.bool)
    (a, grads_a), (b, grads_b) = _checkpointing_grads(model64, ids, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for x, y in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    assert not activation_checkpointing(model64.eval())
