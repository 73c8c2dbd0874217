"""Parse a Caffe (glog) training log into train and test tables; write them as one CSV.

Train rows come from ``Iteration N (... iter/s ...), loss = L`` and ``Iteration N, lr = R``; test rows from
``Iteration N, Testing net (#k)`` followed by ``Test net output #j: name = value``. Both glog date forms
(``I1125 09:12:01.123456`` and ``I20161125 09:12:01.123456``) are read.

Robustness:

- a last line without its newline (a log cut while being written) is dropped, and so is a partial line that
  the next run's first glog line was appended to;
- a log holding several runs (``caffe train`` appended again, e.g. resumed with ``-snapshot``) is split into
  segments at each ``Initializing solver from parameters``; a later segment replaces every earlier row from
  its first iteration on (the snapshot it resumes from, or the first it logs), so repeated iterations keep
  the latest values;
- ``seconds`` counts training time: each segment's clock starts at its own first line and continues from
  the last earlier row it keeps (the pause between an interruption and the resume does not count).
"""
import argparse
import csv
import datetime
import math
import re
import sys
from pathlib import Path

import numpy as np

from cellfcn import cli, files
from cellfcn.errors import InputError

_PREFIX = re.compile(r"[IWEF](\d{4}|\d{8}) (\d\d):(\d\d):(\d\d)\.(\d{6})\s+\d+ [^\]]+\] ")
_NUM = r"([-+]?(?:nan|inf|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))"
_TRAIN = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUM + r"$")
_LR = re.compile(r"Iteration (\d+), lr = " + _NUM + r"$")
_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)$")
_TEST_OUT = re.compile(r"Test net output #\d+: (\S+) = " + _NUM + r"(?: \(\* .*\))?$")
_NEW_RUN = "Initializing solver from parameters"
_RESUME = re.compile(r"Resuming from .*_iter_(\d+)\.solverstate")
_CREATED = re.compile(r"Log file created at: (\d{4})/")


def _split_lines(text):
    """Complete glog lines of ``text`` as (prefix match, message) pairs."""
    lines = text.split("\n")
    if lines and lines[-1] != "":
        lines = lines[:-1]  # cut while being written: the last line may end in a partial number
    out = []
    year = None
    for line in lines:
        created = _CREATED.search(line)
        if created:
            year = int(created.group(1))
        # A run killed mid-line leaves a fragment that the next run's first line is appended to.
        starts = [m for m in _PREFIX.finditer(line)]
        if not starts:
            continue
        match = starts[-1]
        out.append((match, line[match.end():].rstrip("\r"), year))
    return out


def _timestamp(match, year, previous):
    """Seconds since the epoch of a glog prefix; ``year`` fills in the short ``MMDD`` form."""
    date, hh, mm, ss, us = match.groups()
    if len(date) == 8:
        y, mo, d = int(date[:4]), int(date[4:6]), int(date[6:])
    else:
        # No year in the log: a leap year so 29 Feb parses; a date going backwards means a new year.
        y, mo, d = (year or 2000), int(date[:2]), int(date[2:])
    t = datetime.datetime(y, mo, d, int(hh), int(mm), int(ss), int(us))
    stamp = t.replace(tzinfo=datetime.timezone.utc).timestamp()
    if len(date) == 4 and previous is not None and stamp < previous - 180 * 86400:
        stamp = t.replace(year=y + 1, tzinfo=datetime.timezone.utc).timestamp()
    return stamp


def _number(text):
    return float(text.replace("-nan", "nan"))


def parse_log(text):
    """Parse the text of a Caffe training log.

    Parameters
    ----------
    text : str
        The whole log (``caffe train`` stderr, possibly several appended runs, possibly cut).

    Returns
    -------
    train : dict of ndarray
        ``iteration`` (int64), ``seconds``, ``lr``, ``loss`` (float64; NaN where a row lacks the value),
        sorted by iteration.
    test : dict of ndarray
        ``iteration`` (int64), ``seconds`` and one float64 column per test-net output (``accuracy``,
        ``loss``...; outputs of test net #k > 0 are named ``<name>#k``), sorted by iteration.
    """
    segments = []  # per run: {"train": {it: row}, "test": {it: row}, "first": it}
    seg = None
    last_test = None
    previous = None
    for match, msg, year in _split_lines(text):
        stamp = _timestamp(match, year, previous)
        previous = stamp
        if seg is None or _NEW_RUN in msg:
            seg = {"train": {}, "test": {}, "first": None, "start": stamp}
            segments.append(seg)
            last_test = None
        elapsed = stamp - seg["start"]
        m = _RESUME.search(msg)
        if m and seg["first"] is None:
            seg["first"] = int(m.group(1))  # the restored iteration, even before anything is logged there
            continue
        m = _TRAIN.search(msg)
        if m:
            it = int(m.group(1))
            row = seg["train"].setdefault(it, {"seconds": elapsed})
            row["loss"] = _number(m.group(2))
            seg["first"] = it if seg["first"] is None else seg["first"]
            continue
        m = _LR.search(msg)
        if m:
            it = int(m.group(1))
            seg["train"].setdefault(it, {"seconds": elapsed})["lr"] = _number(m.group(2))
            seg["first"] = it if seg["first"] is None else seg["first"]
            continue
        m = _TESTING.search(msg)
        if m:
            it, net = int(m.group(1)), int(m.group(2))
            seg["test"].setdefault(it, {"seconds": elapsed})
            last_test = (it, net)
            seg["first"] = it if seg["first"] is None else seg["first"]
            continue
        m = _TEST_OUT.search(msg)
        if m and last_test is not None:
            it, net = last_test
            name = m.group(1) if net == 0 else f"{m.group(1)}#{net}"
            seg["test"][it][name] = _number(m.group(2))
    return _merge(segments)


def _merge(segments):
    """Combine the runs' rows: a later run replaces earlier rows from its first iteration on."""
    rows = {"train": {}, "test": {}}
    for seg in segments:
        if seg["first"] is None:
            continue
        kept = [r for kind in rows for it, r in rows[kind].items() if it < seg["first"]]
        offset = max((r["seconds"] for r in kept), default=0.0)
        for kind in rows:
            rows[kind] = {it: r for it, r in rows[kind].items() if it < seg["first"]}
            rows[kind].update({it: dict(r, seconds=r["seconds"] + offset) for it, r in seg[kind].items()})
    return _table(rows["train"], ["lr", "loss"]), _table(rows["test"], None)


def _table(rows, columns):
    iterations = sorted(rows)
    if columns is None:
        columns = sorted({k for r in rows.values() for k in r} - {"seconds"})
    table = {"iteration": np.array(iterations, dtype=np.int64),
             "seconds": np.array([rows[i]["seconds"] for i in iterations], dtype=np.float64)}
    for name in columns:
        table[name] = np.array([rows[i].get(name, math.nan) for i in iterations], dtype=np.float64)
    return table


def merged_rows(train, test):
    """One row per iteration: ``iteration, seconds, lr, train_loss, test_<output>...``.

    Parameters
    ----------
    train, test : dict of ndarray
        As returned by :func:`parse_log`.

    Returns
    -------
    header : list of str
    rows : list of list
        Values are int (iteration), float, or '' where a row has no such value.
    """
    test_names = [k for k in test if k not in ("iteration", "seconds")]
    header = ["iteration", "seconds", "lr", "train_loss"] + [f"test_{n}" for n in test_names]
    by_it = {}
    for i, it in enumerate(train["iteration"]):
        by_it[int(it)] = {"seconds": train["seconds"][i], "lr": train["lr"][i], "train_loss": train["loss"][i]}
    for i, it in enumerate(test["iteration"]):
        row = by_it.setdefault(int(it), {"seconds": test["seconds"][i]})
        for n in test_names:
            row[f"test_{n}"] = test[n][i]
    rows = []
    for it in sorted(by_it):
        row = by_it[it]
        values = [it]
        for name in header[1:]:
            v = float(row.get(name, math.nan))
            values.append("" if math.isnan(v) else round(v, 6) if name == "seconds" else v)
        rows.append(values)
    return header, rows


def write_csv(path, train, test):
    """Write :func:`merged_rows` to ``path`` atomically."""
    header, rows = merged_rows(train, test)
    with files.atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def read_log(path):
    """Parse the log file at ``path`` (see :func:`parse_log`); raise InputError if it holds no iteration."""
    if not Path(path).is_file():
        raise InputError(f"log not found: {path}")
    train, test = parse_log(Path(path).read_text(errors="replace"))
    if train["iteration"].size == 0 and test["iteration"].size == 0:
        raise InputError(f"{path}: no training iterations found (is it a `caffe train` log?)")
    return train, test


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cellfcn.parse_log", description=__doc__.splitlines()[0])
    parser.add_argument("log", help="Caffe training log (e.g. runs/pretrain/train.log)")
    parser.add_argument("--out", help="CSV to write (default: print to stdout)")
    args = parser.parse_args(argv)
    train, test = read_log(args.log)
    if args.out:
        write_csv(args.out, train, test)
    else:
        header, rows = merged_rows(train, test)
        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(rows)


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
