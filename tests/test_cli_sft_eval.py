"""`drgrpo sft` and `drgrpo eval` through the real argument parser."""

from __future__ import annotations

import json

import pytest
import torch

from drgrpo.app.cli import main
from drgrpo.config import SFTConfig

EVAL_KEYS = {"accuracy", "greedy_accuracy", "pass_at_k", "len_correct", "len_incorrect",
             "truncated_frac", "num_prompts", "num_samples"}  # fmt: skip


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "sft model"  # a space survives the override quoting
    code = main(["sft", "--task", "arithmetic", "--output", str(out), "--seed", "3", "--no-progress",
                 "max_steps=5", "batch_size=8", "check_every=100", "eval_prompts=4",
                 "task.options={k_max: 3}"])  # fmt: skip
    assert code == 0
    return out


def test_sft_writes_the_resolved_config(sft_dir):
    saved = json.loads((sft_dir / "sft_config.json").read_text())
    assert saved["output_dir"] == str(sft_dir)
    assert saved["seed"] == 3 and saved["max_steps"] == 5 and saved["batch_size"] == 8
    assert saved["task"] == {"name": "arithmetic", "options": {"k_max": 3}}
    assert json.loads((sft_dir / "sft_summary.json").read_text())["steps"] == 5


def test_eval_json_has_the_metrics(sft_dir, capsys, monkeypatch):
    import drgrpo.tasks

    made = []
    make_task = drgrpo.tasks.make_task
    monkeypatch.setattr(
        drgrpo.tasks, "make_task", lambda *a, **k: made.append((a, k)) or make_task(*a, **k)
    )
    capsys.readouterr()
    code = main(["eval", str(sft_dir), "--task", "arithmetic", "--json", "--num-prompts", "8",
                 "--num-samples", "2", "--max-new-tokens", "24", "--task-option", "k_max=3"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= EVAL_KEYS
    assert out["num_prompts"] == 8 and out["num_samples"] == 2
    assert set(out["pass_at_k"]) == {"1", "2"}
    assert 0 <= out["accuracy"] <= 1 and 0 <= out["greedy_accuracy"] <= 1
    assert 0 <= out["truncated_frac"] <= 1
    assert 0 < out["len_mean"] <= 24  # --max-new-tokens reached the sampler
    assert out["task_options"] == {"k_max": 3}
    assert made == [(("arithmetic",), {"k_max": 3})]  # ...and --task-option reached the task


def test_eval_table(sft_dir, capsys):
    assert main(["eval", str(sft_dir), "--num-prompts", "2", "--num-samples", "1",
                 "--max-new-tokens", "8"]) == 0  # fmt: skip
    assert "greedy_accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "{missing}"], "does not exist"),
        (["eval", "{empty}"], "no config.json"),
        (["eval", "{model}", "--task", "nope"], "unknown task 'nope'"),
        (["eval", "{model}", "--task-option", "k_max"], "must look like key=value"),
        (["eval", "{model}", "--task-option", "kmax=3"], "unknown option 'kmax'"),
        (["eval", "{model}", "--num-prompts", "0"], "num_prompts must be > 0"),
        (["sft", "--output", "{missing}", "learning_rate=1"], "unknown config field"),
        (["sft", "--config", "{missing}"], "does not exist"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, sft_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nowhere", "empty": tmp_path / "empty", "model": sft_dir}
    code = main([a.format(**paths) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and err.startswith(f"drgrpo {argv[0]}: error:")
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_eval_on_a_missing_gpu_is_one_clear_line(sft_dir, capsys):
    assert main(["eval", str(sft_dir), "--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_sft_help_config_lists_every_field_with_its_default(capsys):
    assert main(["sft", "--help-config"]) == 0
    out = capsys.readouterr().out
    for name, value in SFTConfig().to_dict().items():
        assert f"  {name} = {value!r}\n" in out
