"""tools/stage_time.sh: the wall time of each pipeline stage, one line per stage, in RUNS/timings.tsv."""
import subprocess

from conftest import REPO

SCRIPT = str(REPO / "tools" / "stage_time.sh")


def run(runs, stage, *cmd):
    return subprocess.run([SCRIPT, str(runs), stage, *cmd], capture_output=True, text=True)


def rows(runs):
    return [line.split("\t") for line in (runs / "timings.tsv").read_text().splitlines()]


def test_records_each_stage_once_keeping_the_latest(tmp_path):
    runs = tmp_path / "runs"
    assert run(runs, "data", "sleep", "0.2").returncode == 0
    assert run(runs, "train", "true").returncode == 0
    assert run(runs, "data", "true").returncode == 0
    (name_a, sec_a), (name_b, sec_b) = rows(runs)
    assert (name_a, name_b) == ("train", "data")
    assert float(sec_b) < 0.2  # the rerun replaced the 0.2 s line


def test_failed_stage_records_nothing_and_keeps_its_status(tmp_path):
    runs = tmp_path / "runs"
    assert run(runs, "data", "true").returncode == 0
    failed = run(runs, "train", "sh", "-c", "exit 3")
    assert failed.returncode == 3
    assert [name for name, _ in rows(runs)] == ["data"]
    assert not list(runs.glob(".timings*"))


def test_usage_error(tmp_path):
    done = run(tmp_path, "data")
    assert done.returncode == 2 and done.stderr.startswith("usage:")
