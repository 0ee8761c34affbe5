"""Evaluation: sampled accuracy, greedy accuracy, unbiased pass@k and response lengths.

Lengths are split by correctness because Dr.GRPO's claim is about length: GRPO's 1/|y|
inflates the length of incorrect responses. `len_correct` vs `len_incorrect` is where it shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from rich.table import Table

from drgrpo.rollout.engine import RolloutEngine, Rollouts

CORRECT_THRESHOLD = 0.5
"""A sample counts as correct (for pass@k and the length split) when its reward is >= this."""


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
    examples: Sequence,
    verify: Callable[[str, str], float],
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

    prompts = [
        [tokenizer.bos_token_id] + tokenizer.encode(ex.prompt, add_special_tokens=False)
        for ex in examples
    ]
    references = [ex.reference for ex in examples]
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    # Samples of one prompt sit next to each other: row i belongs to prompt i // num_samples.
    repeated = [p for p in prompts for _ in range(num_samples)]
    sampled = _generate(engine, repeated, options, seed, batch_size)
    rewards = [
        verify(_decode(tokenizer, ids, finish), references[row // num_samples])
        for row, (ids, finish) in enumerate(sampled)
    ]
    result = _sample_metrics(sampled, rewards, num_samples, ks)

    result["greedy_accuracy"] = None
    if greedy:
        greedy_options = dict(options, temperature=0.0, top_p=1.0)
        decoded = _generate(engine, prompts, greedy_options, seed, batch_size)
        result["greedy_accuracy"] = _mean(
            [
                verify(_decode(tokenizer, ids, finish), ref)
                for (ids, finish), ref in zip(decoded, references, strict=True)
            ]
        )
    return result | {"num_prompts": len(examples), "num_samples": num_samples}


def _sample_metrics(
    sampled: list[tuple[list[int], str]], rewards: list[float], num_samples: int, ks
) -> dict:
    lengths = [len(ids) for ids, _ in sampled]
    correct = [r >= CORRECT_THRESHOLD for r in rewards]
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


def _decode(tokenizer, ids: list[int], finish_reason: str) -> str:
    # The EOS is inside the response mask; the verifier must not see it.
    if finish_reason == "stop":
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)


def _mean(values: list) -> float | None:
    return float(sum(values)) / len(values) if values else None


def format_eval_table(result: dict) -> Table:
    """The `evaluate` result as a two-column table for the terminal."""
    table = Table(title=f"eval: {result['num_prompts']} prompts x {result['num_samples']} samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("accuracy", result["accuracy"]),
        ("greedy_accuracy", result["greedy_accuracy"]),
        *((f"pass@{k}", v) for k, v in result["pass_at_k"].items()),
        ("len_mean", result["len_mean"]),
        ("len_correct", result["len_correct"]),
        ("len_incorrect", result["len_incorrect"]),
        ("truncated_frac", result["truncated_frac"]),
    ]
    for name, value in rows:
        table.add_row(name, "-" if value is None else f"{value:.4g}")
    return table
