"""The lineage as one table of knobs. Every algorithm is a choice of a few independent knobs.

Read top to bottom: each row changes one or two knobs of the one above it.

REINFORCE   Williams 1992. No baseline, no clip, sum over tokens / N.
PPO         Schulman et al. 2017 (RLHF form: Ouyang et al. 2022). Learned value baseline, advantages
            normalised over the batch, symmetric clip 0.2, token-level mean, k1 KL in the reward.
GRPO        Shao et al. 2024 (DeepSeekMath). Group-mean baseline divided by the group std,
            symmetric clip 0.2, per-sequence token mean (1/|y_i|), k3 KL (beta 0.04) in the loss.
RLOO        Ahmadian et al. 2024. Leave-one-out baseline, no std, no clip (a whole response is
            one action: sum over tokens / N), k1 KL folded into the reward.
DAPO        Yu et al. 2025. GRPO with clip-higher (0.2 / 0.28), token-level mean over the batch
            (sum / total tokens) and no KL. (Dynamic sampling and overlong shaping are data-side.)
Dr.GRPO     Liu et al. 2025 ("GRPO Done Right"). GRPO minus its two divisors: no /std, and
            sum over tokens / a constant instead of 1/|y_i|. beta 0 as in the paper's runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from drgrpo.objective.advantages import BASELINES, SCALES
from drgrpo.objective.aggregate import AGGREGATIONS, CONSTANT_NORMALIZERS
from drgrpo.objective.kl import KL_ESTIMATORS

KL_PLACEMENTS = ("loss", "reward")


@dataclass(frozen=True)
class ObjectiveSpec:
    """Every knob of the objective. Build one with ``resolve_objective(preset, **overrides)``."""

    name: str = "custom"
    """The preset this spec came from (display only; the knobs below are what count)."""
    baseline: str = "group_mean"
    """What is subtracted from the reward: none | group_mean | leave_one_out | value."""
    scale: str = "none"
    """What the centred reward is divided by: none | group_std | batch_std."""
    std_ddof: int = 0
    """Delta degrees of freedom of the std: 0 = population (the lesson), 1 = sample (TRL, oat)."""
    adv_eps: float = 1e-6
    """Added to the std so that a group with equal rewards divides by eps, not 0."""
    clip_eps_low: float | None = 0.2
    """PPO clip below: ratio >= 1 - clip_eps_low. None (with clip_eps_high None) = no clip."""
    clip_eps_high: float | None = 0.2
    """PPO clip above: ratio <= 1 + clip_eps_high. Larger than clip_eps_low = DAPO clip-higher."""
    dual_clip_c: float | None = None
    """Dual clip (Ye et al. 2020): cap a negative-advantage token's loss at -c * A; c > 1."""
    aggregation: str = "constant"
    """Length aggregation: seq_mean_token_mean (GRPO) | token_mean (DAPO) | constant (Dr.GRPO)."""
    constant_normalizer: str = "num_sequences"
    """For aggregation=constant: num_sequences (N) | num_sequences_x_max_tokens (N * L_max)."""
    kl_coef: float = 0.0
    """beta, the weight of KL(pi || pi_ref). 0 skips the reference model entirely."""
    kl_estimator: str = "k3"
    """k1 | k2 | k3 (see objective/kl.py)."""
    kl_placement: str = "loss"
    """loss: beta * KL aggregated like the policy term; reward: r_i -= beta * sum_t KL_t."""

    def __post_init__(self) -> None:
        _check_choice("baseline", self.baseline, BASELINES)
        _check_choice("scale", self.scale, SCALES)
        _check_choice("aggregation", self.aggregation, AGGREGATIONS)
        _check_choice("constant_normalizer", self.constant_normalizer, CONSTANT_NORMALIZERS)
        _check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _check_choice("kl_placement", self.kl_placement, KL_PLACEMENTS)
        if self.std_ddof not in (0, 1):
            raise ValueError(f"objective.std_ddof must be 0 or 1, got {self.std_ddof}")
        if not self.adv_eps > 0:
            raise ValueError(f"objective.adv_eps must be > 0, got {self.adv_eps}")
        if (self.clip_eps_low is None) != (self.clip_eps_high is None):
            raise ValueError(
                "objective.clip_eps_low and clip_eps_high must both be set (clip) or both be "
                "None (no clip, as in REINFORCE)"
            )
        for knob in ("clip_eps_low", "clip_eps_high"):
            value = getattr(self, knob)
            if value is not None and not value >= 0:
                raise ValueError(f"objective.{knob} must be >= 0 (e.g. 0.2), got {value}")
        if self.clip_eps_low is not None and self.clip_eps_low >= 1:
            raise ValueError(f"objective.clip_eps_low must be < 1, got {self.clip_eps_low}")
        if self.dual_clip_c is not None:
            if self.clip_eps_low is None:
                raise ValueError("objective.dual_clip_c needs the PPO clip (set clip_eps_*)")
            if not self.dual_clip_c > 1:
                raise ValueError(
                    f"objective.dual_clip_c must be > 1 (e.g. 3), got {self.dual_clip_c}"
                )
        if not self.kl_coef >= 0:
            raise ValueError(f"objective.kl_coef must be >= 0, got {self.kl_coef}")

    @property
    def uses_clip(self) -> bool:
        return self.clip_eps_low is not None

    @property
    def uses_reference(self) -> bool:
        return self.kl_coef > 0

    def check_group_size(self, group_size: int) -> None:
        """Combinations that only fail once K is known; called when a trainer config is made."""
        if self.baseline == "group_mean" and group_size < 2:
            raise ValueError(
                "baseline=group_mean needs group_size >= 2 (with one rollout per prompt every "
                "advantage is 0): raise the group size or use baseline=none"
            )
        if self.baseline == "leave_one_out" and group_size < 2:
            raise ValueError(
                f"baseline=leave_one_out needs group_size >= 2, got {group_size}: raise the group "
                "size or use baseline=none"
            )
        if self.scale == "group_std" and group_size < 2:
            raise ValueError(
                f"scale=group_std needs group_size >= 2 (the std of one reward is 0), got "
                f"{group_size}: raise the group size or use scale=none"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def _check_choice(knob: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"objective.{knob}={value!r} is not valid; choose one of {list(choices)}")


_NO_CLIP = {"clip_eps_low": None, "clip_eps_high": None}

# One row per algorithm; knobs not named keep the ObjectiveSpec defaults above.
PRESETS: dict[str, dict] = {
    "reinforce": dict(baseline="none", scale="none", **_NO_CLIP, aggregation="constant"),
    "ppo": dict(baseline="value", scale="batch_std", aggregation="token_mean",
                kl_coef=0.05, kl_estimator="k1", kl_placement="reward"),
    "grpo": dict(baseline="group_mean", scale="group_std", aggregation="seq_mean_token_mean",
                 kl_coef=0.04, kl_estimator="k3", kl_placement="loss"),
    "rloo": dict(baseline="leave_one_out", scale="none", **_NO_CLIP, aggregation="constant",
                 kl_coef=0.05, kl_estimator="k1", kl_placement="reward"),
    "dapo": dict(baseline="group_mean", scale="group_std", clip_eps_low=0.2, clip_eps_high=0.28,
                 aggregation="token_mean", kl_coef=0.0),
    "dr_grpo": dict(baseline="group_mean", scale="none", aggregation="constant",
                    constant_normalizer="num_sequences", kl_coef=0.0, kl_estimator="k3"),
}  # fmt: skip

KNOBS = tuple(f.name for f in fields(ObjectiveSpec) if f.name != "name")


def resolve_objective(preset: str = "dr_grpo", **overrides) -> ObjectiveSpec:
    """A preset's knobs with ``overrides`` on top, validated. Unknown names fail with the list."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - set(KNOBS))
    if unknown:
        raise ValueError(f"unknown objective knob(s) {unknown}; valid knobs: {list(KNOBS)}")
    return replace(ObjectiveSpec(name=preset, **PRESETS[preset]), **overrides)
