"""Checkpoints under a crash at every point of the write: each window is entered through the
DRGRPO_KILL_AT hook (with the kill replaced by an exception raised at the same place, so no
cleanup runs), or by leaving the folder in that intermediate state by hand."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from drgrpo.models import build_model
from drgrpo.train import run_dir
from drgrpo.train.checkpoint import (
    MANIFEST,
    CheckpointError,
    CorruptCheckpoint,
    IncompleteCheckpoint,
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    prune_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)

FRESH_POINTS = ("checkpoint.after_model", "checkpoint.after_optimizer",
                "checkpoint.before_manifest", "checkpoint.after_manifest")  # fmt: skip


class Killed(Exception):
    """Stands for SIGKILL: raised where the process would die."""


@pytest.fixture(scope="module")
def parts(tokenizer):
    model = build_model("tiny", len(tokenizer), seed=0, hidden_size=16, intermediate_size=32,
                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 5, 6]])).logits.sum().backward()
    optimizer.step()  # a non-empty optimizer state
    return model, tokenizer, optimizer


@pytest.fixture
def kill_at(monkeypatch):
    """kill_at("point:N") arms the hook; the kill raises Killed instead."""

    def _die():
        raise Killed

    monkeypatch.setattr(run_dir, "_die", _die)

    def arm(spec: str | None) -> None:
        monkeypatch.setattr(run_dir, "_reached", {})
        if spec is None:
            monkeypatch.delenv(run_dir.KILL_ENV, raising=False)
        else:
            monkeypatch.setenv(run_dir.KILL_ENV, spec)

    return arm


def save(parts, folder, step, tag="", keep=3):
    model, tokenizer, optimizer = parts
    return save_checkpoint(folder, step, model=model, tokenizer=tokenizer, optimizer=optimizer,
                           state={"tag": tag}, config={"seed": 0}, generator=torch.Generator(),
                           keep=keep)  # fmt: skip


def tag_of(ckpt) -> str:
    return json.loads((ckpt / "state.json").read_text())["tag"]


def entries(folder) -> list[str]:
    return sorted(p.name for p in (folder / "checkpoints").iterdir())


def test_manifest_lists_every_file_with_its_size_and_hash(parts, tmp_path):
    ckpt = save(parts, tmp_path, 1)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    on_disk = sorted(
        p.relative_to(ckpt).as_posix()
        for p in ckpt.rglob("*")
        if p.is_file() and p.name != MANIFEST
    )
    assert sorted(manifest["files"]) == on_disk
    assert {"model/model.safetensors", "optimizer.pt", "rng.pt", "state.json"} <= set(on_disk)
    for rel, meta in manifest["files"].items():
        data = (ckpt / rel).read_bytes()
        assert meta == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    verify_checkpoint(ckpt)  # does not raise
    assert entries(tmp_path) == ["step-000001"]  # no leftovers


@pytest.mark.parametrize("point", FRESH_POINTS)
def test_kill_while_writing_a_new_step_keeps_the_previous_one(parts, tmp_path, kill_at, point):
    save(parts, tmp_path, 1, tag="one")
    kill_at(point)
    with pytest.raises(Killed):
        save(parts, tmp_path, 2, tag="two")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]  # tmp never listed
    said = []
    ckpt = latest_checkpoint(tmp_path, say=said.append)
    assert ckpt.name == "step-000001" and tag_of(ckpt) == "one"
    assert len(said) == 1 and said[0].startswith("removed .tmp-step-000002-")
    assert entries(tmp_path) == ["step-000001"]


@pytest.mark.parametrize("point", [*FRESH_POINTS, "checkpoint.overwrite_moved_aside",
                                   "checkpoint.overwrite_renamed_in"])  # fmt: skip
def test_kill_while_overwriting_the_only_checkpoint_never_loses_it(parts, tmp_path, kill_at, point):
    save(parts, tmp_path, 2, tag="old")
    kill_at(point)
    with pytest.raises(Killed):
        save(parts, tmp_path, 2, tag="new")
    said = []
    ckpt = latest_checkpoint(tmp_path, say=said.append)
    # Only once the new copy is renamed in is it the checkpoint; before, the old one is.
    assert tag_of(ckpt) == ("new" if point.endswith("renamed_in") else "old")
    verify_checkpoint(ckpt)
    if point.endswith("moved_aside"):  # step-000002 was missing: the .old- copy is put back
        assert any(m.startswith("recovered step-000002 from .old-step-000002-") for m in said)
    assert entries(tmp_path) == ["step-000002"]
    kill_at(None)
    assert tag_of(save(parts, tmp_path, 2, tag="again")) == "again"  # the next overwrite works


def test_kill_while_pruning_leaves_only_trash_which_is_removed(parts, tmp_path, kill_at):
    save(parts, tmp_path, 1, keep=1)
    kill_at("checkpoint.prune")
    with pytest.raises(Killed):
        save(parts, tmp_path, 2, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
    assert latest_checkpoint(tmp_path).name == "step-000002"
    assert entries(tmp_path) == ["step-000002"]


def test_hook_fires_on_the_nth_time_only(parts, tmp_path, kill_at):
    kill_at("checkpoint.after_model:3")
    save(parts, tmp_path, 1)
    save(parts, tmp_path, 2)
    with pytest.raises(Killed):
        save(parts, tmp_path, 3)
    save(parts, tmp_path, 4)  # the 4th time passes
    assert latest_checkpoint(tmp_path).name == "step-000004"


def test_old_copy_is_dropped_when_its_replacement_is_complete(parts, tmp_path):
    ckpt = save(parts, tmp_path, 2, tag="new")
    shutil.copytree(ckpt, tmp_path / "checkpoints" / ".old-step-000002-77")
    said = []
    assert tag_of(latest_checkpoint(tmp_path, say=said.append)) == "new"
    assert said == ["removed .old-step-000002-77 (left by an interrupted save)"]
    assert entries(tmp_path) == ["step-000002"]


def test_old_copy_replaces_an_incomplete_step_folder(parts, tmp_path):
    ckpt = save(parts, tmp_path, 2, tag="old")
    shutil.copytree(ckpt, tmp_path / "checkpoints" / ".old-step-000002-77")
    (ckpt / MANIFEST).unlink()  # step-000002 now reads as an unfinished write
    assert tag_of(latest_checkpoint(tmp_path)) == "old"
    verify_checkpoint(tmp_path / "checkpoints" / "step-000002")
    assert entries(tmp_path) == ["step-000002"]


def test_step_folder_without_manifest_is_skipped_named_and_removed(parts, tmp_path):
    save(parts, tmp_path, 1)
    partial = save(parts, tmp_path, 2)
    (partial / MANIFEST).unlink()
    with pytest.raises(IncompleteCheckpoint, match="no manifest.json"):
        verify_checkpoint(partial)
    said = []
    assert latest_checkpoint(tmp_path, say=said.append).name == "step-000001"
    assert said == ["skipped step-000002: no manifest.json: its write never finished; removed it"]
    assert entries(tmp_path) == ["step-000001"]


def test_no_complete_checkpoint(parts, tmp_path):
    partial = save(parts, tmp_path, 1)
    (partial / MANIFEST).unlink()
    assert latest_checkpoint(tmp_path, missing_ok=True) is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        latest_checkpoint(tmp_path)


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_file_is_named_and_the_earlier_checkpoint_is_used(parts, tmp_path):
    save(parts, tmp_path, 1, tag="one")
    bad = save(parts, tmp_path, 2, tag="two")
    _flip_last_byte(bad / "model" / "model.safetensors")  # same size: only the hash can tell
    verify_checkpoint(bad, hashes=False)  # sizes alone pass
    with pytest.raises(CorruptCheckpoint, match=r"model/model\.safetensors is corrupt: its sha256"):
        verify_checkpoint(bad)
    said = []
    ckpt = latest_checkpoint(tmp_path, say=said.append)
    assert tag_of(ckpt) == "one"
    assert len(said) == 1 and "skipped step-000002: model/model.safetensors is corrupt" in said[0]
    assert "resuming from step-000001" in said[0]
    aside = [n for n in entries(tmp_path) if n.startswith(".corrupt-step-000002-")]
    assert len(aside) == 1 and aside[0] in said[0]  # kept for inspection, out of the listing
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]


def test_corrupt_only_checkpoint_is_an_error_and_stays(parts, tmp_path):
    bad = save(parts, tmp_path, 1)
    (bad / "optimizer.pt").write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpoint, match=r"optimizer\.pt is corrupt: 7 bytes"):
        latest_checkpoint(tmp_path)
    assert bad.is_dir()


def test_pruning_keeps_the_newest_complete_ones(parts, tmp_path):
    for step in (1, 2, 3):
        save(parts, tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000003"]
    assert entries(tmp_path) == ["step-000002", "step-000003"]


def test_pruning_never_counts_an_incomplete_folder(parts, tmp_path):
    save(parts, tmp_path, 1)
    partial = save(parts, tmp_path, 2)
    (partial / MANIFEST).unlink()
    prune_checkpoints(tmp_path, keep=1)
    # step-000002 is newest by name, but only step-000001 is complete: it stays.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001", "step-000002"]
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1"):
        prune_checkpoints(tmp_path, keep=0)


def test_recovered_checkpoint_restores_the_training_state(parts, tmp_path, kill_at):
    model, _, optimizer = parts
    gen = torch.Generator().manual_seed(5)
    expected_rng = gen.get_state()
    save_checkpoint(tmp_path, 3, model=model, tokenizer=parts[1], optimizer=optimizer,
                    state={"data_pos": 6}, config={}, generator=gen, keep=2)  # fmt: skip
    kill_at("checkpoint.overwrite_moved_aside")
    with pytest.raises(Killed):
        save(parts, tmp_path, 3)
    ckpt = latest_checkpoint(tmp_path)
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    other = torch.Generator().manual_seed(99)
    state = load_training_state(ckpt, optimizer=fresh, generator=other)
    assert state["data_pos"] == 6 and state["step"] == 3
    assert torch.equal(other.get_state(), expected_rng)
    for a, b in zip(fresh.state.values(), optimizer.state.values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
