"""Rows from a user's data: a file, a `save_to_disk` folder or a dataset in the local HF cache.

    source                         read as
    data.jsonl | data.json         JSON lines / JSON records
    data.parquet | data.csv        Parquet / CSV (CSV cells that look like numbers become numbers)
    folder/ with dataset_info.json a `Dataset.save_to_disk` folder
    folder/ with dataset_dict.json a `DatasetDict.save_to_disk` folder; `split` picks one
    folder/ of data files          `datasets.load_dataset(folder)`; `split` picks one
    owner/name                     a dataset already in the local Hugging Face cache, read offline
                                   (never downloaded: fetch it first with `hf download`)

`Columns` maps the dataset's column names onto the roles (question, answer, solution, id,
source) and says how the reference is cut out of the answer column (`drgrpo.tasks.answers`).
A question cell holds text, or chat messages (a list of {role, content} dicts) that the caller
renders with the tokenizer's chat template. Every row is checked here, when the task is built:
a bad one raises a ValueError that names the source, the 1-based row number and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from drgrpo.tasks.answers import ANSWER_FORMATS, compile_answer_regex, extract_reference

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_PRESET_HELP = {
    "gsm8k": "no '#### <answer>' line",
    "boxed": "no closed \\boxed{...}",
    "answer_tag": "no closed <answer>...</answer>",
    "regex": "no match of answer_regex",
    "none": "an empty answer",
}


@dataclass(frozen=True)
class Columns:
    """Which column plays which role, and how the reference is extracted from the answer."""

    question: str = "problem"
    answer: str = "answer"
    solution: str | None = None
    id: str | None = None
    source: str | None = None
    answer_format: str = "none"
    answer_regex: str | None = None

    def check(self) -> None:
        for role in ("question", "answer"):
            if not isinstance(getattr(self, role), str) or not getattr(self, role):
                raise ValueError(f"{role}_field must be a column name, got {getattr(self, role)!r}")
        for role in ("solution", "id", "source"):
            value = getattr(self, role)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{role}_field must be a column name or None, got {value!r}")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(
                f"answer_format must be one of {', '.join(ANSWER_FORMATS)}, "
                f"got {self.answer_format!r}"
            )
        if self.answer_format == "regex":
            compile_answer_regex(self.answer_regex)
        elif self.answer_regex is not None:
            raise ValueError("answer_regex is used only with answer_format='regex'; set both")


@dataclass(frozen=True)
class Row:
    index: int
    """0-based position in the source."""
    question: str | tuple[dict, ...]
    """Question text, or chat messages ({role, content} dicts)."""
    answer: str
    """The extracted reference."""
    solution: str | None
    id: str | None
    source: str | None
    columns: dict
    """Every column of the row, as read (what reward functions see)."""


def read_rows(
    source: str,
    columns: Columns,
    *,
    split: str = "train",
    subset: str | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
) -> list[Row]:
    """The checked rows of `source` (the first `limit` of them when limit is not None)."""
    columns.check()
    records, names = _load_records(source, split, subset, cache_dir)
    wanted = [columns.question, columns.answer] + [
        c for c in (columns.solution, columns.id, columns.source) if c
    ]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise ValueError(
            f"data {source}: no column {missing[0]!r}; its columns are {names}: set "
            "question_field / answer_field / solution_field / id_field / source_field to match"
        )
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"data {source}: no rows")
    regex = compile_answer_regex(columns.answer_regex) if columns.answer_format == "regex" else None
    return [_row(source, i, record, columns, regex) for i, record in enumerate(records)]


def _row(source: str, i: int, record: dict, columns: Columns, regex) -> Row:
    where = f"data {source} row {i + 1}"

    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"{where}, field {field!r}: {why}; fix the row or drop it")

    question = _question(record[columns.question], lambda why: bad(columns.question, why))
    answer = record[columns.answer]
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise bad(columns.answer, f"is {_short(answer)}, not a non-empty answer")
    reference = extract_reference(answer, columns.answer_format, regex)
    if reference is None:
        raise bad(
            columns.answer,
            f"{_PRESET_HELP[columns.answer_format]} in {_short(answer)} "
            f"(answer_format={columns.answer_format!r})",
        )
    solution = record[columns.solution] if columns.solution else None
    if solution is not None and not isinstance(solution, str):
        raise bad(columns.solution, f"is {_short(solution)}; a solution must be text")
    ident = record[columns.id] if columns.id else None
    if columns.id and (ident is None or isinstance(ident, (dict, list)) or str(ident) == ""):
        raise bad(columns.id, f"is {_short(ident)}; an id must be a non-empty scalar")
    src = record[columns.source] if columns.source else None
    if columns.source and (not isinstance(src, str) or not src):
        raise bad(columns.source, f"is {_short(src)}; a source must be non-empty text")
    return Row(
        index=i, question=question, answer=reference, solution=solution or None,
        id=None if ident is None else str(ident), source=src, columns=record,
    )  # fmt: skip


def _question(value: object, bad) -> str | tuple[dict, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise bad("is empty")
        return value
    if isinstance(value, (list, tuple)) and value:
        messages = []
        for n, message in enumerate(value, start=1):
            ok = isinstance(message, dict) and all(
                isinstance(message.get(key), str) for key in ("role", "content")
            )
            if not ok:
                raise bad(
                    f"message {n} is {_short(message)}; chat messages must be "
                    "{'role': str, 'content': str} dicts"
                )
            messages.append({"role": message["role"], "content": message["content"]})
        return tuple(messages)
    raise bad(f"is {_short(value)}; a question must be text or a list of chat messages")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _load_records(
    source: str, split: str, subset: str | None, cache_dir: str | None
) -> tuple[list[dict], list[str]]:
    if not isinstance(source, str) or not source:
        raise ValueError(f"a data source must be a path or a dataset name, got {source!r}")
    path = Path(source)
    datasets = _datasets()
    if path.is_file():
        table = _load_file(path, datasets)
    elif path.is_dir():
        table = _load_folder(path, split, subset, datasets)
    elif path.suffix.lower() in _BUILDERS or source.startswith(("/", ".", "~")):
        raise ValueError(f"data file {source} does not exist; check the path")
    else:
        table = _load_cached(source, split, subset, cache_dir, datasets)
    return table.to_list(), list(table.column_names)


def _load_file(path: Path, datasets):
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(
            f"data {path}: a data file must end in {', '.join(_BUILDERS)} (got {path.suffix!r})"
        )
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:
        bad = _first_bad_json_line(path) if path.suffix.lower() == ".jsonl" else None
        where = f" line {bad} is not a JSON object;" if bad else ""
        raise ValueError(
            f"data {path}: could not read it:{where} fix the file ({type(err).__name__}: {err})"
        ) from err


def _load_folder(path: Path, split: str, subset: str | None, datasets):
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            return _pick_split(loaded, split, str(path))
        return loaded
    try:
        loaded = datasets.load_dataset(str(path), name=subset)
    except Exception as err:
        raise ValueError(
            f"data {path}: a folder must be written by save_to_disk or hold data files "
            f"(.jsonl, .parquet, .csv) ({type(err).__name__}: {err})"
        ) from err
    return _pick_split(loaded, split, str(path))


def _load_cached(source: str, split: str, subset: str | None, cache_dir: str | None, datasets):
    """A dataset repo already in the local Hugging Face hub cache; never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id=source, repo_type="dataset", local_files_only=True, cache_dir=cache_dir
        )
    except Exception as err:
        raise ValueError(
            f"data {source!r} is not a file or folder, and no dataset of that name is in the "
            "local Hugging Face cache (drgrpo reads datasets offline). Check the path, or fetch "
            f"it first: `hf download --repo-type dataset {source}` ({type(err).__name__})"
        ) from None
    return _pick_split(datasets.load_dataset(folder, name=subset), split, source)


def _pick_split(loaded, split: str, where: str):
    if split not in loaded:
        raise ValueError(f"data {where}: no split {split!r}; its splits are {list(loaded)}")
    return loaded[split]


def _first_bad_json_line(file: Path) -> int | None:
    """1-based number of the first non-blank line that is not a JSON object (JSONL only)."""
    with file.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return number
            except ValueError:
                return number
    return None


def _datasets():
    try:
        import datasets
    except ImportError as err:
        raise ImportError("reading data files needs datasets: pip install 'drgrpo[math]'") from err
    return datasets
