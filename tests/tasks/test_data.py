"""User data: every source format and column mapping on files written here, the separate
evaluation set, chat prompts, and malformed rows whose error names the file, row and field."""

import json
import re

import pytest

from drgrpo.tasks import MathTask, make_task

GSM = [
    {"question": f"What is {i} times 6?", "answer": f"{i} * 6 = {6 * i}\n#### {6 * i:,}"}
    for i in range(1, 9)
]
MATH = [
    {"problem": f"Halve {2 * i}.", "solution": f"It is $\\boxed{{\\frac{{{2 * i}}}{{2}}}}$.",
     "topic": "algebra" if i % 2 else "geometry"}
    for i in range(1, 7)
]  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def references(task):
    return [task.train_example(i).reference for i in range(task.num_train)] + [
        ex.reference for ex in task.heldout()
    ]


def test_gsm8k_jsonl_with_field_mapping_and_preset(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", GSM)
    task = MathTask(path=path, question_field="question", answer_format="gsm8k", heldout_size=2)
    assert sorted(references(task), key=int) == [str(6 * i) for i in range(1, 9)]
    assert task.num_train == 6
    ex = task.train_example(0)
    assert ex.prompt in {row["question"] for row in GSM}
    assert ex.row["answer"].endswith(f"#### {ex.reference}")  # the raw column is kept


def test_math_style_solution_column_with_boxed_preset(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", MATH)
    task = MathTask(path=path, answer_field="solution", answer_format="boxed", heldout_size=1)
    assert sorted(references(task)) == sorted(f"\\frac{{{2 * i}}}{{2}}" for i in range(1, 7))


@pytest.mark.parametrize("suffix", [".parquet", ".csv", "save_to_disk", "dataset_dict", "folder"])
def test_every_source_format_reads_the_same_rows(tmp_path, suffix):
    import datasets

    rows = [{"q": f"{i}+1?", "a": i + 1, "id": f"r{i}"} for i in range(6)]
    table = datasets.Dataset.from_list(rows)
    if suffix == ".parquet":
        path = tmp_path / "d.parquet"
        table.to_parquet(str(path))
    elif suffix == ".csv":
        path = tmp_path / "d.csv"
        table.to_csv(str(path), index=False)  # CSV numbers come back as ints: made str
    elif suffix == "save_to_disk":
        path = tmp_path / "saved"
        table.save_to_disk(str(path))
    elif suffix == "dataset_dict":
        path = tmp_path / "saved_dict"
        datasets.DatasetDict({"train": table, "test": table.select([0])}).save_to_disk(str(path))
    else:
        path = tmp_path / "files"
        path.mkdir()
        write_jsonl(path / "train.jsonl", rows)
    task = MathTask(path=str(path), question_field="q", answer_field="a", id_field="id",
                    heldout_size=1)  # fmt: skip
    assert sorted(references(task), key=int) == [str(i + 1) for i in range(6)]
    ex = task.heldout()[0]
    assert ex.meta["id"] == f"r{int(ex.reference) - 1}"


def test_dataset_dict_split_and_its_error(tmp_path):
    import datasets

    train = datasets.Dataset.from_list([{"problem": f"p{i}", "answer": str(i)} for i in range(4)])
    test = datasets.Dataset.from_list([{"problem": "t", "answer": "9"}])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    task = MathTask(path=str(tmp_path / "dd"), eval_path=str(tmp_path / "dd"), eval_split="test")
    assert task.num_train == 4 and [ex.reference for ex in task.heldout()] == ["9"]
    with pytest.raises(ValueError, match=r"no split 'dev'; its splits are \['train', 'test'\]"):
        MathTask(path=str(tmp_path / "dd"), split="dev")


def fake_hub_cache(root, repo, files):
    """The hub cache layout: datasets--owner--name/{refs/main, snapshots/<commit>/...}."""
    folder = root / f"datasets--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    for name, rows in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(snapshot / name, rows)


def test_dataset_name_from_the_local_hub_cache(tmp_path):
    fake_hub_cache(tmp_path, "someone/gsm-mini",
                   {"data/train.jsonl": GSM, "data/test.jsonl": GSM[:3]})  # fmt: skip
    task = MathTask(path="someone/gsm-mini", question_field="question", answer_format="gsm8k",
                    eval_path="someone/gsm-mini", eval_split="test", cache_dir=str(tmp_path))  # fmt: skip
    assert task.num_train == 8 and [ex.reference for ex in task.heldout()] == ["6", "12", "18"]


def test_a_dataset_name_not_in_the_cache_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no dataset of that name is in the local Hugging Face"):
        MathTask(path="someone/not-downloaded", cache_dir=str(tmp_path))


def test_separate_eval_file_whole_or_first_n_with_its_own_mapping(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", MATH)
    evals = write_jsonl(tmp_path / "test.jsonl", GSM)
    fields = {"question_field": "question", "answer_field": "answer", "answer_format": "gsm8k"}
    task = MathTask(path=train, answer_field="solution", answer_format="boxed",
                    eval_path=evals, eval_fields=fields)  # fmt: skip
    assert task.num_train == len(MATH)  # no hash split: every training row trains
    assert [ex.reference for ex in task.heldout()] == [str(6 * i) for i in range(1, 9)]
    first3 = MathTask(path=train, answer_field="solution", answer_format="boxed",
                      eval_path=evals, eval_fields=fields, eval_limit=3)  # fmt: skip
    assert first3.heldout() == task.heldout()[:3]


def test_chat_messages_are_kept_as_messages(tmp_path):
    rows = [
        {"prompt": [{"role": "system", "content": "Box it."}, {"role": "user", "content": f"{i}+{i}?"}],
         "answer": str(2 * i)}
        for i in range(5)
    ]  # fmt: skip
    task = MathTask(path=write_jsonl(tmp_path / "chat.jsonl", rows), question_field="prompt",
                    heldout_size=1)  # fmt: skip
    ex = task.train_example(0)
    i = int(ex.reference) // 2
    assert ex.messages == ({"role": "system", "content": "Box it."},
                           {"role": "user", "content": f"{i}+{i}?"})  # fmt: skip
    assert ex.prompt == f"system: Box it.\nuser: {i}+{i}?"
    with pytest.raises(ValueError, match="row 1 has chat messages, which take no prompt_template"):
        MathTask(path=str(tmp_path / "chat.jsonl"), question_field="prompt",
                 prompt_template="Q: {question}")  # fmt: skip


def test_reward_input_has_every_column_and_the_roles(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", MATH)
    task = MathTask(path=path, answer_field="solution", answer_format="boxed", source_field="topic",
                    heldout_size=1)  # fmt: skip
    ex = task.train_example(0)
    seen = ex.reward_input()
    assert set(seen) == {
        "problem",
        "solution",
        "topic",
        "prompt",
        "messages",
        "reference",
        "source",
    }
    assert seen["reference"] == ex.reference and seen["source"] == seen["topic"]
    assert seen["solution"].startswith("It is $\\boxed") and seen["messages"] is None


def test_existing_options_keep_working(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl", [{"problem": "a", "answer": 1}, {"problem": "b", "answer": 2}]
    )
    task = make_task("math", path=path, heldout_fraction=0.0, prompt_template="Q: {question}")
    assert task.num_train == 2 and task.train_example(0).prompt.startswith("Q: ")


BAD_ROWS = [
    # (rows, options, row, field, message)
    ([{"problem": "a", "answer": "1"}, {"problem": 5, "answer": "2"}], {}, 2, "problem",
     "a question must be text or a list of chat messages"),
    ([{"problem": "a", "answer": "1"}, {"problem": "b", "answer": ""}], {}, 2, "answer",
     "not a non-empty answer"),
    ([{"problem": "a", "answer": "#### 1"}, {"problem": "b", "answer": "2"}],
     {"answer_format": "gsm8k"}, 2, "answer", "no '#### <answer>' line"),
    ([{"problem": "a", "answer": "\\boxed{1"}], {"answer_format": "boxed"}, 1, "answer",
     "no closed \\boxed{...}"),
    ([{"problem": [{"role": "user"}], "answer": "1"}], {}, 1, "problem",
     "message 1 is {'role': 'user'}"),
    ([{"problem": "a", "answer": "1", "s": 3}], {"solution_field": "s"}, 1, "s",
     "a solution must be text"),
    ([{"problem": "a", "answer": "1", "k": None}], {"id_field": "k"}, 1, "k",
     "an id must be a non-empty scalar"),
    ([{"problem": "a", "answer": [1, 2]}], {}, 1, "answer", "is [1, 2]"),
]  # fmt: skip


@pytest.mark.parametrize(("rows", "options", "row", "field", "message"), BAD_ROWS)
def test_malformed_rows_name_file_row_and_field(tmp_path, rows, options, row, field, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError) as err:
        MathTask(path=path, heldout_fraction=0.0, **options)
    text = str(err.value)
    assert f"data {path} row {row}, field {field!r}" in text and message in text, text


def test_missing_column_lists_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", GSM)
    with pytest.raises(ValueError, match=re.escape(
        f"data {path}: no column 'problem'; its columns are ['question', 'answer']"
    )):  # fmt: skip
        MathTask(path=path)
    evals = write_jsonl(tmp_path / "e.jsonl", MATH)
    with pytest.raises(ValueError, match=re.escape(f"data {evals}: no column 'question'")):
        MathTask(path=path, question_field="question", answer_format="gsm8k", eval_path=evals)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"answer_format": "latex"}, "answer_format must be one of none, gsm8k"),
        ({"answer_format": "regex"}, "answer_regex must be a regular expression"),
        ({"answer_regex": "(x)"}, "answer_regex is used only with answer_format='regex'"),
        ({"eval_limit": 3}, "eval_limit and eval_fields apply to eval_path"),
        (
            {"eval_path": "x.jsonl", "eval_fields": {"prompt": "q"}},
            "eval_fields: unknown key 'prompt'",
        ),
        ({"grader": "sympy"}, "grader must be one of math_verify, boxed, answer_tag"),
        (
            {"grader": "boxed", "format_reward": 0.2},
            "format_reward belongs to the math_verify grader",
        ),
    ],
)
def test_bad_options_say_what_to_do(tmp_path, options, message):
    path = write_jsonl(tmp_path / "m.jsonl", MATH)
    with pytest.raises(ValueError, match=re.escape(message)):
        MathTask(path=path, answer_field="solution", **options)
