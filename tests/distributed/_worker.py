"""The multi-process side of test_distributed.py: `python _worker.py SCENARIO OUT_DIR`, under
torchrun for 2 ranks. Rank 0 writes what it measured to OUT_DIR/SCENARIO.json; the test asserts.

Every comparison is against world size 1 computed in the same process on a plain model, from
the same micro-batches (HF's RMSNorm computes in float32 whatever the model dtype, so a
different split would differ by float32 round-off, not by a bug).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from drgrpo.models import build_model, sequence_logprobs  # noqa: E402
from drgrpo.models.forward import LogprobModel  # noqa: E402
from drgrpo.models.wrappers import describe_wrapping, reads_raw_weights  # noqa: E402
from drgrpo.objective import (  # noqa: E402
    ObjectiveSpec,
    compute_advantages,
    compute_normalizer,
    objective_loss,
)
from drgrpo.rollout.hf_fast import LlamaStepper  # noqa: E402
from drgrpo.train import distributed as D  # noqa: E402
from drgrpo.train import sharded as S  # noqa: E402

N, K, P, T, MICRO = 8, 4, 5, 7, 2  # 2 groups of 4; micro-batches of 2 rows
MAX_TOKENS = T  # L_max, a config constant
MODES = [
    ("seq_mean_token_mean", "num_sequences"),
    ("token_mean", "num_sequences"),
    ("constant", "num_sequences"),
    ("constant", "num_sequences_x_max_tokens"),
]


def new_model():
    return build_model(
        "tiny", 100, seed=0, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
        num_attention_heads=4, initializer_range=0.3,
    ).double()  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Micro:
    input_ids: torch.Tensor  # (n, P+T)
    attention_mask: torch.Tensor  # (n, P+T)
    response_mask: torch.Tensor  # (n, T)
    advantages: torch.Tensor  # (n,)
    old_logprobs: torch.Tensor  # (n, T)
    ref_logprobs: torch.Tensor  # (n, T)

    def select(self, index):
        return Micro(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))


def global_batch(seed: int, spec: ObjectiveSpec) -> tuple[Micro, torch.Tensor]:
    """(the N rows, their rewards): ragged prompts and responses, old log-probs perturbed from
    the model's (ratio != 1, some clipped), reference log-probs perturbed again."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (N, P + T), generator=g)
    mask = torch.ones((N, P + T), dtype=torch.bool)
    for i in range(N):
        mask[i, : int(torch.randint(0, P - 1, (), generator=g))] = False
        mask[i, P + int(torch.randint(1, T + 1, (), generator=g)) :] = False
    rewards = torch.randint(0, 3, (N,), generator=g).double() / 2
    with torch.no_grad():
        logprobs = sequence_logprobs(new_model(), ids, mask, P)[0]
    old = logprobs + 0.3 * torch.randn(logprobs.shape, generator=g, dtype=torch.float64)
    ref = logprobs + 0.2 * torch.randn(logprobs.shape, generator=g, dtype=torch.float64)
    advantages = compute_advantages(rewards, K, baseline=spec.baseline, scale=spec.scale)
    return Micro(ids, mask, mask[:, P:], advantages, old, ref), rewards


def spec_for(aggregation, constant, kl):
    return ObjectiveSpec(aggregation=aggregation, constant_normalizer=constant, kl_coef=kl)


def backward(root, micros, spec, z) -> float:
    """Sum of the micro-batch losses; their gradients accumulate in .grad."""
    total = 0.0
    for m in micros:
        logprobs, _ = sequence_logprobs(root, m.input_ids, m.attention_mask, P)
        ref = m.ref_logprobs if spec.kl_coef > 0 else None
        loss, _ = objective_loss(spec, logprobs, m.old_logprobs, m.advantages, m.response_mask,
                                 z, ref_logprobs=ref)  # fmt: skip
        loss.backward()
        total += float(loss.detach())
    return total


def rank_micros(batch: Micro, rows: range) -> list[Micro]:
    return [batch.select(torch.arange(a, min(a + MICRO, rows.stop))) for a in rows[::MICRO]]


def step(root, spec, batch, rows, *, replicate, per_rank_z=False, max_norm=0.0):
    """One optimizer step's backward on this rank's `rows`: (global loss, grad norm, skip);
    the gradient is clipped to `max_norm` when > 0."""
    micros = rank_micros(batch, rows)
    count = D.micro_batch_count(len(micros))
    micros += [D.padding_micro_batch(micros[0]) for _ in range(count - len(micros))]
    local = (len(rows), int(batch.response_mask[rows.start : rows.stop].sum()))
    sequences, tokens = local if per_rank_z else D.global_counts(*local)
    z = compute_normalizer(spec.aggregation, num_sequences=sequences, num_tokens=tokens,
                           max_tokens=MAX_TOKENS, constant_normalizer=spec.constant_normalizer)  # fmt: skip
    local_loss = backward(root, micros, spec, z)
    if replicate:
        D.replicate_gradients(root)
    norm = D.clip_grad_norm(root, max_norm)
    skip = D.any_rank(not math.isfinite(local_loss)) or not math.isfinite(norm)
    return D.all_sum([local_loss])[0], norm, skip


def full_grads(root) -> torch.Tensor:
    grads = [p.grad for _, p in sorted(root.model.named_parameters())]
    return torch.cat(
        [(g.full_tensor() if hasattr(g, "full_tensor") else g).flatten() for g in grads]
    )


def full_params(root) -> dict[str, torch.Tensor]:
    return {
        k: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for k, p in root.model.named_parameters()
    }


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def local_reference(spec, batch) -> tuple[float, torch.Tensor]:
    """World size 1: every micro-batch on one plain model in this process (no collective),
    Z from the whole batch: (loss, flat gradient)."""
    root = LogprobModel(new_model())
    z = compute_normalizer(spec.aggregation, num_sequences=N,
                           num_tokens=int(batch.response_mask.sum()), max_tokens=MAX_TOKENS,
                           constant_normalizer=spec.constant_normalizer)  # fmt: skip
    loss = backward(root, rank_micros(batch, range(N)), spec, z)
    return loss, full_grads(root)


def invariance(w) -> dict:
    """World size 2 against 1 for every aggregation, KL on/off, FSDP2 and plain replication;
    the per-rank normalizer as a negative control."""
    out = {}
    half = range(w.rank * N // 2, (w.rank + 1) * N // 2)
    for aggregation, constant in MODES:
        for kl in (0.0, 0.1):
            spec = spec_for(aggregation, constant, kl)
            batch, _ = global_batch(1, spec)
            want_loss, want_grad = local_reference(spec, batch)
            name = f"{aggregation}/{constant}/kl={kl}"
            for mode in ("fsdp2", "replicate", "per_rank_z"):
                if mode == "fsdp2":
                    root = S.shard_model(new_model())
                else:
                    root = LogprobModel(new_model())
                    D.broadcast_parameters(root)
                loss, norm, _ = step(root, spec, batch, half, replicate=mode != "fsdp2",
                                     per_rank_z=mode == "per_rank_z")  # fmt: skip
                grad = full_grads(root)
                out[f"{name}/{mode}"] = {
                    "loss": abs(loss - want_loss) / abs(want_loss),
                    "grad": relative(grad, want_grad),
                    "norm": abs(norm - float(want_grad.norm())) / float(want_grad.norm()),
                }
    return out


def uneven_and_guards(w) -> dict:
    """Rank 0 holds 3 micro-batches, rank 1 one (plus 2 padding ones); the fast-path guards
    on a sharded model; gathered advantages; NaN on one rank."""
    out = {}
    spec = spec_for("token_mean", "num_sequences", 0.1)
    batch, rewards = global_batch(2, spec)
    want_loss, want_grad = local_reference(spec, batch)
    root = S.shard_model(new_model())
    rows = range(0, 6) if w.rank == 0 else range(6, 8)
    loss, _, _ = step(root, spec, batch, rows, replicate=False)
    out["uneven"] = {"loss": abs(loss - want_loss) / abs(want_loss),
                     "grad": relative(full_grads(root), want_grad)}  # fmt: skip
    lm = root.model
    out["generation"] = generation_under_fsdp2(root, batch)
    out["guards"] = {
        "describe": describe_wrapping(lm),
        "stepper_supports": LlamaStepper.supports(lm),
        "head_raw": reads_raw_weights(lm.get_output_embeddings()),
    }
    try:
        sequence_logprobs(lm, batch.input_ids, batch.attention_mask, P)
        out["guards"]["bare_lm"] = "accepted"
    except ValueError as e:
        out["guards"]["bare_lm"] = str(e)
    mine = slice(w.rank * N // 2, (w.rank + 1) * N // 2)
    same = {}
    for scale in ("none", "group_std", "batch_std"):
        got = D.global_advantages(rewards[mine], K, scale=scale, std_ddof=1)
        want = compute_advantages(rewards, K, scale=scale, std_ddof=1)[mine]
        same[scale] = bool(torch.equal(got, want))
    out["gathered_rewards_equal"] = bool(torch.equal(D.gather_rewards(rewards[mine]), rewards))
    out["advantages_equal"] = same
    out["any_rank"] = [D.any_rank(w.rank == 1), D.any_rank(False)]
    skipped = {}
    for mode in ("fsdp2", "replicate"):
        nan = batch.advantages.clone()
        if w.rank == 1:
            nan[6] = float("nan")
        poisoned = dataclasses.replace(batch, advantages=nan)
        root = S.shard_model(new_model()) if mode == "fsdp2" else LogprobModel(new_model())
        *_, skip = step(root, spec, poisoned, range(w.rank * 4, w.rank * 4 + 4),
                        replicate=mode == "replicate")  # fmt: skip
        flags = [None] * w.world_size
        D.dist.all_gather_object(flags, skip)
        skipped[mode] = flags
    out["nan_skipped"] = skipped
    return out


def generation_under_fsdp2(root, batch) -> dict:
    """Seeded sampling from the gathered sharded model equals the plain model's (fast path)."""
    from drgrpo.rollout import HFRolloutEngine

    prompts = [[1, 20, 15, 21], [1, 22], [1, 23, 15, 24, 30]]
    plain = HFRolloutEngine(new_model(), 2, 0).generate(prompts, max_new_tokens=8, seed=7)
    with S.gathered(root):
        got = HFRolloutEngine(root.model, 2, 0).generate(prompts, max_new_tokens=8, seed=7)
    resharded = all(type(p).__name__ == "DTensor" for p in root.parameters())
    return {
        "same_tokens": bool(torch.equal(got.response_ids, plain.response_ids)),
        "logprob_error": float((got.sampler_logprobs - plain.sampler_logprobs).abs().max()),
        "resharded_after": resharded,
    }


def lora_under_fsdp2(w) -> dict:
    """LoRA adapters (B != 0) on a sharded model: gradient invariance over the adapters, and
    reference log-probs with the adapters off equal to the base model's."""
    from drgrpo.models.lora import apply_lora, reference_logprobs

    def adapted():
        return apply_lora(new_model(), rank=4, alpha=8.0, init_identity=False)

    def adapter_grads(root):
        grads = [p.grad for k, p in sorted(root.model.named_parameters()) if p.requires_grad]
        return torch.cat([(g.full_tensor() if hasattr(g, "full_tensor") else g).flatten()
                          for g in grads])  # fmt: skip

    spec = spec_for("seq_mean_token_mean", "num_sequences", 0.1)
    batch, _ = global_batch(3, spec)
    want = LogprobModel(adapted())
    z = compute_normalizer(
        spec.aggregation, num_sequences=N, num_tokens=int(batch.response_mask.sum())
    )
    want_loss = backward(want, rank_micros(batch, range(N)), spec, z)
    root = S.shard_model(adapted())
    half = range(w.rank * N // 2, (w.rank + 1) * N // 2)
    loss, _, _ = step(root, spec, batch, half, replicate=False)
    base = sequence_logprobs(new_model(), batch.input_ids, batch.attention_mask, P)[0].detach()
    off = reference_logprobs(root, batch.input_ids, batch.attention_mask, P)  # sharded root
    return {
        "loss": abs(loss - want_loss) / abs(want_loss),
        "grad": relative(adapter_grads(root), adapter_grads(want)),
        "adapters_off_error": float((off - base).abs().max()),
        "reference_helper_error": float(
            (reference_logprobs(want.model, batch.input_ids, batch.attention_mask, P) - base)
            .abs()
            .max()
        ),
    }


def optimizer_for(root):
    return torch.optim.AdamW(root.parameters(), lr=1e-2, weight_decay=0.01)


DCP_SPEC = spec_for("constant", "num_sequences", 0.1)


def trained_step(root, optimizer, seed):
    """One whole optimizer step on global batch `seed`, this rank's half of it."""
    w = D.world()
    batch, _ = global_batch(seed, DCP_SPEC)
    n = N // w.world_size
    optimizer.zero_grad(set_to_none=True)
    *_, skip = step(root, DCP_SPEC, batch, range(w.rank * n, (w.rank + 1) * n),
                    replicate=w.world_size > 1 and describe_wrapping(root) is None,
                    max_norm=1.0)  # fmt: skip
    assert not skip
    optimizer.step()


def dcp_first(out_dir: Path) -> dict:
    """World size 1: step 1, checkpoint, step 2; step 2's parameters are the trajectory."""
    root = LogprobModel(new_model())
    optimizer = optimizer_for(root)
    trained_step(root, optimizer, 10)
    S.save_checkpoint(out_dir / "ckpt_ws1", root, optimizer, {"step": 1})
    torch.save(torch.rand(3), out_dir / "draw_after_save.pt")  # the RNG stream a resume continues
    trained_step(root, optimizer, 11)
    torch.save(full_params(root), out_dir / "trajectory_step2.pt")
    return {}


def dcp_at_two(w, out_dir: Path) -> dict:
    """World size 2 (FSDP2): resume the 1-process checkpoint (1 -> 2); and write a checkpoint
    after step 1 at 2 ranks, for the 2 -> 1 resume."""
    want = torch.load(out_dir / "trajectory_step2.pt")
    root = S.shard_model(new_model())
    with torch.no_grad():  # start elsewhere, so the load has to do the work
        for p in root.parameters():
            p.add_(1.0)
    optimizer = optimizer_for(root)
    state = S.load_checkpoint(out_dir / "ckpt_ws1", root, optimizer)
    trained_step(root, optimizer, 11)
    got = full_params(root)
    one_to_two = max(relative(got[k], want[k]) for k in want)
    export = S.full_state_dict(root)  # the HF export of a sharded run: rank 0 only
    if w.is_main:
        export_equal = all(torch.equal(export[k], got[k]) for k in got) and len(export) >= len(got)
    else:
        export_equal = export is None
    root = S.shard_model(new_model())
    optimizer = optimizer_for(root)
    trained_step(root, optimizer, 10)
    S.save_checkpoint(out_dir / "ckpt_ws2", root, optimizer, {"step": 1})
    return {"one_to_two": one_to_two, "state": state, "export_equal": export_equal}


def dcp_resume(out_dir: Path) -> dict:
    """World size 1, plain model: resume the 2-rank checkpoint (2 -> 1), step 2."""
    want = torch.load(out_dir / "trajectory_step2.pt")
    result = {}
    for fresh_optimizer in (False, True):  # True: the control, Adam's moments not restored
        root = LogprobModel(new_model())
        with torch.no_grad():  # start elsewhere, so the load has to do the work
            for p in root.parameters():
                p.add_(1.0)
        optimizer = optimizer_for(root)
        state = S.load_checkpoint(out_dir / "ckpt_ws2", root, optimizer)
        if fresh_optimizer:
            optimizer = optimizer_for(root)
        trained_step(root, optimizer, 11)
        got = full_params(root)
        error = max(relative(got[k], want[k]) for k in want)
        result["fresh_optimizer" if fresh_optimizer else "two_to_one"] = error
    result["state"] = state
    result["files"] = sorted(p.name for p in (out_dir / "ckpt_ws2").iterdir())
    # Same world size: this rank's RNG continues where the saving run's did.
    state = S.load_checkpoint(out_dir / "ckpt_ws1", root, optimizer_for(root))
    result["same_world_rng"] = [
        state["rng_restored"],
        bool(torch.equal(torch.rand(3), torch.load(out_dir / "draw_after_save.pt"))),
    ]
    return result


def main(scenario: str, out_dir: str) -> None:
    out_dir = Path(out_dir)
    w = D.init_distributed(timeout_s=120)
    if scenario == "dcp_first":
        result = dcp_first(out_dir)
    elif scenario == "dcp_resume":
        result = dcp_resume(out_dir)
    elif scenario == "two_ranks":
        result = {"world_size": w.world_size, **invariance(w), **uneven_and_guards(w),
                  "lora": lora_under_fsdp2(w),
                  "dcp": dcp_at_two(w, out_dir)}  # fmt: skip
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    if w.is_main:
        (out_dir / f"{scenario}.json").write_text(json.dumps(result, indent=1, default=str))
    D.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
