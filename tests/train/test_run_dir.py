"""Run-folder rules: one run per folder, logs cut back to the checkpoint on resume, a finished
run left alone, torn lines tolerated where a kill can leave them and nowhere else."""

from __future__ import annotations

import json

import pytest
import torch

from drgrpo.train import run_dir as rd
from drgrpo.train.checkpoint import MANIFEST, list_checkpoints
from drgrpo.train.logging import RunLogger, read_jsonl, read_metrics
from drgrpo.train.run_dir import RunDirError, open_run_dir, write_text_atomic
from drgrpo.train.trainer import train

QUIET = {"progress": False}


@pytest.mark.parametrize("earlier", ["metrics.jsonl", "summary.json", "checkpoints"])
def test_fresh_start_over_an_earlier_run_is_refused(tmp_path, earlier):
    (tmp_path / earlier).mkdir() if earlier == "checkpoints" else (tmp_path / earlier).write_text(
        ""
    )
    with pytest.raises(RunDirError) as err:
        open_run_dir(tmp_path, steps=4, resume=False, overwrite=False)
    msg = str(err.value)
    assert earlier in msg and f"--resume {tmp_path}" in msg and "--overwrite" in msg


def test_overwrite_clears_only_what_a_run_writes(tmp_path):
    for name in rd.RUN_FILES:
        if name in ("checkpoints", "tensorboard", "plots"):
            (tmp_path / name / "sub").mkdir(parents=True)
        else:
            (tmp_path / name).write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    said = []
    start = open_run_dir(tmp_path, steps=4, resume=False, overwrite=True, say=said.append)
    assert start.checkpoint is None and start.finished is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert said == [f"--overwrite: clearing the earlier run in {tmp_path}"]


def test_empty_folder_needs_no_flag_and_flags_cannot_be_combined(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert open_run_dir(tmp_path, steps=4, resume=False, overwrite=False).checkpoint is None
    with pytest.raises(RunDirError, match="choose one"):
        open_run_dir(tmp_path, steps=4, resume=True, overwrite=True)


def _fake_checkpoint(folder, step):
    ckpt = folder / "checkpoints" / f"step-{step:06d}"
    ckpt.mkdir(parents=True)
    (ckpt / MANIFEST).write_text(json.dumps({"format": 1, "step": step, "files": {}}))


def test_finished_means_summary_and_final_checkpoint_at_steps(tmp_path):
    _fake_checkpoint(tmp_path, 4)
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 4}))
    said = []
    start = open_run_dir(tmp_path, steps=4, resume=True, overwrite=False, say=said.append)
    assert start.finished == {"steps": 4} and "already finished" in said[0]
    # Asked for more steps: the run goes on, and the stale summary goes.
    start = open_run_dir(tmp_path, steps=6, resume=True, overwrite=False)
    assert start.finished is None and start.checkpoint.name == "step-000004"
    assert not (tmp_path / "summary.json").exists()


def test_resume_without_a_checkpoint_starts_from_step_zero(tmp_path):
    said = []
    start = open_run_dir(tmp_path, steps=4, resume=True, overwrite=False, say=said.append)
    assert start.checkpoint is None and "starts again from step 0" in said[0]


def test_resume_cuts_each_log_back_to_its_size_at_the_checkpoint(tmp_path):
    log = RunLogger(tmp_path)
    log.log(0, {"eval/accuracy": 0.1})
    log.log(1, {"reward/mean": 0.5})
    log.write_lines("samples.jsonl", 1, [{"completion": "a"}])
    sizes = log.sync()  # the checkpoint of step 1 records these
    before = {name: (tmp_path / name).read_bytes() for name in sizes}
    assert sorted(sizes) == ["metrics.jsonl", "samples.jsonl"]
    log.log(1, {"eval/accuracy": 0.2})  # the final evaluation, at the checkpoint's own step
    log.write_lines("samples.jsonl", 2, [{"completion": "b"}])
    log.write_lines("reward_faults.jsonl", 2, [{"fault": "x"}])
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "rew')  # torn by a kill
    RunLogger(tmp_path, resume_step=1, log_sizes=sizes)
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data, name
    assert not (tmp_path / "reward_faults.jsonl").exists()  # not there at the checkpoint
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]


def test_resume_from_no_checkpoint_empties_the_logs(tmp_path):
    log = RunLogger(tmp_path)
    log.log(0, {"eval/accuracy": 0.1})  # the base evaluation, redone after the restart
    RunLogger(tmp_path, resume_step=-1, log_sizes={})
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_log_shorter_than_at_the_checkpoint_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(ValueError, match="fewer than the 100 it had"):
        RunLogger(tmp_path, resume_step=3, log_sizes={"metrics.jsonl": 100})


def test_checkpoint_without_sizes_drops_rows_after_its_step(tmp_path):
    rows = [{"step": s} for s in (0, 1, 2, 3)]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    RunLogger(tmp_path, resume_step=2)
    assert read_jsonl(tmp_path / "samples.jsonl") == rows[:3]


def test_torn_last_line_is_skipped_but_a_bad_middle_line_is_an_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"st')
    assert read_jsonl(path) == [{"step": 0}, {"step": 1}]
    path.write_text('{"step": 0}\n{"st\n{"step": 1}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2 is not a JSON line"):
        read_jsonl(path)


def test_log_mid_row_hook_writes_half_a_line(tmp_path, monkeypatch):
    class Killed(Exception):
        pass

    monkeypatch.setattr(rd, "_die", lambda: (_ for _ in ()).throw(Killed()))
    monkeypatch.setattr(rd, "_reached", {})
    monkeypatch.setenv(rd.KILL_ENV, "log.mid_row:2")
    log = RunLogger(tmp_path)
    log.log(0, {"a": 1.0})
    with pytest.raises(Killed):
        log.log(1, {"a": 2.0})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.startswith('{"step": 0, "a": 1.0}\n{"step"') and not text.endswith("\n")
    assert read_metrics(tmp_path) == [{"step": 0, "a": 1.0}]


def test_write_text_atomic_leaves_no_temporary(tmp_path):
    write_text_atomic(tmp_path / "summary.json", "{}\n")
    write_text_atomic(tmp_path / "summary.json", '{"a": 1}\n')
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert (tmp_path / "summary.json").read_text() == '{"a": 1}\n'


def test_train_refuses_an_earlier_run_and_overwrite_starts_clean(small_run):
    cfg = small_run("steps=1", "eval.num_prompts=1", "eval.num_samples=1", "eval.ks=[1]")
    train(cfg, **QUIET)
    first = (cfg.output_dir, read_metrics(cfg.output_dir))
    with pytest.raises(RunDirError, match="already holds a run"):
        train(cfg, **QUIET)
    train(cfg, overwrite=True, **QUIET)
    rows = read_metrics(cfg.output_dir)
    assert [r["step"] for r in rows] == [0, 1, 1]  # base eval, step 1, final eval: not doubled
    strip = [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]
    assert strip == [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in first[1]]


def test_resuming_a_finished_run_changes_nothing(small_run):
    cfg = small_run("steps=2", "eval.num_prompts=1", "eval.num_samples=1", "eval.ks=[1]")
    summary = train(cfg, **QUIET)
    logs = {p.name: p.read_bytes() for p in cfg_dir(cfg).glob("*.jsonl")}
    ckpts = [p.name for p in list_checkpoints(cfg.output_dir)]
    assert train(cfg, resume=True, **QUIET) == summary
    assert {p.name: p.read_bytes() for p in cfg_dir(cfg).glob("*.jsonl")} == logs
    assert [p.name for p in list_checkpoints(cfg.output_dir)] == ckpts


def test_resume_after_a_kill_before_the_summary_only_evaluates(small_run, monkeypatch):
    cfg = small_run("steps=2", "eval.num_prompts=2", "eval.num_samples=1", "eval.ks=[1]")
    summary = train(cfg, **QUIET)
    done = (cfg_dir(cfg) / "metrics.jsonl").read_text()
    (cfg_dir(cfg) / "summary.json").unlink()  # as if killed after the final eval row
    from drgrpo.train import trainer

    steps = []
    monkeypatch.setattr(trainer, "rl_step", lambda *a, **k: steps.append(1) or {})
    again = train(cfg, resume=True, **QUIET)
    assert steps == []  # no step is redone
    # The final eval row was cut (it came after the last checkpoint) and written again, equal.
    assert (cfg_dir(cfg) / "metrics.jsonl").read_text() == done
    assert again["final"] == summary["final"]


def cfg_dir(cfg):
    from pathlib import Path

    return Path(cfg.output_dir)


def test_ctrl_c_mid_step_finishes_the_step_then_checkpoints(small_run, dense_reward, monkeypatch):
    """SIGINT arrives after step 3 has updated the optimizer and data position but before it is
    logged: unguarded, the checkpoint saved on interrupt would mix step 3's state with step 2's
    number, and the resumed run would differ."""
    import os
    import signal

    from safetensors.torch import load_file

    from drgrpo.train import trainer

    straight = small_run(name="straight")
    train(straight, **QUIET)
    cfg = small_run(name="interrupted")
    real = trainer.rl_step

    def step_then_ctrl_c(run, step):
        metrics = real(run, step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics

    monkeypatch.setattr(trainer, "rl_step", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, **QUIET)
    assert list_checkpoints(cfg.output_dir)[-1].name == "step-000003"
    assert [r["step"] for r in read_metrics(cfg.output_dir)] == [0, 1, 2, 3]
    monkeypatch.setattr(trainer, "rl_step", real)
    train(cfg, resume=True, **QUIET)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # noqa: E731
    assert strip(read_metrics(cfg.output_dir)) == strip(read_metrics(straight.output_dir))
    wa, wb = (load_file(str(list_checkpoints(c.output_dir)[-1] / "model" / "model.safetensors"))
              for c in (straight, cfg))  # fmt: skip
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_second_ctrl_c_stops_at_once(monkeypatch):
    import os
    import signal

    exits = []
    monkeypatch.setattr(rd.os, "_exit", exits.append)
    said = []
    # what was there before (SIG_IGN when the suite runs as a background job, not the default)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), rd.InterruptGuard(said.append) as guard:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.requested and exits == []  # held: the step goes on
        os.kill(os.getpid(), signal.SIGINT)
        assert exits == [130]
    assert "finishing this step" in said[0] and "stopping now" in said[1]
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_cli_refuses_an_earlier_run_in_one_line(tmp_path, capsys):
    from drgrpo.app.cli import main

    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    assert main(["train", "--no-progress", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("drgrpo train: error: ") and "already holds a run" in err
    assert "--overwrite" in err and err.count("\n") == 1
    assert main(["train", "--resume", str(tmp_path), "--overwrite"]) == 2  # no config.json there


def test_tensorboard_drops_the_steps_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLogger(tmp_path, tensorboard=True)
    for step in (0, 1, 2, 3):
        log.log(step, {"reward/mean": float(step)})
    log.close()
    log = RunLogger(tmp_path, tensorboard=True, resume_step=1, log_sizes=None)
    log.log(2, {"reward/mean": 20.0})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [
        (0, 0.0), (1, 1.0), (2, 20.0)
    ]  # fmt: skip
