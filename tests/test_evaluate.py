import itertools
from math import comb

import pytest
import torch
from rich.console import Console

from drgrpo.app.tables import format_eval_table
from drgrpo.eval.evaluate import evaluate, pass_at_k
from drgrpo.models import build_model, build_tokenizer
from drgrpo.rollout import HFRolloutEngine, TokenRule, pack_rollouts
from drgrpo.tasks import Example as TaskExample
from drgrpo.tasks.scoring import RewardScorer

# As in tests/models/conftest.py: one intra-op thread is far faster on a shared 2-core machine.
torch.set_num_threads(1)
TOK = build_tokenizer()
PAD, BOS, EOS = TOK.pad_token_id, TOK.bos_token_id, TOK.eos_token_id
RULE = TokenRule.from_tokenizer(TOK)


def protected(verify, timeout_s: float = 5.0):
    """`verify` behind the scorer evaluation uses (faults score 0 and are counted)."""
    return RewardScorer(verify, timeout_s).grade


def Example(prompt: str, reference: str) -> TaskExample:  # noqa: N802 - reads like the class
    return TaskExample(prompt, reference, None, {})


def exact(completion: str, reference: str) -> float:
    return float(completion == reference)


def brute_force_pass_at_k(n, c, k):
    """Share of k-subsets of n samples (the first c correct) holding at least one correct."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration_of_all_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_stays_finite_for_large_n():
    # C(1000, 500) overflows a float; the product form does not need it.
    want = 1 - comb(900, 500) / comb(1000, 500)
    assert pass_at_k(1000, 100, 500) == pytest.approx(want, rel=1e-12)
    assert pass_at_k(10, 0, 3) == 0.0 and pass_at_k(10, 10, 1) == 1.0


def test_pass_at_k_rejects_bad_arguments():
    for n, c, k in [(4, 1, 5), (4, 5, 1), (4, 1, 0), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


class ScriptedEngine:
    """Answers each prompt with the next completion from a per-prompt script; logs every call."""

    def __init__(self, script, greedy):
        self.script = {p: iter(answers) for p, answers in script.items()}
        self.greedy = greedy
        self.calls = []

    def generate(
        self, prompt_ids, *, max_new_tokens, temperature, top_p, seed=None, generator=None
    ):
        self.calls.append((len(prompt_ids), temperature, seed))
        texts = [
            self.greedy[TOK.decode(p[1:])]
            if temperature == 0
            else next(self.script[TOK.decode(p[1:])])
            for p in prompt_ids
        ]
        assert all(p[0] == BOS and BOS not in p[1:] for p in prompt_ids)
        responses, finish = [], []
        for text in texts:
            ids = TOK.encode(text, add_special_tokens=False)
            stop = len(ids) < max_new_tokens
            responses.append(ids + [EOS] if stop else ids[:max_new_tokens])
            finish.append("stop" if stop else "length")
        logprobs = [[-1.0] * len(r) for r in responses]
        return pack_rollouts(prompt_ids, responses, logprobs, finish, PAD)

    def sync_weights(self, model):
        pass


def test_evaluate_counts_by_hand():
    examples = [Example("1+1=", "2"), Example("2+3=", "5")]
    engine = ScriptedEngine(
        # "123456" is 6 characters: with max_new_tokens=6 it is truncated ("length").
        script={"1+1=": ["2", "3", "2", "11"], "2+3=": ["4", "123456", "6", "7"]},
        greedy={"1+1=": "2", "2+3=": "4"},
    )
    result = evaluate(
        engine, TOK, RULE, examples, protected(exact), num_samples=4, ks=(1, 2, 4),
        max_new_tokens=6, batch_size=3,
    )  # fmt: skip
    # 8 samples, 2 correct ("2", "2", both for prompt 1): accuracy 2/8.
    assert result["accuracy"] == 0.25
    assert result["greedy_accuracy"] == 0.5
    # Prompt 1: c=2 of n=4 -> pass@1 = 1/2, pass@2 = 1 - C(2,2)/C(4,2) = 5/6, pass@4 = 1.
    # Prompt 2: c=0 -> 0 for every k. Means over the two prompts:
    assert result["pass_at_k"] == pytest.approx({"1": 0.25, "2": 5 / 12, "4": 0.5})
    # Lengths count EOS: correct "2"+EOS = 2, 2; incorrect 2, 3, 2, 6 (no EOS), 2, 2.
    assert result["len_correct"] == 2.0
    assert result["len_incorrect"] == pytest.approx(17 / 6)
    assert result["len_mean"] == pytest.approx(21 / 8)
    assert result["truncated_frac"] == 1 / 8
    assert (result["num_prompts"], result["num_samples"]) == (2, 4)
    # 8 sampled rows in batches of 3 with seeds 0, 1, 2; then one greedy batch of 2.
    assert engine.calls == [(3, 1.0, 0), (3, 1.0, 1), (2, 1.0, 2), (2, 0.0, 0)]


def test_evaluate_with_a_real_engine_and_table():
    model = build_model("tiny", len(TOK), num_hidden_layers=1)
    engine = HFRolloutEngine(model, RULE.stop_ids, RULE.pad_id)
    examples = [Example("12+34=", "46"), Example("5+5=", "10"), Example("7=", "7")]
    result = evaluate(
        engine, TOK, RULE, examples, protected(lambda completion, ref: 1.0), num_samples=2, ks=(1, 2),
        max_new_tokens=8, greedy=False,
    )  # fmt: skip
    assert result["accuracy"] == 1.0 and result["pass_at_k"] == {"1": 1.0, "2": 1.0}
    assert result["greedy_accuracy"] is None and result["len_incorrect"] is None
    assert 1 <= result["len_correct"] == result["len_mean"] <= 8
    again = evaluate(
        engine, TOK, RULE, examples, protected(lambda c, r: float(len(c) % 2)), num_samples=2, ks=(1,),
        max_new_tokens=8, seed=1,
    )  # fmt: skip
    assert again == evaluate(
        engine, TOK, RULE, examples, protected(lambda c, r: float(len(c) % 2)), num_samples=2, ks=(1,),
        max_new_tokens=8, seed=1,
    )  # fmt: skip
    console = Console(width=80, record=True)
    console.print(format_eval_table(result))
    text = console.export_text()
    assert "pass@2" in text and "len_incorrect" in text and "3 prompts x 2 samples" in text


def test_evaluate_rejects_k_above_num_samples():
    with pytest.raises(ValueError, match="ks"):
        evaluate(None, TOK, RULE, [Example("1=", "1")], protected(exact), num_samples=2, ks=(4,),
                 max_new_tokens=4)  # fmt: skip


def test_evaluate_routes_the_verifier_through_the_protected_scorer():
    """A verifier that raises on one answer scores it 0 and is counted; evaluation goes on."""
    examples = [Example("1+1=", "2")]
    engine = ScriptedEngine(script={"1+1=": ["2", "boom", "2", "3"]}, greedy={"1+1=": "boom"})

    def fragile(completion, reference):
        if completion == "boom":
            raise RuntimeError("verifier bug")
        return exact(completion, reference)

    result = evaluate(engine, TOK, RULE, examples, protected(fragile), num_samples=4, ks=(1,),
                      max_new_tokens=6)  # fmt: skip
    assert result["accuracy"] == 0.5 and result["greedy_accuracy"] == 0.0
    assert result["reward_errors"] == 2 and result["reward_timeouts"] == 0


def test_the_verifier_sees_special_tokens_but_not_the_stop_token():
    """One decode rule for train and eval: the stop id that ended a row is dropped, anything else
    the model wrote (a special token mid-answer included) is kept."""
    ids = (
        TOK.encode("4", add_special_tokens=False)
        + [BOS]
        + TOK.encode("2", add_special_tokens=False)
    )
    assert RULE.response_text(TOK, [*ids, EOS], stopped=True) == "4<bos>2"
    assert RULE.response_text(TOK, ids, stopped=False) == "4<bos>2"
    rollouts = pack_rollouts([[BOS, 5]], [[*ids, EOS]], [[0.0] * 4], ["stop"], PAD)
    assert RULE.decode_rollouts(TOK, rollouts) == ["4<bos>2"]
