"""The README's result tables, rendered from a run's own files (`make readme-tables`).

Two steps. ``--collect RUNS`` copies the files of a run that the README shows into the committed folder
``results/``, at their paths under ``RUNS`` (``eval/table1.json``, ``eval/objects.json``, ``timings.tsv``;
``net-contour_skip/timings.tsv``, ``eval/magnification.json`` and ``experiments/table2.json`` when the run has them), each checked first, and
writes ``results/machine.json``: the CPU, its logical cores and the date of the run's newest file. The
machine is read where ``--collect`` runs: collect on the machine that made the run.

``--write README.md`` (the default) replaces the text between every ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->`` of the README with NAME rendered from ``results/``: ``table1`` (the table `make
evaluate` prints), ``objects`` (the object-level table), ``timings`` (each stage's wall time and the total),
``magnification`` (the magnification test, with its caption), ``table2`` (Table 2 of `make experiments`
with its caption, findings and times) and ``machine`` (one line: the machine and the
date, to put under a table's caption). A block whose opening marker ends its line is a Markdown block; one
that goes on in the same line is inline text. A name may appear more than once; a marker quoted as code (in
backticks or a fenced block) is text. ``--check`` writes nothing and names each block that differs from what
``results/`` renders (exit 1), so a figure edited by hand in the README, or results not rendered, is found.
"""
import argparse
import datetime
import re
import shutil
import sys
from pathlib import Path

from cellfcn import cli, files
from cellfcn.errors import InputError
from cellfcn.machine import cpuinfo
from tools import evaluate, experiments, magnification, object_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "results"
#: The run's files the README shows, by their path under RUNS (and under results/): required, then optional.
REQUIRED = ("eval/table1.json", "eval/objects.json", "timings.tsv")
#: The instance-aware net's stage times (the Makefile's INSTANCE_NET runs folder).
INSTANCE_TIMINGS = "net-contour_skip/timings.tsv"
OPTIONAL = (INSTANCE_TIMINGS, "eval/magnification.json", "experiments/table2.json")
MACHINE = "machine.json"
MARKER = re.compile(r"<!--\s*(/?)results:([^\s>]*)\s*-->")
FENCE = re.compile(r"^```.*?^```", flags=re.M | re.S)
REBUILD = "run `make readme-tables`"


# ------------------------------------------------------------------------------------------- reading
def read_timings(path):
    """The stages and wall times of a ``timings.tsv`` (``tools/stage_time.sh``: ``stage<TAB>seconds``).

    Returns
    -------
    list of (str, float)
        In file order.

    Raises
    ------
    InputError
        An empty file, or a line that is not a stage and a non-negative number of seconds.
    """
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split("\t")
        try:
            seconds = float(fields[1]) if len(fields) == 2 and fields[0] else -1.0
        except ValueError:
            seconds = -1.0
        if not seconds >= 0:  # also NaN
            raise InputError(f"{path}:{number}: not 'stage<TAB>seconds': {line[:60]!r}")
        rows.append((fields[0], seconds))
    if not rows:
        raise InputError(f"{path}: no stage timings")
    return rows


def read_machine(path):
    """``results/machine.json``, checked for the keys :func:`machine_line` reads."""
    record = files.read_json(path, f"machine record ({REBUILD})")
    if not isinstance(record, dict) or not {"cpu", "logical_cpus", "run_date"} <= record.keys():
        raise InputError(f"{path} lacks cpu, logical_cpus or run_date: {REBUILD}")
    return record


#: How each file is read, by its path under results/ (and RUNS: collect refuses a file its renderer would).
LOADERS = {"eval/table1.json": evaluate.load_table, "eval/objects.json": object_table.load_objects,
           "timings.tsv": read_timings, INSTANCE_TIMINGS: read_timings,
           "eval/magnification.json": magnification.load_result, "experiments/table2.json": experiments.load_table2,
           MACHINE: read_machine}


# ------------------------------------------------------------------------------------------- collect
def machine_record(run_files):
    """What ``results/machine.json`` holds: this machine's CPU and logical cores, and the run's date (the
    newest modification time of ``run_files``, UTC)."""
    info = cpuinfo()
    newest = max(Path(p).stat().st_mtime for p in run_files)
    return {"cpu": info["model"], "logical_cpus": info["cores"],
            "run_date": datetime.datetime.fromtimestamp(newest, datetime.timezone.utc).date().isoformat()}


def collect(runs, results=RESULTS):
    """Copy the README's files of the run folder ``runs`` into ``results`` (replaced as a whole).

    Parameters
    ----------
    runs : path
        A ``RUNS`` folder of `make reproduce` (``eval/``, ``timings.tsv``...).
    results : path
        The folder to replace.

    Returns
    -------
    list of str
        The copied files' paths under ``results``, then ``machine.json``.

    Raises
    ------
    InputError
        ``runs`` is not a folder, a required file is missing, or a file does not read as its renderer needs.
    """
    runs = Path(runs)
    if not runs.is_dir():
        raise InputError(f"{runs}: no such run folder (make reproduce writes one)")
    for name in REQUIRED:
        if not (runs / name).is_file():
            raise InputError(f"{runs / name} not found: run `make reproduce RUNS={runs}` first")
    names = [*REQUIRED, *(n for n in OPTIONAL if (runs / n).is_file())]
    for name in names:
        LOADERS[name](runs / name)
    with files.staged_folder(results) as tmp:
        for name in names:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(runs / name, tmp / name)
        files.write_json(tmp / MACHINE, machine_record([runs / n for n in names]))
    return [*names, MACHINE]


# ------------------------------------------------------------------------------------------- rendering
def timings_markdown(stages):
    """Stage | wall time, with the total, from ``(stage, seconds)`` pairs."""
    total = sum(seconds for _, seconds in stages)
    lines = ["| stage | wall time |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.1f} s |" for stage, seconds in stages]
    lines.append(f"| total | {total:.1f} s ({total / 60:.1f} min) |")
    return "\n".join(lines) + "\n"


def machine_line(record):
    """One line naming the machine and the run's date, from a :func:`machine_record`."""
    return f"Machine: {record['cpu']}, {record['logical_cpus']} logical CPUs; run of {record['run_date']}."


def _load(results, name):
    """File ``name`` of ``results``, read by its loader."""
    path = Path(results) / name
    if not path.is_file():
        made_by = {"eval/magnification.json": " (the run needs `python -m tools.magnification --out RUNS/eval` first)",
                   "experiments/table2.json": " (the run needs `make experiments RUNS=...` first)"}.get(name, "")
        raise InputError(f"{path} not found: {REBUILD}{made_by}")
    return LOADERS[name](path)


def _render_table1(results):
    table = _load(results, "eval/table1.json")
    return evaluate.markdown(table["rows"], table["paper"])


def _render_objects(results):
    return object_table.markdown(_load(results, "eval/objects.json")["rows"])


def _render_timings(results):
    stages = _load(results, "timings.tsv")
    if (Path(results) / INSTANCE_TIMINGS).is_file():  # prefixed as `make reproduce` prints them
        stages += [(f"contour {stage}", seconds) for stage, seconds in _load(results, INSTANCE_TIMINGS)]
    return timings_markdown(stages)


def _render_magnification(results):
    return magnification.markdown(_load(results, "eval/magnification.json"))


def _render_table2(results):
    return experiments.markdown(_load(results, "experiments/table2.json"))


def _render_machine(results):
    return machine_line(_load(results, MACHINE))


RENDERERS = {"table1": _render_table1, "objects": _render_objects, "timings": _render_timings,
             "magnification": _render_magnification, "table2": _render_table2, "machine": _render_machine}


def blocks(text, where="README.md"):
    """The marked blocks of ``text``.

    Returns
    -------
    list of dict
        ``name``, ``start`` and ``end`` (the span between the two markers), ``line`` (of the opening
        marker, from 1) and ``inline`` (the opening marker does not end its line).

    Raises
    ------
    InputError
        An unknown name, a closing marker without its opening one, an opening one inside another block or
        never closed.
    """
    code = [m.span() for m in FENCE.finditer(text)]
    found, open_ = [], None
    for match in MARKER.finditer(text):
        if text[match.start() - 1:match.start()] == "`" or any(a <= match.start() < b for a, b in code):
            continue  # a marker quoted as code is text
        closing, name = match.group(1) == "/", match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        if name not in RENDERERS:
            raise InputError(f"{where}:{line}: unknown results block {name!r} (known: {', '.join(RENDERERS)})")
        if not closing:
            if open_ is not None:
                raise InputError(f"{where}:{line}: results:{name} opens inside results:{open_['name']} "
                                 f"(line {open_['line']}), which is not closed")
            inline = not text.startswith("\n", match.end())
            open_ = {"name": name, "start": match.end(), "line": line, "inline": inline}
        elif open_ is None or open_["name"] != name:
            raise InputError(f"{where}:{line}: /results:{name} closes no open results:{name} block")
        else:
            found.append({**open_, "end": match.start()})
            open_ = None
    if open_ is not None:
        raise InputError(f"{where}:{open_['line']}: results:{open_['name']} is never closed")
    return found


def render(name, results=RESULTS):
    """The Markdown of block ``name`` from the files in ``results`` (ends with a newline)."""
    return RENDERERS[name](Path(results))


def replace_blocks(text, results=RESULTS, where="README.md"):
    """``text`` with every marked block rendered from ``results``.

    Returns
    -------
    new : str
    differing : list of dict
        The blocks (as :func:`blocks` gives them) whose content changed.
    n_blocks : int
        How many marked blocks ``text`` holds.
    """
    rendered, out, differing, last = {}, [], [], 0
    found = blocks(text, where)
    for block in found:
        name = block["name"]
        if name not in rendered:
            rendered[name] = render(name, results)
        body = rendered[name].strip("\n") if block["inline"] else "\n" + rendered[name]
        if text[block["start"]:block["end"]] != body:
            differing.append(block)
        out += [text[last:block["start"]], body]
        last = block["end"]
    out.append(text[last:])
    return "".join(out), differing, len(found)


# ------------------------------------------------------------------------------------------- command
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.readme_tables", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--collect", metavar="RUNS", help="copy this run folder's result files into --results")
    mode.add_argument("--write", metavar="README", nargs="?", const=str(README),
                      help="render the marked blocks of this file from --results (the default; default file: "
                           "the repository's README.md)")
    mode.add_argument("--check", metavar="README", nargs="?", const=str(README),
                      help="write nothing; exit 1 naming each marked block that differs")
    p.add_argument("--results", default=str(RESULTS), help="the results folder (default: %(default)s)")
    return p.parse_args(argv)


def _main(argv=None):
    args = parse_args(argv)
    if args.collect:
        names = collect(args.collect, args.results)
        print(f"{args.results}: {', '.join(names)} from {args.collect}")
        return 0
    path = Path(args.check or args.write or README)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    new, differing, n_blocks = replace_blocks(text, args.results, where=path.name)
    if args.check:
        for block in differing:
            print(f"{path}:{block['line']}: results:{block['name']} differs from {args.results}: "
                  f"{REBUILD}", file=sys.stderr)
        if not differing:
            print(f"{path}: all {n_blocks} results blocks match {args.results}")
        return 1 if differing else 0
    if differing:
        files.write_text(path, new)
    print(f"{path}: {len(differing)} of {n_blocks} results blocks rewritten")
    return 0


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
