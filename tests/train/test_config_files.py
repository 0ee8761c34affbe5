"""The shipped configs: each builds, default.yaml is the built-in default, and the paper run
keeps no reference model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from drgrpo.config import build_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_builds(path):
    assert build_config(path).steps > 0


def test_default_yaml_is_the_built_in_default():
    assert dataclasses.asdict(build_config(CONFIGS / "default.yaml")) == dataclasses.asdict(
        build_config()
    )


def test_oat_zero_keeps_no_reference_model():
    cfg = build_config(CONFIGS / "oat_zero.yaml")
    assert cfg.objective.kl_coef == 0 and not cfg.objective.uses_reference
    assert cfg.monitor_kl is False  # otherwise a frozen copy of a 1.5B model and a forward a step


def _paper_qwen_math(question: str) -> str:
    # Re-typed from sail-sg/understand-r1-zero, train_zero_math.py, apply_qwen_math_template
    # (the same reference as tests/rollout/test_templates.py).
    return (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\n"
        + question
        + "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_oat_zero_renders_the_papers_prompt_on_a_qwen_folder(tmp_path, capsys):
    """The shipped paper config, through --dry-run on a Qwen2.5-shaped folder: the first prompt
    is the paper's Qwen-Math template around the row's question, a single \\boxed{} (not the
    literal {{}} the old config produced), encoded with no BOS."""
    from drgrpo.app.dry_run import dry_run
    from standins import build_qwen_standin

    data = tmp_path / "math.jsonl"
    data.write_text("\n".join(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)})
                              for i in range(1, 40)) + "\n")  # fmt: skip
    folder = build_qwen_standin(tmp_path / "qwen")
    paths = [f"model.base={folder}", f"task.options.path={data}"]
    # The stand-in's context is 512 tokens: 3000 new tokens cannot fit, said before any work.
    with pytest.raises(ValueError, match="lower rollout.max_new_tokens to at most"):
        dry_run(build_config(CONFIGS / "oat_zero.yaml", overrides=paths))
    cfg = build_config(CONFIGS / "oat_zero.yaml", overrides=[*paths, "rollout.max_new_tokens=256"])
    shown = dry_run(cfg)
    question = shown["prompt_text"].split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    assert shown["prompt_text"] == _paper_qwen_math(question)
    assert "\\boxed{}" in shown["prompt_text"] and "{{" not in shown["prompt_text"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert shown["prompt_ids"] == tokenizer(shown["prompt_text"])["input_ids"]  # no BOS added
    assert len(shown["stop_ids"]) == 2  # <|im_end|> and <|endoftext|>
    out = capsys.readouterr().out
    assert "memory estimate" in out and "first prompt" in out


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_names_its_prompt_template(path):
    cfg = build_config(path)
    assert cfg.rollout.prompt_template in ("none", "qwen_math", "r1", "chat")


def test_preset_on_the_command_line_replaces_the_files_objective():
    with pytest.warns(UserWarning, match="constant_normalizer"):
        cfg = build_config(CONFIGS / "oat_zero.yaml", preset="grpo")
    assert cfg.objective.name == "grpo"
    assert cfg.objective.aggregation == "seq_mean_token_mean"  # grpo's own, not the file's
    assert cfg.objective.scale == "group_std"
    kept = build_config(CONFIGS / "oat_zero.yaml", preset="grpo",
                        overrides=["objective.aggregation=constant"])  # fmt: skip
    assert kept.objective.aggregation == "constant"  # an explicit override still wins
