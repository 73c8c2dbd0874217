"""tools.readme_tables: the README's result tables are rendered from a run's files, and a test finds a README
whose marked blocks differ from the committed results/."""
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellfcn import schema
from cellfcn.constants import METRICS, TABLE1_SCHEMA
from cellfcn.machine import cpuinfo
from tools import object_table, magnification, readme_tables, evaluate

REPO = Path(__file__).resolve().parent.parent


def _table1():
    rows = [{"name": f"ours: {m}, {s}, {p}", "model": m, "split": s, "protocol": p, "threshold": 0.5,
             **{k: 0.8 + 0.01 * i for i, k in enumerate(METRICS)}, "auc": 0.97, "tp": 10, "fp": 2, "tn": 80,
             "fn": 3, "ci": {"mcc": [0.8, 0.9]}} for m, s, p in schema.TABLE1_ROWS]
    rows[4].update(threshold=None, auc=None)  # Otsu: per image
    return {"schema_version": TABLE1_SCHEMA, "inputs_sha256": "ab" * 32, "rows": rows, "paper": evaluate.PAPER,
            "bootstrap": {"replicates": 10, "seed": 0, "unit": "test image"}}


def _objects():
    image = {"image": "a.tif", "n_gt": 10, "n_pred": 9, "precision": 0.9, "recall": 0.8, "f1": 0.85,
             "dsb_score": 0.5, "count_error": -1, "rel_count_error": 0.1}
    pooled = {"n_images": 1, "n_gt": 10, "n_pred": 9, "tp": 8, "fp": 1, "fn": 2, "precision": 0.889,
              "recall": 0.8, "f1": 0.842, "dsb_score": 0.5, "mean_image_dsb_score": 0.5,
              "mean_abs_count_error": 1.0, "mean_rel_count_error": 0.1}
    rows = [{"model": m, "name": n, "params": {"threshold": 0.5, "opening_radius": 1, "min_area": 30},
             "chosen_on": {"train": 2, "val": 1}, "choice": {"f1": 0.85, "dsb_score": 0.45},
             "val": {"f1": 0.8, "dsb_score": 0.4}, "pooled": pooled, "images": [image], "pixel_mcc": 0.9}
            for m, n in (("before", "ours: before"), ("after", "ours: after"), ("otsu", "Otsu + watershed"))]
    return {"schema_version": object_table.OBJECTS_SCHEMA, "train_images": ["r.tif", "s.tif"], "val_images": ["v.tif"],
            "test_images": ["a.tif"], "rows": rows}


def _magnification():
    scores = {"n_gt": 10, "n_pred": 9, "f1": 0.85, "dsb_score": 0.5, "mean_rel_count_error": 0.1}
    rows = [{"magnification": m, "true_factor": 0.75 / m, "factor": 0.75 / m, "factor_ratio": 1.0,
             "own_ratio_median": 1.02, "own_ratio_range": [0.9, 1.1], "own_within_goal": 1,
             "image_ratio_median": 0.98, "image_ratio_range": [0.95, 1.0], "image_within_goal": 1, "auto": scores,
             "known": scores, "per_image": [{"image": "a.tif"}], "f1_auto_minus_native": 0.0}
            for m in (1.0, 0.5, 2.0)]
    return {"schema_version": magnification.SCHEMA, "model": "/x/final.caffemodel", "machine": "2 CPU cores",
            "working_diameter_px": 24.4, "native": scores, "rows": rows}


RUN_FILES = {"eval/table1.json": json.dumps(_table1()), "eval/objects.json": json.dumps(_objects()),
             "timings.tsv": "data-synthetic\t3.6\npretrain\t943.0\n",
             "net-contour_skip/timings.tsv": "pretrain\t800.5\n",
             "eval/magnification.json": json.dumps(_magnification())}


def _run(path, names=RUN_FILES):
    """A run folder holding ``names`` of :data:`RUN_FILES`, all dated 2024-05-06 (UTC)."""
    stamp = datetime.datetime(2024, 5, 6, 12, tzinfo=datetime.timezone.utc).timestamp()
    for name in names:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(RUN_FILES[name])
        os.utime(path / name, (stamp, stamp))
    return path


@pytest.fixture
def results(tmp_path):
    out = tmp_path / "results"
    readme_tables.collect(_run(tmp_path / "runs"), out)
    return out


README = """# demo

Intro that stays.

Table 1. <!-- results:machine -->stale<!-- /results:machine -->

<!-- results:table1 -->
| stale |
<!-- /results:table1 -->

Objects, same machine: <!-- results:machine --><!-- /results:machine -->

<!-- results:objects -->
<!-- /results:objects -->

<!-- results:timings -->
<!-- /results:timings -->

<!-- results:magnification -->
<!-- /results:magnification -->

Syntax, quoted: `<!-- results:NAME -->`.

```
<!-- results:quoted -->
```
The end.
"""


def _cli(capsys, *argv):
    """Exit status, stdout and stderr of the command, run in this process."""
    code = readme_tables.main([str(a) for a in argv])
    return (code, *capsys.readouterr())


def _outside(text):
    """``text`` with every marked block's content removed: what a rewrite must leave as it was."""
    found = readme_tables.blocks(text)
    cuts = [0, *(i for b in found for i in (b["start"], b["end"])), len(text)]
    return [text[a:b] for a, b in zip(cuts[::2], cuts[1::2])]


def test_collect_copies_the_run_files_and_names_the_machine(tmp_path, results):
    runs = tmp_path / "runs"
    for name in RUN_FILES:
        assert (results / name).read_bytes() == (runs / name).read_bytes(), name
    machine = json.loads((results / "machine.json").read_text())
    assert machine == {"cpu": cpuinfo()["model"], "logical_cpus": len(os.sched_getaffinity(0)),
                       "run_date": "2024-05-06"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "runs"]  # no temporaries left


def test_write_renders_every_block_and_leaves_the_rest(tmp_path, results, capsys):
    path = tmp_path / "README.md"
    path.write_text(README)
    proc = subprocess.run([sys.executable, "-m", "tools.readme_tables", "--write", str(path), "--results",
                           str(results)], capture_output=True, text=True, cwd=REPO)
    assert (proc.returncode, proc.stderr) == (0, "") and "6 of 6 results blocks rewritten" in proc.stdout
    text = path.read_text()
    assert _outside(text) == _outside(README)
    machine = f"Machine: {cpuinfo()['model']}, {len(os.sched_getaffinity(0))} logical CPUs; run of 2024-05-06."
    assert text.count(f"<!-- results:machine -->{machine}<!-- /results:machine -->") == 2
    table = _table1()
    assert f"<!-- results:table1 -->\n{evaluate.markdown(table['rows'], table['paper'])}<!-- /results:table1 -->" \
        in text
    assert f"<!-- results:objects -->\n{object_table.markdown(_objects()['rows'])}<!-- /results:objects -->" in text
    assert f"\n{magnification.markdown(_magnification())}<!-- /results:magnification -->" in text
    timings = ("| stage | wall time |\n|---|---|\n| data-synthetic | 3.6 s |\n| pretrain | 943.0 s |\n"
               "| contour pretrain | 800.5 s |\n| total | 1747.1 s (29.1 min) |\n")
    assert f"<!-- results:timings -->\n{timings}<!-- /results:timings -->" in text
    assert "| stale |" not in text and "<!-- results:quoted -->" in text
    before = path.stat().st_mtime_ns
    code, out, _ = _cli(capsys, "--write", path, "--results", results)
    assert code == 0 and "0 of 6" in out and path.read_text() == text and path.stat().st_mtime_ns == before


def test_check_names_each_block_that_differs_and_writes_nothing(tmp_path, results, capsys):
    path = tmp_path / "README.md"
    path.write_text(README)
    readme_tables.main(["--write", str(path), "--results", str(results)])
    assert _cli(capsys, "--check", path, "--results", results)[0] == 0
    rendered = path.read_text()
    edited = rendered.replace("| 0.850 [0.800, 0.900] |", "| 0.951 [0.800, 0.900] |", 1)  # an MCC by hand
    assert edited != rendered
    path.write_text(edited)
    (results / "timings.tsv").write_text("data-synthetic\t3.6\npretrain\t950.0\n")  # a rerun not rendered
    code, out, err = _cli(capsys, "--check", path, "--results", results)
    assert code == 1 and path.read_text() == edited
    line = {b["name"]: b["line"] for b in readme_tables.blocks(edited)}
    assert err.splitlines() == [f"{path}:{line[name]}: results:{name} differs from {results}: run `make "
                                f"readme-tables`" for name in ("table1", "timings")], err


@pytest.mark.parametrize("text, phrase", [
    ("<!-- results:tabel1 -->\n<!-- /results:tabel1 -->\n", "README.md:1: unknown results block 'tabel1'"),
    ("a\n<!-- results:table1 -->\n| x |\n", "README.md:2: results:table1 is never closed"),
    ("<!-- /results:objects -->\n", "README.md:1: /results:objects closes no open results:objects block"),
    ("<!-- results:table1 -->\n<!-- /results:objects -->\n", "README.md:2: /results:objects closes no open"),
    ("<!-- results:table1 -->\n<!-- results:objects -->\n<!-- /results:objects -->\n<!-- /results:table1 -->\n",
     "README.md:2: results:objects opens inside results:table1 (line 1)"),
])
@pytest.mark.parametrize("mode", ["--write", "--check"])
def test_a_bad_marker_is_one_line_and_changes_nothing(tmp_path, results, text, phrase, mode, capsys):
    path = tmp_path / "README.md"
    path.write_text(text)
    code, out, err = _cli(capsys, mode, path, "--results", results)
    assert code == 1 and err.startswith(f"error: {phrase}") and err.count("\n") == 1, err
    assert path.read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "results",
                                                                                      "runs"]


@pytest.mark.parametrize("name, damage, phrase", [
    ("eval/objects.json", None, "eval/objects.json not found: run `make readme-tables`"),
    ("machine.json", None, "machine.json not found"),
    ("eval/magnification.json", None, "magnification.json not found"),
    ("timings.tsv", "pretrain\tlong\n", "timings.tsv:1: not 'stage<TAB>seconds'"),
    ("eval/table1.json", "{", "cannot read Table 1"),
    ("eval/objects.json", json.dumps({**_objects(), "rows": []}), "rows has no row for model=before"),
    ("eval/magnification.json", json.dumps({**_magnification(), "rows": [{}]}),
     "magnification test"),
    ("machine.json", "{}", "machine.json lacks cpu"),
])
def test_a_missing_or_bad_result_file_is_one_line(tmp_path, results, name, damage, phrase, capsys):
    path = tmp_path / "README.md"
    path.write_text(README)
    if damage is None:
        (results / name).unlink()
    else:
        (results / name).write_text(damage)
    code, out, err = _cli(capsys, "--write", path, "--results", results)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and phrase in err, err
    assert path.read_text() == README


@pytest.mark.parametrize("names, damage, phrase", [
    (["eval/table1.json", "timings.tsv"], None, "eval/objects.json not found: run `make reproduce RUNS="),
    (list(RUN_FILES), ("eval/table1.json", json.dumps({**_table1(), "schema_version": 1})), "has schema 1"),
    (list(RUN_FILES), ("net-contour_skip/timings.tsv", ""), "net-contour_skip/timings.tsv: no stage timings"),
])
def test_collect_refuses_an_incomplete_or_bad_run_and_keeps_results(tmp_path, results, names, damage, phrase,
                                                                     capsys):
    bad = _run(tmp_path / "bad", names)
    if damage:
        (bad / damage[0]).write_text(damage[1])
    kept = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    code, out, err = _cli(capsys, "--collect", bad, "--results", results)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and phrase in err, err
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "results", "runs"]


def test_collect_of_a_run_without_the_optional_files_drops_them(tmp_path, results, capsys):
    lean = _run(tmp_path / "lean", ["eval/table1.json", "eval/objects.json", "timings.tsv"])
    assert _cli(capsys, "--collect", lean, "--results", results)[0] == 0
    assert sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()) == \
        ["eval/objects.json", "eval/table1.json", "machine.json", "timings.tsv"]
    assert "contour" not in readme_tables.render("timings", results)


def test_the_readme_shows_the_committed_results():
    """README.md's marked blocks are what results/ renders: run `make readme-tables` after a run (or after an
    edit inside a block) and commit both."""
    text = (REPO / "README.md").read_text()
    names = {block["name"] for block in readme_tables.blocks(text)}
    assert {"table1", "objects"} <= names, f"README.md has no results:table1 / results:objects blocks: {names}"
    _, differing, _ = readme_tables.replace_blocks(text, REPO / "results")
    assert not differing, "README.md blocks differ from results/ (run `make readme-tables`): " + ", ".join(
        f"line {b['line']} results:{b['name']}" for b in differing)
