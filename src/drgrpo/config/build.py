"""Building a config: defaults, then a YAML/JSON file, then ``--preset``, then dotted
command-line overrides such as ``objective.clip_eps_high=0.28``; and the field documentation."""

from __future__ import annotations

import ast
import inspect
import json
import types
import typing
import warnings
from dataclasses import fields
from pathlib import Path

import yaml

from drgrpo.config.fields import SECTIONS, SFTConfig, TaskConfig, TrainConfig
from drgrpo.objective import ObjectiveSpec, resolve_objective


def build_config(
    file: str | Path | None = None,
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> TrainConfig:
    """Defaults, then a YAML/JSON file, then ``--preset``, then ``section.field=value`` overrides.

    ``--preset`` replaces the file's whole objective (its preset and its objective knobs, which
    would otherwise silently mix two algorithms, e.g. grpo's name on Dr.GRPO's normalizer): the
    dropped knobs are named in a warning. ``objective.KNOB=...`` overrides then apply on top.
    """
    raw = _read_mapping(file)
    if preset is not None:
        dropped = sorted(k for k in (raw.pop("objective", None) or {}) if k != "name")
        if dropped:
            warnings.warn(
                f"--preset {preset} replaces the objective of {file}: its knobs {dropped} are "
                "not used (give them as objective.KNOB=VALUE overrides to keep them)",
                stacklevel=2,
            )
        raw["preset"] = preset
    _apply_overrides(raw, overrides)
    return config_from_dict(raw)


def build_sft_config(
    file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> SFTConfig:
    """Defaults, then a YAML/JSON file of SFTConfig fields (``task: {name, options}`` nested),
    then ``field=value`` overrides such as ``lr=1e-3`` or ``task.options={k_max: 4}``."""
    raw = _read_mapping(file)
    _apply_overrides(raw, overrides)
    task = raw.pop("task", None) or {}
    return SFTConfig(
        task=_from_dict(TaskConfig, task, "task"), **_coerce_fields(SFTConfig, raw, prefix="")
    )


def _read_mapping(file: str | Path | None) -> dict:
    if file is None:
        return {}
    path = Path(file)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of sections")
    return loaded


def parse_assignment(item: str, what: str = "override", shape: str = "section.field=value"):
    """("key", value) from "key=value", the value read as YAML (so 3 is an int, [1, 4] a list)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{what} {item!r} must look like {shape}")
    return key.strip(), yaml.safe_load(text)


def _apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> None:
    for item in overrides:
        key, value = parse_assignment(item)
        _set_dotted(raw, key.replace("-", "_"), value)


def config_from_dict(raw: dict) -> TrainConfig:
    raw = dict(raw)
    objective = dict(raw.pop("objective", None) or {})
    preset = raw.pop("preset", None) or objective.get("name") or "dr_grpo"
    objective.pop("name", None)
    objective = _coerce_fields(ObjectiveSpec, objective, prefix="objective.")
    kwargs: dict = {"objective": resolve_objective(preset, **objective)}
    for name, cls in SECTIONS.items():
        kwargs[name] = _from_dict(cls, raw.pop(name, None) or {}, name)
    kwargs.update(_coerce_fields(TrainConfig, raw, prefix=""))
    return TrainConfig(**kwargs)


def load_config(path: str | Path) -> TrainConfig:
    """A resolved config saved by ``TrainConfig.save`` (JSON)."""
    return config_from_dict(json.loads(Path(path).read_text()))


def _set_dotted(raw: dict, key: str, value: object) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _from_dict(cls: type, values: dict, section: str) -> object:
    if not isinstance(values, dict):
        raise ValueError(f"config section {section!r} must be a mapping, got {values!r}")
    return cls(**_coerce_fields(cls, values, prefix=section + "."))


def _coerce_fields(cls: type, values: dict, prefix: str) -> dict:
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in fields(cls)} - set(SECTIONS) - {"objective"}
    out = {}
    for key, value in values.items():
        if key not in valid:
            raise ValueError(f"unknown config field {prefix}{key!r}; valid fields: {sorted(valid)}")
        out[key] = _coerce(hints[key], value, prefix + key)
    return out


def _coerce(hint: object, value: object, name: str) -> object:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list, got {value!r}")
        inner = args[0]
        return tuple(_coerce(inner, v, name) for v in value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, bool, str) and type(value) is hint:
        return value
    if hint is dict and isinstance(value, dict):
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise ValueError(f"{name} must be of type {expected}, got {value!r}")


def field_docs(cls: type) -> dict[str, str]:
    """The string under each field of a dataclass (the documentation of that knob)."""
    tree = ast.parse(inspect.getsource(cls).lstrip())
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe_fields() -> str:
    """Every field, its default and its documentation, for `drgrpo train --help-config`."""
    lines = []
    default = TrainConfig()
    for section, cls in [("objective", ObjectiveSpec), *SECTIONS.items(), ("", TrainConfig)]:
        docs = field_docs(cls)
        obj = getattr(default, section) if section else default
        lines.append(f"[{section or 'top level'}]")
        for f in fields(cls):
            if f.name in SECTIONS or f.name == "objective" or f.name not in docs:
                continue
            key = f"{section}.{f.name}" if section else f.name
            lines.append(f"  {key} = {getattr(obj, f.name)!r}\n      {docs[f.name]}")
    return "\n".join(lines)
