"""DAPO's sampling side in the trainer: dynamic sampling and overlong reward shaping.

Dynamic sampling (objective.dynamic_sampling; DAPO section 3.2, Yu et al. 2025): draw rounds of
B prompts x K samples (each round is one ordinary collect + score, generated in whole-group
chunks), keep the groups whose rewards do not all agree (`objective.shaping.informative_groups`,
on the rewards after the truncation policy and before the overlong shaping: DAPO filters on
accuracy, not on a length penalty), and stop as soon as B informative groups are held, or after
max_sampling_rounds rounds. The batch is then the first B informative groups in the order drawn.
When the cap is reached with fewer, the batch is topped up to B with the earliest non-informative
groups drawn (zero advantage under a group baseline: they add no policy gradient, only KL), so
that every step has B groups: mini_batches still divides it and constant normalizers stay
the same (verl's DAPO stops the run instead; a hard task should not end a run).

Which groups are kept depends only on the rewards of whole groups, each round's generation is
the ordinary collect (so chunking acts as it does without dynamic sampling), and every draw comes
from the run's generator and data position, which checkpoints restore: a resume draws the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from drgrpo.objective.shaping import informative_groups, overlong_cache_tokens, overlong_penalty
from drgrpo.rollout import Rollouts, concat_rollouts
from drgrpo.tasks.scoring import Graded, RewardFaults


def overlong_shaped(spec, rewards: torch.Tensor, lengths: torch.Tensor, max_tokens: int):
    """r_i + penalty * R_len(|y_i|) (objective/shaping.py), or r unchanged when the knob is off;
    applied before the advantages and before any KL in the reward. rewards, lengths: (N,)."""
    cache = overlong_cache_tokens(spec.overlong_cache_fraction, max_tokens)
    if cache == 0:
        return rewards
    return rewards + overlong_penalty(
        lengths, max_tokens, cache, spec.overlong_penalty, dtype=rewards.dtype
    )


def dynamic_batch(draw_round: Callable[[], tuple], prompts: int, group_size: int,
                  max_rounds: int, pad_id: int) -> tuple[object, object, dict]:  # fmt: skip
    """(Collected, Scored, metrics) of B = `prompts` groups drawn as the module docstring says.
    `draw_round()` is one collect + score of B prompts: (Collected, Scored)."""
    rounds, informative = [], []
    while len(rounds) < max_rounds:
        collected, scored = draw_round()
        rounds.append((collected, scored))
        informative.append(informative_groups(scored.rewards, group_size).tolist())
        if sum(sum(flags) for flags in informative) >= prompts:
            break
    drawn = [(r, g) for r, flags in enumerate(informative) for g in range(len(flags))]
    chosen = [rg for rg in drawn if informative[rg[0]][rg[1]]][:prompts]
    kept_informative = len(chosen)
    chosen += [rg for rg in drawn if not informative[rg[0]][rg[1]]][: prompts - len(chosen)]
    chosen.sort()  # the order drawn
    collected, scored = _merge(rounds, chosen, group_size, pad_id)
    metrics = {
        "rollout/sampling_rounds": len(rounds),
        "rollout/groups_drawn": len(drawn),
        "rollout/informative_groups_drawn": sum(sum(flags) for flags in informative),
        "rollout/informative_groups_kept": kept_informative,
    }
    return collected, scored, metrics


def _merge(rounds: list, chosen: list[tuple[int, int]], k: int, pad_id: int):
    """One (Collected, Scored) of the `chosen` (round, group) pairs, rows in that order."""
    parts_c, parts_s, examples, completions = [], [], [], []
    for r, g in chosen:
        c, s = rounds[r]
        rows = torch.arange(g * k, (g + 1) * k)
        parts_c.append(_rollout_rows(c.rollouts, rows))
        parts_s.append((s, rows))
        examples.append(c.examples[g])
        completions += c.completions[g * k : (g + 1) * k]
    rollouts = concat_rollouts(parts_c, pad_id)
    t = rollouts.response_ids.shape[1]
    first_c, first_s = rounds[0]

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(s, name)[rows] for s, rows in parts_s])

    loss_mask = torch.cat([
        torch.nn.functional.pad(s.loss_mask[rows], (0, t - s.loss_mask.shape[1]))
        for s, rows in parts_s
    ])  # fmt: skip
    scored = replace(
        first_s, rewards=cat("rewards"), correct=cat("correct"), truncated=cat("truncated"),
        loss_mask=loss_mask, graded=_merge_graded(parts_s, [s.graded for _, s in rounds]),
    )  # fmt: skip
    return replace(first_c, examples=examples, rollouts=rollouts, completions=completions), scored


def _rollout_rows(rollouts: Rollouts, rows: torch.Tensor) -> Rollouts:
    tensors = {name: getattr(rollouts, name)[rows] for name in
               ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "sampler_logprobs")}  # fmt: skip
    return replace(rollouts, **tensors, finish_reason=[rollouts.finish_reason[i] for i in rows])


def _merge_graded(parts: list, every_round: list[Graded]) -> Graded:
    """The kept rows' rewards and components; the faults of every call made (all rounds)."""
    rows = [(s.graded, idx.tolist()) for s, idx in parts]
    names = every_round[0].components.keys()
    faults = RewardFaults()
    for g in every_round:
        f = g.faults
        faults.errors += f.errors
        faults.timeouts += f.timeouts
        faults.bad_values += f.bad_values
        for name, n in f.calls.items():
            faults.calls[name] = faults.calls.get(name, 0) + n
        for name, n in f.by_reward.items():
            faults.by_reward[name] = faults.by_reward.get(name, 0) + n
        faults.examples += f.examples
    return Graded(
        rewards=[g.rewards[i] for g, idx in rows for i in idx],
        correct=[g.correct[i] for g, idx in rows for i in idx],
        components={n: [g.components[n][i] for g, idx in rows for i in idx] for n in names},
        faults=faults,
    )
