"""Evaluation: sampled accuracy, greedy accuracy, unbiased pass@k and response lengths.

Lengths are split by correctness because Dr.GRPO's claim is about length: GRPO's 1/|y|
inflates the length of incorrect responses. `len_correct` vs `len_incorrect` is where it shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from drgrpo.rollout.engine import RolloutEngine, Rollouts
from drgrpo.rollout.hf import HFRolloutEngine
from drgrpo.rollout.prompts import TokenRule
from drgrpo.tasks.scoring import RewardScorer, is_correct

Score = Callable[[list[str], list[str]], tuple[list[float], object]]
"""`RewardScorer.score`: (completions, references) -> (rewards, faults with .errors/.timeouts)."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1).

    1 - C(n-c, k) / C(n, k), written as the product prod_{i=n-c+1}^{n} (1 - k/i) so that no
    huge binomial is ever formed.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def evaluate(
    engine: RolloutEngine,
    tokenizer,
    rule: TokenRule,
    examples: Sequence,
    score: Score,
    *,
    num_samples: int = 4,
    ks: Sequence[int] = (1, 4),
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = True,
    seed: int = 0,
    batch_size: int = 256,
) -> dict:
    """Score `engine` on `examples` (objects with `.prompt` and `.reference`).

    Prompts are encoded and responses decoded by `rule` (the one token rule of training), and
    scored by `score` (the protected scorer: a verifier fault scores 0 and is counted in
    reward_errors / reward_timeouts).

    Each prompt gets `num_samples` sampled responses (plus one greedy response when `greedy`).
    Keys: accuracy (mean reward of the samples), greedy_accuracy (None without greedy),
    pass_at_k ({"k": value}), len_mean / len_correct / len_incorrect (mean response tokens,
    EOS included; None when no sample is in the group), truncated_frac (share of samples that
    hit max_new_tokens), num_prompts, num_samples.
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(
            f"need num_samples >= 1 and batch_size >= 1, got {num_samples}, {batch_size}"
        )
    if any(not 1 <= k <= num_samples for k in ks):
        raise ValueError(f"every k in ks={tuple(ks)} must be in [1, num_samples={num_samples}]")

    prompts = rule.encode_prompts(tokenizer, [ex.prompt for ex in examples])
    references = [ex.reference for ex in examples]
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    # Samples of one prompt sit next to each other: row i belongs to prompt i // num_samples.
    repeated = [p for p in prompts for _ in range(num_samples)]
    sampled = _generate(engine, repeated, options, seed, batch_size)
    texts = [rule.response_text(tokenizer, ids, finish == "stop") for ids, finish in sampled]
    rewards, faults = score(texts, [references[row // num_samples] for row in range(len(texts))])
    result = _sample_metrics(sampled, rewards, num_samples, ks)
    errors, timeouts = faults.errors, faults.timeouts

    result["greedy_accuracy"] = None
    if greedy:
        greedy_options = dict(options, temperature=0.0, top_p=1.0)
        decoded = _generate(engine, prompts, greedy_options, seed, batch_size)
        texts = [rule.response_text(tokenizer, ids, finish == "stop") for ids, finish in decoded]
        greedy_rewards, faults = score(texts, references)
        result["greedy_accuracy"] = _mean(greedy_rewards)
        errors, timeouts = errors + faults.errors, timeouts + faults.timeouts
    return result | {"num_prompts": len(examples), "num_samples": num_samples,
                     "reward_errors": errors, "reward_timeouts": timeouts}  # fmt: skip


def evaluate_model(
    model, tokenizer, examples, verify, *, reward_timeout_s: float, **options
) -> dict:
    """`evaluate` of an in-process HF model: the token rule of its tokenizer (and
    generation_config), `verify` behind the protected scorer (deadline, faults counted)."""
    rule = TokenRule.from_tokenizer(tokenizer, getattr(model, "generation_config", None))
    engine = HFRolloutEngine(model, rule.stop_ids, rule.pad_id)
    scorer = RewardScorer(verify, reward_timeout_s)
    try:
        return evaluate(engine, tokenizer, rule, examples, scorer.score, **options)
    finally:
        scorer.close()


def _sample_metrics(
    sampled: list[tuple[list[int], str]], rewards: list[float], num_samples: int, ks
) -> dict:
    lengths = [len(ids) for ids, _ in sampled]
    correct = [is_correct(r) for r in rewards]
    per_prompt = [sum(correct[i : i + num_samples]) for i in range(0, len(correct), num_samples)]
    return {
        "accuracy": _mean(rewards),
        "pass_at_k": {
            str(k): _mean([pass_at_k(num_samples, c, k) for c in per_prompt]) for k in ks
        },
        "len_mean": _mean(lengths),
        "len_correct": _mean([n for n, ok in zip(lengths, correct, strict=True) if ok]),
        "len_incorrect": _mean([n for n, ok in zip(lengths, correct, strict=True) if not ok]),
        "truncated_frac": _mean([finish == "length" for _, finish in sampled]),
    }


def _generate(
    engine: RolloutEngine, prompts: list[list[int]], options: dict, seed: int, batch_size: int
) -> list[tuple[list[int], str]]:
    """(response tokens within the mask, finish reason) per prompt, in batches."""
    out = []
    for batch, lo in enumerate(range(0, len(prompts), batch_size)):
        # A seed per batch keeps every batch reproducible whatever device the engine is on.
        rollouts = engine.generate(prompts[lo : lo + batch_size], seed=seed + batch, **options)
        out.extend(_responses(rollouts))
    return out


def _responses(rollouts: Rollouts) -> list[tuple[list[int], str]]:
    lengths = rollouts.response_lengths.tolist()
    rows = rollouts.response_ids.tolist()
    return [
        (row[:n], finish)
        for row, n, finish in zip(rows, lengths, rollouts.finish_reason, strict=True)
    ]


def _mean(values: list) -> float | None:
    return float(sum(values)) / len(values) if values else None
