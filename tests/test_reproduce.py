"""End to end: `make reproduce QUICK=1` runs data -> pretrain -> fine-tune -> evaluate -> report; then `make
experiments QUICK=1` (Table 2's quick set) and the report with Table 2."""
import json
import subprocess

from conftest import REPO

from prototxt import net
from tools import experiments as X
from tools import model_params


# One download of the mnfinder wheel for every RUNS= of the tests.
CACHE = f"WHEEL_CACHE={REPO / 'runs' / 'cache'}"


def _make(*args):
    return subprocess.run(["make", "--no-print-directory", *args, CACHE], cwd=REPO, capture_output=True, text=True)


def test_make_reproduce_quick_end_to_end(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run(["make", "--no-print-directory", "reproduce", "QUICK=1", f"RUNS={runs}", CACHE], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("pretrain", "finetune"):
        run = json.loads((runs / stage / "run.json").read_text())
        assert run["status"] == "done" and (runs / stage / "final.caffemodel").is_file()
    assert "Finetuning from" in (runs / "finetune" / "train.log").read_text()
    table = json.loads((runs / "eval" / "table1.json").read_text())
    names = " ".join(row["name"] for row in table["rows"]).lower()
    assert "before" in names and "after" in names and "otsu" in names
    for row in table["rows"]:
        assert -1.0 <= row["mcc"] <= 1.0
        assert row["threshold"] is None or 0.0 <= row["threshold"] <= 1.0  # Otsu: one threshold per image
    # The instance-aware contour net is trained too, scored in the object table, and every net's chosen
    # instance parameters lie beside its model.
    contour_run = json.loads((runs / "net-contour_skip" / "finetune" / "run.json").read_text())
    assert contour_run["status"] == "done" and contour_run["net"] == "contour_skip"
    objects = json.loads((runs / "eval" / "objects.json").read_text())
    assert [row["model"] for row in objects["rows"]] == ["before", "after", "contour", "otsu"]
    for row in objects["rows"][:3]:
        record = model_params.read_model_params(row["model_path"])
        assert record["params"] == row["params"] and record["dataset"]["nucleus_diameter_px"] > 0
        assert record["working_diameter_px"] == row["working_diameter_px"] > 0  # each image at its own scale
        assert -1 <= row["pixel_mcc"] <= 1
    assert "marker_threshold" in objects["rows"][2]["params"]
    # QUICK chooses them on 3 of the whole training images and the validation images.
    assert all(row["chosen_on"] == {"train": 3, "val": len(objects["val_images"])} for row in objects["rows"])
    assert "3 classes (contour)" in proc.stdout
    # The printed Table 1 is the one on disk, and the report is one self-contained page.
    assert (runs / "eval" / "table1.md").read_text().strip().splitlines()[0] in proc.stdout
    html = (runs / "report" / "index.html").read_text()
    assert "data:image/png;base64," in html and "MCC" in html
    # Every stage's wall time is recorded once and printed with the total.
    timings = [line.split("\t") for line in (runs / "timings.tsv").read_text().splitlines()]
    stages = ["data-synthetic", "data-real", "pretrain", "finetune", "evaluate", "magnification", "report"]
    assert [name for name, _ in timings] == stages and all(float(sec) > 0 for _, sec in timings)
    contour = [line.split("\t") for line in (runs / "net-contour_skip" / "timings.tsv").read_text().splitlines()]
    assert [name for name, _ in contour] == stages[:4]  # the contour net's data check, pretrain, fine-tune
    assert f"{sum(float(sec) for _, sec in timings + contour):.1f} s" in proc.stdout
    assert "timings.tsv" in html and "<td>pretrain</td>" in html
    # A second run finds everything up to date and retrains nothing.
    again = subprocess.run(["make", "--no-print-directory", "reproduce", "QUICK=1", f"RUNS={runs}", CACHE], cwd=REPO,
                           capture_output=True, text=True)
    assert again.returncode == 0
    assert again.stdout.count("pretrain: up to date") == 2 and again.stdout.count("finetune: up to date") == 2
    assert "evaluate: up to date" in again.stderr and "index.html (up to date)" in again.stdout
    again_stages = [line.split("\t")[0] for line in (runs / "timings.tsv").read_text().splitlines()]
    assert sorted(again_stages) == sorted(stages)  # one line per stage: the latest run replaces the earlier

    # Table 2's quick set: every row trained and scored, progress with an estimate, then cached.
    first = _make("experiments", "QUICK=1", f"RUNS={runs}")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = runs / "experiments"
    _, planned, rows = X.plan("quick")
    assert f"run {len(planned)}/{len(planned)}" in first.stdout and "left)" in first.stdout
    table = json.loads((out / "table2.json").read_text())
    assert [r["key"] for r in table["rows"]] == [r["key"] for r in rows]
    assert table["variants"]["wide"]["parameters"] == net.learnable_parameters("wide")
    for r in table["rows"]:
        # The quick set's 2-iteration models may predict no nucleus at all: an undefined MCC is NaN, never 0.
        assert all(v != v or -1 <= v <= 1 for v in r["mcc_values"]) and r["train_seconds_mean"] > 0
        assert ("vs_ref" in r) == (r["key"] != "pretrained")
    assert len(table["rows"][0]["seeds"]) == len(X.SETS["quick"]["seeds"])
    for run in planned:  # each run trained the planned variant
        assert json.loads((out / "runs" / run["id"] / "run.json").read_text())["net"] == run["net"]
    assert "Δ MCC [95% CI] vs row" in first.stdout and "Claim" in first.stdout
    for name in ("data_efficiency.png", "finetune_curves.png"):
        assert (out / name).stat().st_size > 1000
    scores = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/score.json")}
    again = _make("experiments", "QUICK=1", f"RUNS={runs}")
    assert again.returncode == 0 and again.stdout.count("up to date") >= len(planned)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/score.json")} == scores  # nothing rescored
    # The report now shows Table 2.
    report = _make("report", "QUICK=1", f"RUNS={runs}")
    assert report.returncode == 0 and "(up to date)" not in report.stdout
    html = (runs / "report" / "index.html").read_text()
    assert "Table 2" in html and "Claim" in html and html.count("data:image/png;base64,") >= 2
