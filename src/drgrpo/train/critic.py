"""PPO's critic in training: its values at rollout time, its update, its checkpoint files.

The critic is trained on the policy's own mini-batches (`update.run_updates` calls `Critic.step`
once per optimizer step, with that step's normalizer Z) on

    loss_V = Agg_Z( 0.5 * max((V - G)^2, (clip(V, V_old +- eps_v) - G)^2) )

(objective/value_loss.py), as `drgrpo explain formula ppo` prints it: vf_coef weights loss_V only
where it shares parameters with the policy loss. A separate critic with its own AdamW needs no
weight: TRL's joint loss pg_loss + vf_coef * vf_loss over disjoint parameter sets gives the critic
the gradient vf_coef * grad loss_V, and AdamW's per-parameter update is invariant to that
constant factor (up to its eps) - what is left is the critic's learning rate and its own
gradient clip (optim.max_grad_norm applied to the critic's parameters alone).

model.critic=shared puts the head on the policy's own trunk instead: `Critic.step` then adds
vf_coef * grad loss_V into the trunk's gradients between the policy's backward and its optimizer
step (run_updates calls it there), so the policy's AdamW steps the trunk on
grad(pg_loss + vf_coef * loss_V), clipped together (TRL's joint loss); the critic's own AdamW
holds the head alone.

The critic's learning rate defaults to 10 x the policy's (`optim.critic_lr = 0`): the value head
starts from zero and must fit the returns within a few steps, while the policy should move
slowly. verl's PPO examples use actor 1e-6 / critic 1e-5, OpenRLHF's 5e-7 / 9e-6. It follows
the policy's schedule (warm-up, decay) over the same optimizer steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from drgrpo.models.value import ValueModel
from drgrpo.objective import ObjectiveSpec
from drgrpo.objective.gae import scale_token_advantages
from drgrpo.objective.loss import critic_advantages
from drgrpo.objective.value_loss import explained_variance, value_loss
from drgrpo.train import distributed as D
from drgrpo.util.schedule import lr_lambda

WEIGHTS = "critic.safetensors"
OPTIMIZER = "critic_optimizer.pt"


@dataclass
class Critic:
    model: ValueModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    spec: ObjectiveSpec
    micro_batch_size: int = 0
    max_grad_norm: float = 1.0
    shared: bool = False
    """The head sits on the policy's trunk (model.critic=shared): only the head is the critic's."""

    @torch.no_grad()
    def values(self, input_ids, attention_mask, response_start: int) -> torch.Tensor:
        """V_old (N, T): the critic's values when the rollouts were scored (no gradient)."""
        self.model.eval()
        return self.model(input_ids, attention_mask, response_start)

    def step(self, batch, normalizer: float) -> dict[str, float]:
        """One optimizer step of the critic on a mini-batch (`update.TrainBatch` with old_values
        and returns). Returns token sums (value_loss is this step's value, like policy/loss);
        a non-finite loss or gradient skips the step (counted in value_skipped_steps)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = len(batch)
        size = self.micro_batch_size or n
        sums: dict[str, float] = {}
        for start in range(0, n, size):
            micro = batch.select(torch.arange(start, min(start + size, n)))
            values = self.model(micro.input_ids, micro.attention_mask, micro.response_start)
            loss, stats = value_loss(
                values, micro.old_values, micro.returns, micro.loss_mask, normalizer,
                aggregation=self.spec.aggregation, clip_eps=self.spec.value_clip_eps,
            )  # fmt: skip
            # separate: no weight (module docstring); shared: the trunk's share of the joint loss
            (self.spec.vf_coef * loss if self.shared else loss).backward()
            m = micro.loss_mask
            stats["value_sum"] = (values.detach() * m).sum()
            stats["return_sum"] = (micro.returns * m).sum()
            stats["value_tokens"] = m.sum()
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        # Under torchrun: the critic's own gradients summed over ranks, like the policy's (each
        # rank's loss is its share over the global Z); a shared trunk's are the policy's to sum.
        D.replicate_gradients(self._own())
        keys = sorted(sums)  # this rank's shares of the step's sums, totalled over ranks
        sums = dict(zip(keys, D.all_sum([sums[k] for k in keys]), strict=True))
        # the critic's own parameters only: a shared trunk's gradient is the policy's to clip
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm or math.inf))
        if math.isfinite(sums["value_loss"]) and math.isfinite(norm):
            self.optimizer.step()
            self.scheduler.step()  # as the policy's: a skipped step does not advance the schedule
            sums["value_skipped_steps"] = 0.0
        else:
            sums["value_skipped_steps"] = 1.0
        self.optimizer.zero_grad(set_to_none=True)
        sums["value_grad_norm"] = norm
        sums["value_steps"] = 1.0
        return sums

    def save(self, folder: Path) -> None:
        """Weights and optimizer (and its schedule) into a checkpoint folder being written."""
        from safetensors.torch import save_file

        weights = {k: v.contiguous() for k, v in self._own().state_dict().items()}
        save_file(weights, str(folder / WEIGHTS))
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        torch.save(state, folder / OPTIMIZER)

    def _own(self) -> torch.nn.Module:
        """The critic's own parameters: the head when shared (the trunk is the policy's)."""
        return self.model.head if self.shared else self.model

    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        from drgrpo.train.checkpoint import CheckpointError

        if not (folder / WEIGHTS).is_file():
            raise CheckpointError(
                f"{folder} has no {WEIGHTS}: it was saved by a run without a critic "
                "(objective.baseline other than value); resume it with its own preset"
            )
        try:
            self._own().load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
        except RuntimeError as e:
            raise CheckpointError(
                f"{folder / WEIGHTS} does not fit this critic (model.critic differs from the "
                f"run that saved it?): {str(e)[:200]}"
            ) from e
        state = torch.load(folder / OPTIMIZER, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def build_critic(cfg, policy: torch.nn.Module, device: torch.device) -> Critic | None:
    """The critic of a baseline=value objective (None otherwise), from the policy as it is now:
    call it before any checkpoint's weights are loaded into the policy (the base trunk).
    Under torchrun it is replicated like the policy (every rank starts from the same weights)."""
    if cfg.objective.baseline != "value":
        return None
    opt, shared = cfg.optim, cfg.model.critic == "shared"
    model = ValueModel.on_policy(policy) if shared else ValueModel.from_policy(policy)
    model = model.to(device=device, dtype=torch.float32)
    optimizer = torch.optim.AdamW(
        (model.head if shared else model).parameters(), lr=opt.critic_lr or 10 * opt.lr, betas=opt.betas,
        weight_decay=opt.weight_decay, fused=device.type in ("cpu", "cuda"),
    )  # fmt: skip
    total = cfg.steps * opt.updates_per_rollout * opt.mini_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total, opt.warmup_steps, opt.schedule)
    )
    return Critic(model, optimizer, scheduler, cfg.objective, opt.micro_batch_size,
                  opt.max_grad_norm, shared)  # fmt: skip


def critic_targets(critic: Critic, spec: ObjectiveSpec, outcome: torch.Tensor, rollouts,
                   loss_mask: torch.Tensor, ref_logprobs: torch.Tensor | None):  # fmt: skip
    """(advantages, returns, old_values, explained variance of old_values): the first three
    (N, T), from `objective.critic_advantages` (token rewards with the outcome on the last
    response token and, for kl_placement=reward, -beta * KL_t of the sampler on every token;
    GAE; the preset's scale over the batch's loss tokens)."""
    old_values = critic.values(rollouts.input_ids, rollouts.attention_mask,
                               rollouts.response_start)  # fmt: skip
    several = D.world().world_size > 1  # the scale's statistics are the global batch's
    advantages, returns = critic_advantages(
        replace(spec, scale="none") if several else spec, outcome, old_values,
        rollouts.response_mask, loss_mask,
        old_logprobs=rollouts.sampler_logprobs, ref_logprobs=ref_logprobs,
    )  # fmt: skip
    if not several:
        return (
            advantages,
            returns,
            old_values,
            float(explained_variance(old_values, returns, loss_mask)),
        )
    valid = loss_mask.bool()
    everyone, mine = _global_tokens(advantages, valid)  # (1, M) every rank's loss tokens
    scaled = scale_token_advantages(everyone, torch.ones_like(everyone, dtype=torch.bool),
                                    spec.scale, std_ddof=spec.std_ddof, eps=spec.adv_eps)  # fmt: skip
    advantages = torch.zeros_like(advantages).masked_scatter(valid, scaled[0, mine])
    values, _ = _global_tokens(old_values, valid)
    targets, _ = _global_tokens(returns, valid)
    explained = float(
        explained_variance(values, targets, torch.ones_like(values, dtype=torch.bool))
    )
    return advantages, returns, old_values, explained


def _global_tokens(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """(1, M) the loss-token entries of `x` (N, T) of every rank, in rank then row order (the
    order one process holds them in), and this rank's slice of them."""
    parts = D.gather_objects(x[valid].detach().cpu())
    rank = D.world().rank
    first = sum(len(p) for p in parts[:rank])
    everyone = torch.cat(parts).to(x.device)[None]
    return everyone, slice(first, first + len(parts[rank]))


def critic_metrics(totals: dict, explained: float) -> dict:
    """value/* metrics from `run_updates`'s critic sums (token sums; value_loss summed over steps)."""
    if "value_loss" not in totals:
        return {}
    tokens = max(totals.get("value_tokens", 0.0), 1.0)
    steps = max(totals.get("value_steps", 0.0), 1.0)
    return {
        "value/loss": totals["value_loss"] / steps,
        "value/clipfrac": totals["value_clipped_tokens"] / tokens,
        "value/explained_variance": explained,
        "value/mean": totals["value_sum"] / tokens,
        "value/return_mean": totals["return_sum"] / tokens,
        "value/grad_norm": totals["value_grad_norm"] / steps,
        "value/skipped_steps": totals["value_skipped_steps"],
    }
