"""Run configuration: the fields (`fields.py`) and how a config is built (`build.py`)."""

from drgrpo.config.build import (
    build_config,
    build_sft_config,
    config_from_dict,
    describe_fields,
    field_docs,
    load_config,
    parse_assignment,
)
from drgrpo.config.fields import (
    SECTIONS,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    SFTConfig,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "SECTIONS",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "RolloutConfig",
    "SFTConfig",
    "TaskConfig",
    "TrainConfig",
    "build_config",
    "build_sft_config",
    "config_from_dict",
    "describe_fields",
    "field_docs",
    "load_config",
    "parse_assignment",
]
