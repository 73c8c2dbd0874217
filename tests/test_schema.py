"""cellfcn.schema: what a stage reads back is checked whole; a bad file is one line naming its rebuild."""
import json
import math
import subprocess
import sys

import pytest

from cellfcn import schema
from cellfcn.constants import METRICS, TABLE1_SCHEMA
from cellfcn.errors import InputError
from tools import report


def _row(model, split, protocol, threshold=0.5):
    return {"name": f"ours: {model}, {split}, {protocol}", "model": model, "split": split, "protocol": protocol,
            "threshold": threshold, **{k: 0.8 for k in METRICS}, "auc": 0.97, "tp": 10, "fp": 2, "tn": 80,
            "fn": 3, "ci": {"mcc": [0.7, 0.9], "threshold": [0.4, 0.6]}}


def table1(**changes):
    """A table1.json as tools.evaluate writes it: every row figures and report read."""
    rows = [_row(*keys) for keys in schema.TABLE1_ROWS]
    rows[4].update(threshold=None, auc=None)  # Otsu: per image, no ranking
    paper = [{"name": "paper: before fine-tuning", "model": "before", "split": "paper_test",
              "protocol": "test-optimal", "threshold": 0.25, **{k: 0.5 for k in METRICS}, "auc": None}]
    table = {"schema_version": TABLE1_SCHEMA, "inputs_sha256": "ab" * 32, "rows": rows, "paper": paper,
             "bootstrap": {"replicates": 1000, "seed": 0, "unit": "test image", "interval": "95% percentile"}}
    table.update(changes)
    return table


def _write(path, table):
    path.write_text(table if isinstance(table, str) else json.dumps(table))
    return path


def test_a_table_as_written_loads(tmp_path):
    table = table1()
    table["rows"][1].update(threshold=math.nan, mcc=math.nan, tp=None, ci={"mcc": [math.nan, math.nan]})
    loaded = schema.load(_write(tmp_path / "table1.json", table), schema.TABLE1)
    assert math.isnan(loaded["rows"][1]["threshold"]) and loaded["rows"][4]["threshold"] is None


def _renamed(table):
    table["rows"][2]["model"] = "fine-tuned"


def _removed(table):
    del table["rows"][5]


def _key_dropped(table):
    del table["rows"][3]["mcc"]  # rendered as a dash before


def _doubled(table):
    table["rows"].append(dict(table["rows"][0]))


@pytest.mark.parametrize("edit, phrase", [
    (_renamed, "rows has no row for model=after, split=real_test, protocol=test-optimal"),
    (_removed, "rows has no row for model=before, split=synthetic_test, protocol=test-optimal"),
    (_key_dropped, "rows[3].mcc is missing"),
    (_doubled, "protocol=test-optimal twice"),
    (lambda t: t["rows"][0].update(mcc=1.7), "rows[0].mcc must lie in [-1, 1], not 1.7"),
    (lambda t: t["rows"][0].update(recall="0.9"), "rows[0].recall must be a number, not '0.9'"),
    (lambda t: t["rows"][0].update(tp=-1), "rows[0].tp must be at least 0"),
    (lambda t: t["rows"][0].update(ci={"mcc": [0.5]}), "rows[0].ci.mcc must be [low, high]"),
    (lambda t: t["rows"][0].update(threshold=True), "rows[0].threshold must be a number, not True"),
    (lambda t: t.update(rows={}), "rows must be an array, not dict"),
    (lambda t: t.pop("bootstrap"), "bootstrap is missing"),
    (lambda t: t.update(schema_version=1), f"has schema 1, this version reads {TABLE1_SCHEMA}"),
])
def test_a_changed_table_is_one_error_naming_the_rebuild(tmp_path, edit, phrase):
    table = table1()
    edit(table)
    path = _write(tmp_path / "table1.json", table)
    with pytest.raises(InputError) as caught:
        schema.load(path, schema.TABLE1)
    message = str(caught.value)
    assert phrase in message and str(path) in message and "run `make evaluate`" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("text, phrase", [("{not json", "cannot read Table 1"), ("[1, 2]", "not a JSON object"),
                                          (None, "not found")])
def test_a_malformed_or_missing_file_is_one_error(tmp_path, text, phrase):
    path = tmp_path / "table1.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError, match=phrase) as caught:
        schema.load(path, schema.TABLE1)
    assert "make evaluate" in str(caught.value)


def _runs_with(tmp_path, table):
    """A runs folder holding every input the report checks for (empty), and this table1.json."""
    runs, data = tmp_path / "runs", tmp_path / "runs" / "data"
    for path, _ in report.required_inputs(runs, data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    _write(runs / "eval" / "table1.json", table)
    return runs


@pytest.mark.parametrize("command", ["tools.report", "tools.figures"])
@pytest.mark.parametrize("edit", [_renamed, _key_dropped, "[]"])
def test_report_and_figures_refuse_a_changed_table(tmp_path, command, edit):
    table = table1()
    if callable(edit):
        edit(table)
    else:
        table = edit
    runs = _runs_with(tmp_path, table)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", command, "--runs", str(runs), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: Table 1 {runs / 'eval' / 'table1.json'}: ")
    assert "make evaluate" in done.stderr
    assert done.stderr.count("\n") == 1 and not out.exists(), done.stderr
