"""A user's whole job on a Qwen2.5-shaped local folder, through the CLI only: their GSM8K-style
file, their reward function in a .py file, SFT, 3 RL steps with a resume in the middle, eval of
the run folder (its task, template and rewards), export, and the exported folder in plain
transformers reproducing drgrpo's greedy tokens. Nothing is downloaded."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from drgrpo.app.cli import main
from drgrpo.rollout import HFRolloutEngine, TokenRule
from standins import build_qwen_standin

REWARDS = '''
def brevity(completion, example):
    """Every dataset column reaches the reward: 'topic' is not a field drgrpo knows."""
    assert example["topic"] == "sums" and example["reference"]
    return max(0.0, 1.0 - len(completion) / 64)
'''


def _write_data(path, rows: range) -> None:
    lines = [json.dumps({"question": f"What is {i} + {i + 1}?", "topic": "sums",
                         "answer": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}",
                         "solution": f"{i} + {i + 1} = {2 * i + 1}. The answer is "
                                     f"\\boxed{{{2 * i + 1}}}"})
             for i in rows]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def test_qwen_folder_data_and_reward_file_end_to_end(tmp_path, capsys):
    base = build_qwen_standin(tmp_path / "qwen")
    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    _write_data(train_file, range(0, 60))
    _write_data(test_file, range(100, 108))
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    options = (f"{{path: {train_file}, eval_path: {test_file}, question_field: question, "
               f"answer_field: answer, answer_format: gsm8k, solution_field: solution, "
               f"rewards: [{{fn: math_verify, correct: true}}, "
               f"{{fn: '{tmp_path / 'my_rewards.py'}:brevity', weight: 0.5}}]}}")  # fmt: skip
    sft = tmp_path / "sft"
    assert main(["sft", "--no-progress", f"init={base}", "task.name=math",
                 f"task.options={options}", f"output_dir={sft}", "max_steps=4", "batch_size=4",
                 "check_every=4", "check_prompts=2", "eval_prompts=2", "stop_accuracy=0",
                 "max_new_tokens=12"]) == 0  # fmt: skip
    run = tmp_path / "run"
    common = [f"model.base={sft}", "task.name=math", f"task.options={options}",
              f"output_dir={run}", "rollout.prompts_per_step=2", "rollout.group_size=2",
              "rollout.max_new_tokens=12", "rollout.prompt_template=chat", "eval.num_prompts=4",
              "eval.num_samples=2", "eval.ks=[1,2]", "monitor_kl=false", "no_eos_patience=1000",
              "checkpoint_every=1", "optim.lr=1e-3"]  # fmt: skip
    assert main(["train", "--no-progress", *common, "steps=2"]) == 0
    assert main(["train", "--no-progress", "--resume", str(run), "steps=3"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/len_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all("reward/brevity/mean" in r and "reward/math_verify/mean" in r for r in steps)
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--num-prompts", "4", "--num-samples", "2",
                 "--bootstrap", "50"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "math" and result["template"] == "chat"
    assert result["num_prompts"] == 4 and set(result["ci95"]) == {"accuracy", "pass@1", "pass@2"}
    # The brevity term (weight 0.5) pays every short answer; accuracy counts the correctness
    # term alone, so an untrained model has reward but no accuracy.
    assert result["accuracy"] == 0.0 and result["reward_mean"] > 0.0

    final = run / "final"
    model = AutoModelForCausalLM.from_pretrained(final, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(final, local_files_only=True)
    rule = TokenRule.from_tokenizer(tokenizer, model.generation_config, template="chat")
    assert rule.stop_ids == {tokenizer.convert_tokens_to_ids(t)
                             for t in ("<|im_end|>", "<|endoftext|>")}  # fmt: skip
    messages = [[{"role": "user", "content": f"What is {i} + 3?"}] for i in range(4)]
    ids = [tokenizer.apply_chat_template(m, add_generation_prompt=True)["input_ids"]
           for m in messages]  # fmt: skip
    ours = HFRolloutEngine(model, rule.stop_ids, rule.pad_id).generate(
        ids, max_new_tokens=10, temperature=0
    )
    for row, prompt in enumerate(ids):
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10)
        mine = ours.response_ids[row][ours.response_mask[row]].tolist()
        assert out[0, len(prompt) :].tolist()[: len(mine)] == mine
