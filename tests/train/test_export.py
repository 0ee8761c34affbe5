"""The exported folder works in plain transformers exactly as drgrpo used it."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from drgrpo.app.cli import main
from drgrpo.rollout import HFRolloutEngine, TokenRule
from drgrpo.train.trainer import train

PROMPTS = ["3+4=", "12+9=", "7="]


def test_final_folder_reproduces_drgrpo_greedy_in_plain_transformers(small_run, tmp_path):
    cfg = small_run("steps=2", "checkpoint_every=1")
    summary = train(cfg, progress=False)
    final = summary["final_model"]
    model = AutoModelForCausalLM.from_pretrained(final, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(final, local_files_only=True)
    gen = json.loads((tmp_path / "run" / "final" / "generation_config.json").read_text())
    rule = TokenRule.from_tokenizer(tokenizer, model.generation_config)
    assert gen["pad_token_id"] == rule.pad_id and rule.eos_id in rule.stop_ids
    ours = HFRolloutEngine(model, rule.stop_ids, rule.pad_id).generate(
        rule.encode_prompts(tokenizer, PROMPTS), max_new_tokens=12, temperature=0
    )
    for row, text in enumerate(PROMPTS):
        # What a user does with the folder: tokenizer(prompt), then generate.
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        out = model.generate(ids, do_sample=False, max_new_tokens=12)[0, ids.shape[1] :]
        mine = ours.response_ids[row][ours.response_mask[row]]
        # generate pads after its stop token with pad_token_id; compare up to the stop
        assert out[: len(mine)].tolist() == mine.tolist(), text
        assert ids[0].tolist() == rule.encode_prompt(tokenizer, text)


def test_cli_export_of_a_run_folder_equals_the_final_weights(small_run, tmp_path):
    cfg = small_run("steps=2", "checkpoint_every=1", name="r")
    train(cfg, progress=False)
    out = tmp_path / "exported"
    assert main(["export", cfg.output_dir, str(out), "--dtype", "bfloat16"]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "r" / "final", local_files_only=True)
    assert next(exported.parameters()).dtype == torch.bfloat16
    for (name, a), (_, b) in zip(
        exported.named_parameters(), final.named_parameters(), strict=True
    ):
        assert torch.equal(a, b.to(torch.bfloat16)), name
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
