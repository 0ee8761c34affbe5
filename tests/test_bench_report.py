"""The benchmark's README table is the one its results file gives."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.vs_trl import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_is_printed_from_latest_json():
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    table = markdown_table(results)
    assert table.count("\n") == 1 + 2 * len(results["configs"])  # header, rule, 2 KLs a config
    assert table in (ROOT / "benchmarks" / "README.md").read_text()
