"""HFRolloutEngine against slow, obviously-correct references, plus the Rollouts invariants."""

import pytest
import torch

from drgrpo.models import build_model, sequence_logprobs
from drgrpo.rollout import HFRolloutEngine
from drgrpo.rollout.hf import _nucleus

PAD, BOS, EOS = 0, 1, 2
# Prompts of different lengths so the batch is really left-padded.
PROMPTS = [[BOS, 20, 15, 21, 33], [BOS, 22], [BOS, 23, 15, 24], [BOS]]


def naive_greedy(model, prompt, max_new_tokens):
    """No cache, no padding: rerun the whole sequence and take the argmax (pad excluded)."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        logits[PAD] = -torch.inf
        ids.append(int(logits.argmax()))
        if ids[-1] == EOS:
            break
    return ids[len(prompt) :]


def rows(rollouts):
    """Each row's response tokens inside the mask."""
    return [
        r[:n]
        for r, n in zip(
            rollouts.response_ids.tolist(), rollouts.response_lengths.tolist(), strict=True
        )
    ]


def with_eos_bias(model, bonus):
    """An lm_head bias on EOS: makes rows stop at varied lengths (or at once) in a random model."""
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size, dtype=model.dtype))
    with torch.no_grad():
        model.lm_head.bias[EOS] = bonus
    return model


@pytest.fixture()
def engine64(model64):
    return HFRolloutEngine(model64, EOS, PAD)


def test_greedy_equals_naive_argmax_loop(engine64, model64):
    out = engine64.generate(PROMPTS, max_new_tokens=12, temperature=0.0)
    assert rows(out) == [naive_greedy(model64, p, 12) for p in PROMPTS]


def test_batched_left_padded_greedy_equals_unbatched(engine64):
    batched = rows(engine64.generate(PROMPTS, max_new_tokens=10, temperature=0.0))
    alone = [rows(engine64.generate([p], max_new_tokens=10, temperature=0.0))[0] for p in PROMPTS]
    assert batched == alone


def test_tiny_top_p_is_greedy(engine64):
    greedy = engine64.generate(PROMPTS, max_new_tokens=10, temperature=0.0)
    nucleus = engine64.generate(PROMPTS, max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=3)
    assert torch.equal(greedy.response_ids, nucleus.response_ids)


def test_seeded_sampling_is_reproducible(engine64):
    a = engine64.generate(PROMPTS * 4, max_new_tokens=16, seed=11)
    b = engine64.generate(PROMPTS * 4, max_new_tokens=16, seed=11)
    c = engine64.generate(
        PROMPTS * 4, max_new_tokens=16, generator=torch.Generator().manual_seed(11)
    )
    d = engine64.generate(PROMPTS * 4, max_new_tokens=16, seed=12)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(
        a.response_ids, c.response_ids
    )
    assert torch.equal(a.sampler_logprobs, b.sampler_logprobs)
    assert not torch.equal(a.response_ids, d.response_ids)


def test_masks_eos_padding_and_finish_reasons(tokenizer):
    # EOS bonus e^2.5 ~ 12x: about 1 in 9 tokens is EOS, so 64 rows x 24 tokens mix both reasons.
    model = with_eos_bias(build_model("tiny", len(tokenizer), num_hidden_layers=1), 2.5)
    out = HFRolloutEngine(model, EOS, PAD).generate(PROMPTS * 16, max_new_tokens=24, seed=0)
    mask, ids, lengths = out.response_mask, out.response_ids, out.response_lengths
    assert set(out.finish_reason) == {"stop", "length"}
    assert mask.dtype == torch.bool and out.prompt_mask.dtype == torch.bool
    # The mask is a prefix per row: never True after a False.
    assert torch.equal(mask, torch.arange(ids.shape[1])[None] < lengths[:, None])
    assert torch.all(ids[~mask] == PAD) and torch.all(ids[mask] != PAD)
    assert torch.all(out.sampler_logprobs[~mask] == 0) and torch.all(out.sampler_logprobs[mask] < 0)
    for row, reason, n in zip(ids.tolist(), out.finish_reason, lengths.tolist(), strict=True):
        eos_at = [t for t, token in enumerate(row[:n]) if token == EOS]
        # EOS is inside the mask, as the last real token, exactly when the row stopped.
        assert eos_at == ([n - 1] if reason == "stop" else [])
        assert reason == "stop" or n == 24
    # Prompts: left-padded, BOS last-aligned, pad outside the mask only.
    assert torch.all(out.prompt_ids[~out.prompt_mask] == PAD)
    assert out.prompt_mask[:, -1].all() and out.prompt_mask.sum(1).tolist()[:4] == [5, 2, 4, 1]


def test_stops_early_when_every_row_has_finished(tokenizer):
    model = with_eos_bias(build_model("tiny", len(tokenizer), num_hidden_layers=1), 100.0)
    out = HFRolloutEngine(model, EOS, PAD).generate(PROMPTS, max_new_tokens=50, seed=0)
    assert out.response_ids.shape == (4, 1) and out.finish_reason == ["stop"] * 4
    assert torch.all(out.response_ids == EOS)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_sampler_logprobs_equal_recomputed_logprobs(tokenizer, temperature, top_p):
    model = with_eos_bias(
        build_model("tiny", len(tokenizer), num_hidden_layers=2, initializer_range=0.3), 2.0
    )
    out = HFRolloutEngine(model, EOS, PAD).generate(
        PROMPTS * 4, max_new_tokens=16, temperature=temperature, top_p=top_p, seed=5
    )
    # Greedy rollouts report log-probs at temperature 1 (see Rollouts.sampler_logprobs).
    with torch.no_grad():
        recomputed, _ = sequence_logprobs(
            model, out.input_ids, out.attention_mask, out.response_start,
            temperature=temperature or 1.0,
        )  # fmt: skip
    torch.testing.assert_close(out.sampler_logprobs, recomputed, rtol=0, atol=1e-4)


def test_rollouts_can_enter_autograd(tokenizer):
    """Tensors made under inference_mode raise once saved for backward; the engine copies them."""
    model = build_model("tiny", len(tokenizer), num_hidden_layers=1)
    out = HFRolloutEngine(model, EOS, PAD).generate(PROMPTS, max_new_tokens=4, seed=0)
    logp, _ = sequence_logprobs(model, out.input_ids, out.attention_mask, out.response_start)
    ratio = torch.exp(logp - out.sampler_logprobs)
    (ratio * out.sampler_logprobs * out.response_mask).sum().backward()
    assert model.lm_head.weight.grad is not None


def test_training_mode_is_restored(engine64, model64):
    model64.train()
    engine64.generate(PROMPTS, max_new_tokens=2, seed=0)
    assert model64.training
    model64.eval()
    engine64.generate(PROMPTS, max_new_tokens=2, seed=0)
    assert not model64.training


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    probs = torch.tensor([[0.125, 0.5, 0.0625, 0.3125]])  # dyadic: sums are exact
    # Sorted: 0.5, 0.3125, 0.125, 0.0625 with mass before each 0, 0.5, 0.8125, 0.9375.
    assert _nucleus(probs, 0.7).tolist() == [[0.0, 0.5, 0.0, 0.3125]]
    assert _nucleus(probs, 0.8125).tolist() == [[0.0, 0.5, 0.0, 0.3125]]
    assert _nucleus(probs, 0.82).tolist() == [[0.125, 0.5, 0.0, 0.3125]]
    assert _nucleus(probs, 1e-9).tolist() == [[0.0, 0.5, 0.0, 0.0]]
    # Mass already removed (the banned pad) scales the threshold: 0.5 of 0.5 keeps one token.
    assert _nucleus(torch.tensor([[0.0, 0.25, 0.125, 0.125]]), 0.5).tolist() == [
        [0.0, 0.25, 0.0, 0.0]
    ]


def test_sampling_frequencies_follow_the_tempered_softmax(engine64):
    logits = torch.log(torch.tensor([[1e-9, 0.1, 0.2, 0.7]])).repeat(20000, 1)
    tokens, logprobs = engine64._sample(logits, 0.5, 1.0, torch.Generator().manual_seed(0))
    # Temperature 0.5 squares the probabilities: 0.01, 0.04, 0.49 normalised by 0.54.
    want = torch.tensor([0.0, 0.01, 0.04, 0.49]) / 0.54
    freq = torch.bincount(tokens, minlength=4) / 20000
    torch.testing.assert_close(freq, want, rtol=0, atol=0.01)
    torch.testing.assert_close(logprobs[:4], want.log()[tokens[:4]], rtol=0, atol=1e-6)


def test_rejects_bad_arguments(engine64):
    with pytest.raises(ValueError, match="stop id"):
        HFRolloutEngine(engine64.model, [], PAD)
    with pytest.raises(ValueError, match="at least one token"):
        engine64.generate([[BOS], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        engine64.generate([[BOS]], max_new_tokens=600)
    with pytest.raises(ValueError, match="not both"):
        engine64.generate([[BOS]], max_new_tokens=2, seed=1, generator=torch.Generator())


def test_stops_on_any_id_of_the_set_and_the_mask_keeps_that_stop(engine64):
    """Greedy rows end at the first token that is in the stop set; the stop token is inside the
    response mask, nothing after it is, and finish_reason says stop."""
    prompts = [[BOS, 20 + i] for i in range(6)]
    free = engine64.generate(prompts, max_new_tokens=12, temperature=0)
    # Whatever greedy would emit first on each row becomes a stop id, plus the real EOS.
    stops = {EOS, *free.response_ids[:, 0].tolist()} - {PAD}
    out = HFRolloutEngine(engine64.model, stops, PAD).generate(prompts, max_new_tokens=12,
                                                              temperature=0)  # fmt: skip
    for row in range(len(prompts)):
        ids = out.response_ids[row][out.response_mask[row]].tolist()
        assert ids[-1] in stops and not set(ids[:-1]) & stops
        assert out.finish_reason[row] == "stop"
        assert ids == free.response_ids[row, : len(ids)].tolist()  # same tokens up to the stop


def test_pad_equal_to_eos_is_allowed_and_a_non_stop_pad_is_never_sampled(engine64):
    """pad == eos (Qwen2.5-Math): the row stops on it and keeps it in the mask. A pad id that is
    not a stop id is banned from sampling even when the model favours it."""
    prompts = [[BOS, 30 + i] for i in range(4)] * 4
    same = HFRolloutEngine(engine64.model, EOS, EOS).generate(prompts, max_new_tokens=16, seed=0)
    ref = HFRolloutEngine(engine64.model, EOS, PAD).generate(prompts, max_new_tokens=16, seed=0)
    assert torch.equal(same.response_mask, ref.response_mask)
    assert same.finish_reason == ref.finish_reason
    # Make PAD the model's favourite token: it must still never appear inside a response.
    import copy

    biased = copy.deepcopy(engine64.model)
    with torch.no_grad():
        ids = torch.tensor(prompts)
        hidden = biased.model(input_ids=ids).last_hidden_state.flatten(0, 1)  # (rows*cols, h)
        direction = hidden.mean(0)
        biased.get_output_embeddings().weight[PAD] = 40 * direction / direction.norm() ** 2
    # Control: where pad is a stop id it is not banned, and the biased model does pick it.
    control = HFRolloutEngine(biased, [EOS, PAD], PAD).generate(prompts, max_new_tokens=8,
                                                                temperature=0)  # fmt: skip
    assert (control.response_ids[:, 0] == PAD).float().mean() > 0.5
    out = HFRolloutEngine(biased, EOS, PAD).generate(prompts, max_new_tokens=8, seed=0)
    assert not (out.response_ids[out.response_mask] == PAD).any()
    greedy = HFRolloutEngine(biased, EOS, PAD).generate(prompts, max_new_tokens=8, temperature=0)
    assert not (greedy.response_ids[greedy.response_mask] == PAD).any()
