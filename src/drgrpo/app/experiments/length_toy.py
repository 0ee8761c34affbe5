"""The length-bias mechanism where it must show: a two-part toy policy trained through drgrpo's
own objective (docs/length-bias.md, "the mechanism test").

Each response is one answer token (right with probability sigmoid(a_p), prompt p), then filler
tokens until a stop token: after each filler position the policy stops with probability
sigmoid(s_o), where o is its own answer (wrong / right). So the length is decided *after* the
outcome is settled, the way an LLM that is lost keeps going. The derivation in the doc predicts:
under GRPO's 1/|y_i| the wrong answers lengthen and the right ones shorten; under a constant
normalizer (Dr.GRPO) or a batch-wide one (DAPO) the stop logits get zero expected gradient.

Plain SGD on the exact per-token log-probabilities: Adam would turn zero-mean gradient noise
into a random walk of about lr per step and hide the difference in the mean.
"""

from __future__ import annotations

import statistics

import torch

from drgrpo.objective import (
    compute_advantages,
    compute_normalizer,
    objective_loss,
    resolve_objective,
)

MAX_FILLER = 40


def _sample(a: torch.Tensor, s: torch.Tensor, group: int, gen: torch.Generator):
    """(logprobs (N, T), loss_mask (N, T), right (N,), lengths (N,)) for one batch."""
    p = torch.sigmoid(a).repeat_interleave(group)  # (N,) P(right) per row
    right = torch.rand(p.shape, generator=gen, dtype=p.dtype) < p.detach()  # (N,)
    q = torch.sigmoid(s)[right.long()]  # (N,) stop probability after each filler token
    u = torch.rand(p.shape, generator=gen, dtype=p.dtype)
    filler = torch.floor(torch.log(u) / torch.log1p(-q.detach())).clamp(max=MAX_FILLER).long()
    t = MAX_FILLER + 2  # answer, fillers, stop
    pos = torch.arange(t).unsqueeze(0)  # (1, T)
    answer = torch.where(right, torch.log(p), torch.log1p(-p)).unsqueeze(1)  # (N, 1)
    cont = torch.log1p(-q).unsqueeze(1).expand(-1, t)  # (N, T) log P(continue)
    stop = torch.log(q).unsqueeze(1).expand(-1, t)  # (N, T) log P(stop)
    is_filler = (pos >= 1) & (pos <= filler.unsqueeze(1))
    is_stop = (pos == filler.unsqueeze(1) + 1) & (filler.unsqueeze(1) < MAX_FILLER)
    logprobs = torch.where(pos == 0, answer, torch.where(is_filler, cont, stop))
    loss_mask = (pos == 0) | is_filler | is_stop  # (N, T)
    return logprobs * loss_mask, loss_mask, right, loss_mask.sum(1)


def train_toy(preset: str, seed: int, *, steps: int = 300, prompts: int = 64, group: int = 8,
              lr: float = 2.0) -> dict:  # fmt: skip
    """Length of wrong and right responses per step, and the stop logits at the end."""
    spec = resolve_objective(preset, kl_coef=0.0)
    gen = torch.Generator().manual_seed(seed)
    a = torch.linspace(-1.5, 1.5, prompts, dtype=torch.float64).requires_grad_()  # skills
    s = torch.full((2,), -2.5, dtype=torch.float64, requires_grad=True)  # stop logits
    optim = torch.optim.SGD([a, s], lr=lr)
    wrong_len, right_len = [], []
    for _ in range(steps):
        logprobs, mask, right, lengths = _sample(a, s, group, gen)
        adv = compute_advantages(right.double(), group, baseline=spec.baseline, scale=spec.scale,
                                 std_ddof=spec.std_ddof, eps=spec.adv_eps)  # fmt: skip
        z = compute_normalizer(spec.aggregation, num_sequences=len(right),
                               num_tokens=int(mask.sum()), max_tokens=MAX_FILLER + 2,
                               constant_normalizer=spec.constant_normalizer)  # fmt: skip
        loss, _ = objective_loss(spec, logprobs, logprobs.detach(), adv, mask, z)
        optim.zero_grad()
        loss.backward()
        optim.step()
        wrong_len.append(float(lengths[~right].double().mean()) if (~right).any() else None)
        right_len.append(float(lengths[right].double().mean()) if right.any() else None)
    return {"len_wrong": wrong_len, "len_right": right_len,
            "stop_logit_wrong": float(s[0].detach()), "stop_logit_right": float(s[1].detach())}  # fmt: skip


def toy_summary(presets=("grpo", "dr_grpo", "dapo"), seeds: int = 5, steps: int = 300,
                window: int = 50) -> dict:  # fmt: skip
    """{preset: {"wrong": [drift per seed], "right": [...]}}: mean response length (answer,
    fillers and stop, in tokens) over the last `window` steps minus the first `window`."""
    out = {}
    for preset in presets:
        drifts = {"wrong": [], "right": []}
        for seed in range(seeds):
            run = train_toy(preset, seed, steps=steps)
            for key in drifts:
                vals = [v for v in run[f"len_{key}"] if v is not None]
                drifts[key].append(
                    statistics.fmean(vals[-window:]) - statistics.fmean(vals[:window])
                )
        out[preset] = drifts
    return out
