"""The SFT warm start: batch layout, response-only loss, schedule, a short run, determinism."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import drgrpo.sft.warm_start as sft
from drgrpo.config import SFTConfig, TaskConfig, build_sft_config
from drgrpo.models import build_model, build_tokenizer, load_policy
from drgrpo.tasks import Example, make_task

SHORT = dict(lr=3e-3, batch_size=16, max_steps=40, check_every=20, check_prompts=4,
             eval_prompts=4, max_new_tokens=48, stop_accuracy=0.0)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _example(prompt: str, solution: str) -> Example:
    return Example(prompt=prompt, reference="", solution=solution, meta={})


def test_batch_layout_and_loss_mask_cover_exactly_the_response(tokenizer):
    # Row 0: bos + "9+1=" (4) + "answer: 10" (10) + eos = 16 tokens; response = columns 5..15.
    # Row 1: bos + "12+34+5=" (8) + "12+34=46\n+5=51\nanswer: 51" (25) + eos = 35 tokens;
    #        response = columns 9..34. Row 0 is right-padded with pad (0) to width 35.
    batch = sft.build_batch(
        [_example("9+1=", "answer: 10"), _example("12+34+5=", "12+34=46\n+5=51\nanswer: 51")],
        tokenizer,
    )
    assert batch.input_ids.shape == (2, 35)
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    assert batch.input_ids[0].tolist() == [1, *enc("9+1="), *enc("answer: 10"), 2] + [0] * 19
    assert batch.input_ids[1].tolist() == [
        1,
        *enc("12+34+5="),
        *enc("12+34=46\n+5=51\nanswer: 51"),
        2,
    ]
    expected = torch.zeros(2, 35, dtype=torch.bool)
    expected[0, 5:16] = True
    expected[1, 9:35] = True
    assert torch.equal(batch.loss_mask, expected)
    assert batch.num_tokens == 16 + 35


def test_an_example_without_a_solution_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="has no solution"):
        sft.build_batch([Example(prompt="1+2=", reference="3", solution=None, meta={})], tokenizer)


def test_response_losses_match_a_per_row_unpadded_loop(tokenizer):
    """The batched loss (right padding, no attention mask) against one unpadded row at a time."""
    model = build_model("tiny", len(tokenizer), seed=0, num_hidden_layers=2).double()
    task = make_task("arithmetic")
    examples = [task.train_example(i) for i in range(5)]
    batch = sft.build_batch(examples, tokenizer)
    with torch.no_grad():
        fast = sft.response_token_losses(model, batch)
        for row, ex in enumerate(examples):
            prompt = [1, *tokenizer.encode(ex.prompt, add_special_tokens=False)]
            ids = torch.tensor(
                [prompt + tokenizer.encode(ex.solution, add_special_tokens=False) + [2]]
            )
            logits = model(input_ids=ids).logits[0]
            # Token at column t is predicted by the logits at column t - 1.
            slow = F.cross_entropy(
                logits[len(prompt) - 1 : -1], ids[0, len(prompt) :], reduction="none"
            )
            n = ids.shape[1]
            torch.testing.assert_close(fast[row, len(prompt) : n], slow, rtol=0, atol=1e-10)
            assert not fast[row, : len(prompt)].any() and not fast[row, n:].any()


def test_lr_factor_warmup_then_cosine_to_ten_percent():
    assert sft.lr_factor(0, 100, warmup=20) == pytest.approx(1 / 20)
    assert sft.lr_factor(19, 100, warmup=20) == pytest.approx(1.0)
    assert sft.lr_factor(20, 100, warmup=20) == pytest.approx(1.0)
    # Halfway through the decay: 0.1 + 0.9 * (1 + cos(pi/2)) / 2 = 0.55.
    assert sft.lr_factor(60, 100, warmup=20) == pytest.approx(0.55)
    assert sft.lr_factor(100, 100, warmup=20) == pytest.approx(0.1)
    assert sft.lr_factor(500, 100, warmup=20) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """One short SFT run; the logits of the in-memory model are recorded when it is saved."""
    out = tmp_path_factory.mktemp("sft") / "model"
    probe = torch.tensor([[1, 20, 21, 22, 23, 24, 25]])
    captured = {}
    real_save = sft.save_policy

    def recording_save(model, tokenizer, path):
        with torch.no_grad():
            captured["logits"] = model(input_ids=probe).logits.clone()
        real_save(model, tokenizer, path)

    sft.save_policy = recording_save
    try:
        summary = sft.run_sft(SFTConfig(output_dir=str(out), **SHORT), progress=False)
    finally:
        sft.save_policy = real_save
    return out, summary, probe, captured["logits"]


def _heldout_response_loss(model, tokenizer) -> float:
    batch = sft.build_batch(make_task("arithmetic").heldout(32), tokenizer)
    with torch.no_grad():
        return float(sft.response_token_losses(model, batch).sum() / batch.loss_mask.sum())


def test_short_run_reduces_heldout_response_loss(short_run, tokenizer):
    out, summary, _, _ = short_run
    before = _heldout_response_loss(build_model("tiny", len(tokenizer), seed=0), tokenizer)
    after = _heldout_response_loss(load_policy(out)[0], tokenizer)
    # A fresh model is near uniform over 100 ids (ln 100 = 4.6). 40 steps of 16 traces learn
    # the near-deterministic tokens (copied digits, "+", "=", newlines, "answer: ", eos), which
    # takes the mean response loss under a quarter of that (measured: 4.70 -> 0.82).
    assert before > 4.0
    assert after < 0.25 * before
    assert summary["steps"] == 40 and summary["stop_reason"] == "max_steps"
    assert [c["step"] for c in summary["checks"]] == [20, 40]


def test_saved_folder_reads_back_with_identical_logits(short_run):
    out, summary, probe, logits = short_run
    model, tokenizer = load_policy(out)
    with torch.no_grad():
        assert torch.equal(model(input_ids=probe).logits, logits)
    assert (
        tokenizer.pad_token_id == 0 and tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2
    )
    saved = json.loads((out / "sft_config.json").read_text())
    assert saved == SFTConfig(output_dir=str(out), **SHORT).to_dict()
    on_disk = json.loads((out / "sft_summary.json").read_text())
    assert on_disk["steps"] == 40 and on_disk["eval"] == summary["eval"]
    assert set(summary["eval"]) >= {"accuracy", "greedy_accuracy", "len_mean", "truncated_frac"}


def test_same_seed_gives_identical_weights(tmp_path):
    tiny = {**SHORT, "max_steps": 8, "batch_size": 8, "check_every": 4}
    runs = [
        sft.run_sft(SFTConfig(output_dir=str(tmp_path / name), seed=seed, **tiny), progress=False)
        for name, seed in (("a", 1), ("b", 1), ("c", 2))
    ]
    a, b, c = (load_file(str(tmp_path / name / "model.safetensors")) for name in "abc")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed does reach the weights
    strip = lambda run: [{k: v for k, v in c.items() if k != "seconds"} for c in run["checks"]]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1]) and runs[0]["eval"] == runs[1]["eval"]


def test_stops_at_the_accuracy_band(tmp_path, monkeypatch):
    # A stand-in check that reports 0.1, 0.3, ...: the run must stop at the second check.
    readings = iter([0.1, 0.3, 0.9])
    monkeypatch.setattr(sft, "sampled_accuracy", lambda *a, **k: next(readings))
    cfg = SFTConfig(output_dir=str(tmp_path), **{**SHORT, "max_steps": 10, "check_every": 2,
                                                  "batch_size": 4, "stop_accuracy": 0.25})  # fmt: skip
    summary = sft.run_sft(cfg, progress=False)
    assert summary["stop_reason"] == "stop_accuracy" and summary["steps"] == 4
    assert [c["accuracy"] for c in summary["checks"]] == [0.1, 0.3]


def test_build_sft_config_file_then_overrides(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("lr: 0.001\nbatch_size: 32\ntask:\n  name: arithmetic\n  options: {k_max: 3}\n")
    cfg = build_sft_config(path, ["batch_size=8", "task.options={k_max: 4}", "init=null"])
    assert cfg == SFTConfig(lr=1e-3, batch_size=8, task=TaskConfig("arithmetic", {"k_max": 4}))
    with pytest.raises(ValueError, match="unknown config field 'learning_rate'"):
        build_sft_config(overrides=["learning_rate=1e-3"])
    with pytest.raises(ValueError, match="batch_size must be of type int"):
        build_sft_config(overrides=["batch_size=1.5"])
    with pytest.raises(ValueError, match="does not exist"):
        build_sft_config(tmp_path / "missing.yaml")
