"""The lineage as one table of knobs. Every algorithm is a choice of a few independent knobs.

Read top to bottom: each row changes one or two knobs of the one above it.

REINFORCE   Williams 1992. No baseline, no clip, sum over tokens / N.
PPO         Schulman et al. 2017 (RLHF form: Ouyang et al. 2022). Learned value baseline, advantages
            normalised over the batch, symmetric clip 0.2, token-level mean, k1 KL in the reward.
            With a critic: GAE (gamma 1, lambda 0.95) on per-token rewards, clipped value loss.
GRPO        Shao et al. 2024 (DeepSeekMath). Group-mean baseline divided by the group std,
            symmetric clip 0.2, per-sequence token mean (1/|y_i|), k3 KL (beta 0.04) in the loss.
RLOO        Ahmadian et al. 2024. Leave-one-out baseline, no std, no clip (a whole response is
            one action: sum over tokens / N), k1 KL folded into the reward.
DAPO        Yu et al. 2025. GRPO with clip-higher (0.2 / 0.28), token-level mean over the batch
            (sum / total tokens) and no KL; on the data side dynamic sampling (drop groups whose
            rewards all agree) and the overlong soft punishment over the last fifth of L_max.
Dr.GRPO     Liu et al. 2025 ("GRPO Done Right"). GRPO minus its two divisors: no /std, and
            sum over tokens / a constant instead of 1/|y_i|. beta 0 as in the paper's runs.

Beyond the lesson (one row of knobs each):
GSPO        Zheng et al. 2025 (Qwen, arXiv 2507.18071). GRPO's advantages with the length-normalised
            SEQUENCE ratio clipped at 3e-4 / 4e-4 (paper v2, section 5.1; TRL's recipe), beta 0.
CISPO       MiniMax-M1 (MiniMax 2025, arXiv 2506.13585). Clip the stop-gradient importance weight,
            not the update: no token loses its gradient. No lower bound (eps_low 1, as the paper),
            eps_high 0.28 (Trinity-RFT's default, not a number from the paper), token mean, no KL.
REINFORCE++ Hu et al. 2025 (arXiv 2501.03262), "REINFORCE++-baseline": group mean, then whitened
            over the whole batch's response tokens (verl), PPO clip 0.2, token mean, k2 KL
            (beta 1e-3) in the loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from drgrpo.objective.advantages import BASELINES, SCALES
from drgrpo.objective.aggregate import AGGREGATIONS, CONSTANT_NORMALIZERS
from drgrpo.objective.correction import BEHAVIOR_CORRECTIONS, BEHAVIOR_LEVELS
from drgrpo.objective.kl import KL_ESTIMATORS
from drgrpo.objective.surrogate import POLICY_LOSSES, RATIO_LEVELS

KL_PLACEMENTS = ("loss", "reward")


@dataclass(frozen=True)
class ObjectiveSpec:
    """Every knob of the objective. Build one with ``resolve_objective(preset, **overrides)``."""

    name: str = "custom"
    """The preset this spec came from (display only; the knobs below are what count)."""
    baseline: str = "group_mean"
    """What is subtracted from the reward: none | group_mean | leave_one_out | value."""
    scale: str = "none"
    """What the centred reward is divided by: none | group_std | batch_std | batch_whiten
    (centre and divide over the batch's response tokens: REINFORCE++). With baseline=value the
    GAE advantages are scaled over the response tokens (see objective/gae.py)."""
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
    """loss: beta * KL aggregated like the policy term; reward: r_i -= beta * sum_t KL_t
    (with baseline=value: -beta * KL_t on every token's reward, the PPO-RLHF shaping)."""
    policy_loss: str = "ppo_clip"
    """ppo_clip: -min(rho A, clip(rho) A) | cispo: -sg[clip(rho)] A log pi (MiniMax-M1)."""
    ratio_level: str = "token"
    """token: rho_it per token | sequence: exp of the mean log-ratio of the rollout (GSPO)."""
    gae_gamma: float = 1.0
    """Discount of GAE, used with baseline=value (PPO-RLHF: 1)."""
    gae_lambda: float = 0.95
    """lambda of GAE, used with baseline=value (PPO-RLHF: 0.95)."""
    vf_coef: float = 0.1
    """Weight of the value loss when the value head shares the policy's trunk (TRL: 0.1)."""
    value_clip_eps: float | None = 0.2
    """Clip of the value prediction around the old value (TRL: 0.2); None = no clip."""
    behavior_correction: str = "none"
    """Sampler/trainer mismatch: none | tis (truncate w at the cap) | mis (drop tokens outside
    [behavior_lower, behavior_cap]); w = pi_old / pi_sampler, needs the sampler's log-probs."""
    behavior_level: str = "token"
    """token: w per token | sequence: product over the rollout | geometric: exp(mean log w),
    length-neutral (use a tight cap there, e.g. 1.01)."""
    behavior_cap: float = 2.0
    """Upper bound of the behaviour weight (TIS truncates there, MIS drops above); >= 1."""
    behavior_lower: float = 0.0
    """Lower bound under MIS (tokens below are dropped); 0 = none. In [0, 1)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards all agree and sample again until B groups are left."""
    max_sampling_rounds: int = 10
    """Dynamic sampling: at most this many generation rounds per step (verl's max_num_gen_batches)."""
    overlong_cache_fraction: float = 0.0
    """DAPO overlong shaping: the last fraction of max_new_tokens is the soft-punishment window
    (0 = off; DAPO: 4096 / 20480 = 0.2)."""
    overlong_penalty: float = 1.0
    """DAPO overlong shaping: the punishment at max_new_tokens (added to the reward as -this)."""

    def __post_init__(self) -> None:
        _check_choice("baseline", self.baseline, BASELINES)
        _check_choice("scale", self.scale, SCALES)
        _check_choice("aggregation", self.aggregation, AGGREGATIONS)
        _check_choice("constant_normalizer", self.constant_normalizer, CONSTANT_NORMALIZERS)
        _check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _check_choice("kl_placement", self.kl_placement, KL_PLACEMENTS)
        _check_choice("policy_loss", self.policy_loss, POLICY_LOSSES)
        _check_choice("ratio_level", self.ratio_level, RATIO_LEVELS)
        _check_choice("behavior_correction", self.behavior_correction, BEHAVIOR_CORRECTIONS)
        _check_choice("behavior_level", self.behavior_level, BEHAVIOR_LEVELS)
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
        if (
            self.clip_eps_low is not None
            and self.policy_loss == "ppo_clip"
            and self.clip_eps_low >= 1
        ):
            raise ValueError(f"objective.clip_eps_low must be < 1, got {self.clip_eps_low}")
        if self.clip_eps_low is not None and self.clip_eps_low > 1:
            raise ValueError(
                f"objective.clip_eps_low must be <= 1 (1 = no lower bound), got {self.clip_eps_low}"
            )
        if self.dual_clip_c is not None and self.policy_loss == "cispo":
            raise ValueError("objective.dual_clip_c is a ppo_clip knob: CISPO has no dual clip")
        if self.dual_clip_c is not None:
            if self.clip_eps_low is None:
                raise ValueError("objective.dual_clip_c needs the PPO clip (set clip_eps_*)")
            if not self.dual_clip_c > 1:
                raise ValueError(
                    f"objective.dual_clip_c must be > 1 (e.g. 3), got {self.dual_clip_c}"
                )
        if not self.kl_coef >= 0:
            raise ValueError(f"objective.kl_coef must be >= 0, got {self.kl_coef}")
        self._check_sampling_side()

    def _check_sampling_side(self) -> None:
        """The knobs added after the lesson: value, behaviour correction, DAPO's data side."""
        for knob in ("gae_gamma", "gae_lambda"):
            if not 0 <= getattr(self, knob) <= 1:
                raise ValueError(f"objective.{knob} must be in [0, 1], got {getattr(self, knob)}")
        if not self.vf_coef >= 0:
            raise ValueError(f"objective.vf_coef must be >= 0, got {self.vf_coef}")
        if self.value_clip_eps is not None and not self.value_clip_eps > 0:
            raise ValueError(
                f"objective.value_clip_eps must be > 0 or None (no clip), got {self.value_clip_eps}"
            )
        if not self.behavior_cap >= 1:
            raise ValueError(
                f"objective.behavior_cap must be >= 1 (e.g. 2), got {self.behavior_cap}"
            )
        if not 0 <= self.behavior_lower < 1:
            raise ValueError(
                f"objective.behavior_lower must be in [0, 1) (0 = none), got {self.behavior_lower}"
            )
        if self.max_sampling_rounds < 1:
            raise ValueError(
                f"objective.max_sampling_rounds must be >= 1, got {self.max_sampling_rounds}"
            )
        if not 0 <= self.overlong_cache_fraction < 1:
            raise ValueError(
                "objective.overlong_cache_fraction must be in [0, 1) (0 = off, DAPO 0.2), got "
                f"{self.overlong_cache_fraction}"
            )
        if not self.overlong_penalty >= 0:
            raise ValueError(
                f"objective.overlong_penalty must be >= 0, got {self.overlong_penalty}"
            )

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
        if self.dynamic_sampling and group_size < 2:
            raise ValueError(
                "objective.dynamic_sampling needs group_size >= 2 (a group of one reward always "
                "agrees with itself, so every group would be dropped): raise the group size"
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
                 aggregation="token_mean", kl_coef=0.0,
                 dynamic_sampling=True, overlong_cache_fraction=0.2, overlong_penalty=1.0),
    "dr_grpo": dict(baseline="group_mean", scale="none", aggregation="constant",
                    constant_normalizer="num_sequences", kl_coef=0.0, kl_estimator="k3"),
    # beyond the lesson
    "gspo": dict(baseline="group_mean", scale="group_std", ratio_level="sequence",
                 clip_eps_low=3e-4, clip_eps_high=4e-4, aggregation="seq_mean_token_mean",
                 kl_coef=0.0),
    "cispo": dict(baseline="group_mean", scale="group_std", policy_loss="cispo",
                  clip_eps_low=1.0, clip_eps_high=0.28, aggregation="token_mean", kl_coef=0.0),
    "reinforce_pp": dict(baseline="group_mean", scale="batch_whiten", aggregation="token_mean",
                         kl_coef=1e-3, kl_estimator="k2", kl_placement="loss"),
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
