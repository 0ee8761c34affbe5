"""Evaluation: sampled accuracy, greedy accuracy, unbiased pass@k and response lengths.

Lengths are split by correctness because Dr.GRPO's claim is about length: GRPO's 1/|y|
inflates the length of incorrect responses. `len_correct` vs `len_incorrect` is where it shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from drgrpo.eval.stats import bootstrap_interval
from drgrpo.rollout.engine import RolloutEngine, Rollouts
from drgrpo.rollout.hf import HFRolloutEngine
from drgrpo.rollout.prompts import TokenRule
from drgrpo.tasks.scoring import RewardScorer

Grade = Callable[[list[str], list], object]
"""`RewardScorer.grade`: (completions, examples) -> Graded (.rewards, .correct, .faults)."""


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
    grade: Grade,
    *,
    num_samples: int = 4,
    ks: Sequence[int] = (1, 4),
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    bootstrap: int = 0,
    part: tuple[int, int] = (0, 1),
    gather: Callable[[object], list] | None = None,
) -> dict:
    """Score `engine` on task `examples`.

    Prompts are encoded and responses decoded by `rule` (the one token rule of training), and
    graded by `grade` (the protected scorer: a fault scores 0, is not correct, and is counted in
    reward_errors / reward_timeouts). Correctness is the verifier's verdict, never a threshold.

    Each prompt gets `num_samples` sampled responses (plus one greedy response when `greedy`).
    Keys: accuracy (share of correct samples), reward_mean (mean total reward), greedy_accuracy
    (None without greedy), pass_at_k ({"k": value}, unbiased), len_mean / len_correct /
    len_incorrect (mean response tokens, stop token included; None when no sample is in the
    group), truncated_frac, num_prompts, num_samples, per_source (the same accuracy and pass@k
    per example source, when examples name one), and with `bootstrap` > 0 resamples:
    ci95 ({"accuracy": [lo, hi], "pass@k": [lo, hi]}, a percentile bootstrap over prompts).

    Several processes: `part=(rank, world_size)` and `gather` (every rank's value, in rank
    order: `drgrpo.train.distributed.gather_objects`). Rank r generates and grades the batches
    r, r + W, ... (each with the seed and rows it has in one process), the rows are gathered back
    in order, and every rank returns exactly the numbers of one process.
    """
    _check_arguments(examples, num_samples, ks, batch_size)
    prompts = rule.encode_examples(tokenizer, examples)
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    # Samples of one prompt sit next to each other: row i belongs to prompt i // num_samples.
    repeated = [p for p in prompts for _ in range(num_samples)]
    problems = [examples[row // num_samples] for row in range(len(repeated))]
    run = _Rows(engine, tokenizer, rule, grade, seed, batch_size, part, gather)
    sampled, rewards, correct, errors, timeouts = run(repeated, problems, options)
    result = _sample_metrics(sampled, rewards, correct, num_samples, ks)
    result["per_source"] = _per_source(examples, correct, num_samples, ks)
    if bootstrap:
        result["ci95"] = _intervals(correct, num_samples, ks, bootstrap, seed)

    result["greedy_accuracy"] = None
    if greedy:
        greedy_options = dict(options, temperature=0.0, top_p=1.0)
        _, _, greedy_correct, *faults = run(prompts, list(examples), greedy_options)
        result["greedy_accuracy"] = _mean(greedy_correct)
        errors, timeouts = errors + faults[0], timeouts + faults[1]
    return result | {"num_prompts": len(examples), "num_samples": num_samples,
                     "reward_errors": errors, "reward_timeouts": timeouts}  # fmt: skip


def _check_arguments(examples, num_samples: int, ks, batch_size: int) -> None:
    if not examples:
        raise ValueError("no examples to evaluate")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(
            f"need num_samples >= 1 and batch_size >= 1, got {num_samples}, {batch_size}"
        )
    if any(not 1 <= k <= num_samples for k in ks):
        raise ValueError(f"every k in ks={tuple(ks)} must be in [1, num_samples={num_samples}]")


def evaluate_model(model, tokenizer, task, examples, *, reward_timeout_s: float, template="none",
                   scorer: RewardScorer | None = None, **options) -> dict:  # fmt: skip
    """`evaluate` of an in-process HF model: the token rule of its tokenizer (and
    generation_config), the task's reward spec behind the protected scorer. Pass `scorer` to
    reuse one across calls (its worker pool starts once); otherwise one is made and closed."""
    rule = TokenRule.from_tokenizer(
        tokenizer, getattr(model, "generation_config", None), template=template
    )
    engine = HFRolloutEngine(model, rule.stop_ids, rule.pad_id)
    own = scorer is None
    scorer = scorer or RewardScorer.for_task(task, reward_timeout_s)
    try:
        return evaluate(engine, tokenizer, rule, examples, scorer.grade, **options)
    finally:
        if own:
            scorer.close()


def _sample_metrics(sampled, rewards: list[float], correct: list[bool], num_samples: int, ks):
    lengths = [len(ids) for ids, _ in sampled]
    per_prompt = [sum(correct[i : i + num_samples]) for i in range(0, len(correct), num_samples)]
    return {
        "accuracy": _mean(correct),
        "reward_mean": _mean(rewards),
        "pass_at_k": {
            str(k): _mean([pass_at_k(num_samples, c, k) for c in per_prompt]) for k in ks
        },
        "len_mean": _mean(lengths),
        "len_correct": _mean([n for n, ok in zip(lengths, correct, strict=True) if ok]),
        "len_incorrect": _mean([n for n, ok in zip(lengths, correct, strict=True) if not ok]),
        "truncated_frac": _mean([finish == "length" for _, finish in sampled]),
    }


def _per_source(examples, correct: list[bool], num_samples: int, ks) -> dict:
    """{source: {accuracy, pass_at_k, num_prompts}} when examples carry a source (else {})."""
    sources = [(ex.meta or {}).get("source") for ex in examples]
    if all(s is None for s in sources):
        return {}
    out = {}
    for source in sorted({str(s) for s in sources}):
        rows = [i for i, s in enumerate(sources) if str(s) == source]
        mine = [c for i in rows for c in correct[i * num_samples : (i + 1) * num_samples]]
        counts = [sum(correct[i * num_samples : (i + 1) * num_samples]) for i in rows]
        out[source] = {
            "accuracy": _mean(mine), "num_prompts": len(rows),
            "pass_at_k": {str(k): _mean([pass_at_k(num_samples, c, k) for c in counts])
                          for k in ks},
        }  # fmt: skip
    return out


def _intervals(correct: list[bool], num_samples: int, ks, resamples: int, seed: int) -> dict:
    """95% percentile-bootstrap intervals over prompts (a prompt's samples stay together)."""
    counts = [sum(correct[i : i + num_samples]) for i in range(0, len(correct), num_samples)]
    out = {"accuracy": bootstrap_interval([c / num_samples for c in counts], resamples, seed)}
    for k in ks:
        values = [pass_at_k(num_samples, c, k) for c in counts]
        out[f"pass@{k}"] = bootstrap_interval(values, resamples, seed)
    return out


class _Rows:
    """Generate and grade rows in batches (this rank's share of them), gathered in order."""

    def __init__(self, engine, tokenizer, rule, grade, seed, batch_size, part, gather):
        self.engine, self.tokenizer, self.rule, self.grade = engine, tokenizer, rule, grade
        self.seed, self.batch_size = seed, batch_size
        self.rank, self.world_size = part
        if self.world_size > 1 and gather is None:
            raise ValueError("evaluate(part=...) over several ranks needs `gather`")
        self.gather = gather

    def __call__(self, prompts: list[list[int]], problems: list, options: dict):
        """(sampled [(response ids, finish reason)], rewards, correct, errors, timeouts) of
        every row, in row order."""
        mine = []
        starts = range(0, len(prompts), self.batch_size)
        for batch, lo in list(enumerate(starts))[self.rank :: self.world_size]:
            hi = lo + self.batch_size
            # A seed per batch keeps every batch reproducible whatever device the engine is on.
            rollouts = self.engine.generate(prompts[lo:hi], seed=self.seed + batch, **options)
            sampled = _responses(rollouts)
            texts = [self.rule.response_text(self.tokenizer, ids, finish == "stop")
                     for ids, finish in sampled]  # fmt: skip
            graded = self.grade(texts, problems[lo:hi])
            mine.append((batch, sampled, list(graded.rewards), list(graded.correct),
                         graded.faults.errors, graded.faults.timeouts))  # fmt: skip
        every = [mine] if self.world_size == 1 else self.gather(mine)
        parts = sorted((p for rank_parts in every for p in rank_parts), key=lambda p: p[0])
        return (
            [row for p in parts for row in p[1]],
            [r for p in parts for r in p[2]],
            [c for p in parts for c in p[3]],
            sum(p[4] for p in parts),
            sum(p[5] for p in parts),
        )


def _responses(rollouts: Rollouts) -> list[tuple[list[int], str]]:
    lengths = rollouts.response_lengths.tolist()
    rows = rollouts.response_ids.tolist()
    return [
        (row[:n], finish)
        for row, n, finish in zip(rows, lengths, rollouts.finish_reason, strict=True)
    ]


def _mean(values: list) -> float | None:
    return float(sum(values)) / len(values) if values else None
