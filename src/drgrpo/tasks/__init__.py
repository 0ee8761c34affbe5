"""Tasks: deterministic prompt sources with pure verifiers. Nothing here imports the rest of drgrpo.

task = make_task("arithmetic", k_max=4)
example = task.train_example(0)     # Example(prompt="12+34+5=", reference="51", ...)
task.verify(completion, example.reference)  # float in [0, 1], 1.0 iff correct
task.reward_spec()                  # the reward terms (tasks.reward_spec), JSON-able

User data and rewards: `make_task("math", path=..., answer_format="gsm8k", rewards=[...])`,
see tasks.data (sources, column mapping), tasks.answers (presets), tasks.reward_spec (terms),
tasks.graders (built-in reward functions).
"""

from __future__ import annotations

import dataclasses

from drgrpo.tasks.arithmetic import ArithmeticTask
from drgrpo.tasks.base import Example, Task
from drgrpo.tasks.countdown import CountdownTask
from drgrpo.tasks.math_task import MathTask
from drgrpo.tasks.reward_spec import (
    BUILTIN_REWARDS,
    RewardTerm,
    load_reward_function,
    parse_rewards,
)

TASKS: dict[str, type[Task]] = {
    ArithmeticTask.name: ArithmeticTask,
    CountdownTask.name: CountdownTask,
    MathTask.name: MathTask,
}


def make_task(name: str, **kwargs: object) -> Task:
    """Build the task registered as `name` from its knobs; ValueError on an unknown name, an
    unknown or missing knob, or a bad value."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    knobs = {f.name: f for f in dataclasses.fields(TASKS[name]) if f.init}
    unknown = sorted(set(kwargs) - set(knobs))
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for task {name!r}; valid options: {', '.join(knobs)}"
        )
    missing = [
        knob
        for knob, f in knobs.items()
        if knob not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"task {name!r} needs {', '.join(missing)}=...")
    return TASKS[name](**kwargs)


__all__ = [
    "BUILTIN_REWARDS",
    "TASKS",
    "ArithmeticTask",
    "CountdownTask",
    "Example",
    "MathTask",
    "RewardTerm",
    "Task",
    "load_reward_function",
    "make_task",
    "parse_rewards",
]
