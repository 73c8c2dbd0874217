"""Write the reproduction report: one self-contained HTML page plus Markdown and PNGs (``make report``).

Reads ``RUNS/{pretrain,finetune}/`` (train.log, run.json, solver.prototxt), ``RUNS/eval/`` (everything
``make evaluate`` wrote: table1.json, probabilities, ROC, whole-image segmentations) and the datasets under
``--data`` (default ``RUNS/data``); it never runs the network. Writes ``index.html`` (PNGs inlined as
base64), ``report.md``, ``report.json`` (the digest of its inputs: an unchanged rerun returns at once) and the
PNGs into ``--out``: Table 1 beside the paper's, the object-level table (counting cells), Table 2 when ``make
experiments`` wrote ``RUNS/experiments/table2.json``, the training logs (Figure 7), the ROC (Figure 10), Figures
8, 9 and 11, whole-image segmentations of real test images, the configuration, the environment, seeds and
dataset hashes. The folder is built under a temporary name and renamed when complete.
"""
import argparse
import base64
import html
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import cellfcn
from cellfcn import caffe_env, cli, files, schema
from cellfcn.constants import STAGES
from cellfcn.errors import CaffeNotFound, InputError
from cellfcn.machine import cpuinfo
import tools
from tools import experiments
from tools import score as E

EXPERIMENT_FILES = ("table2.json", "data_efficiency.png", "finetune_curves.png")


def required_inputs(runs, data):
    """(path, make target) of every file the report reads."""
    runs, data = Path(runs), Path(data)
    need = []
    for stage in STAGES:
        need += [(runs / stage / name, f"make {stage}") for name in ("train.log", "run.json", "solver.prototxt")]
    need += [(runs / "eval" / name, "make evaluate")
             for name in ("table1.json", "roc.png", "probs_before.npy", "probs_after.npy",
                          "probs_before_synthetic.npy", "objects.json", "segment/segment.json")]
    need += [(data / "synthetic" / name, "make data") for name in ("manifest.json", "test.h5")]
    need += [(data / "real" / name, "make data") for name in ("manifest.json", "test.h5")]
    return need


def optional_inputs(runs):
    """Files shown when present: Table 2 and its plots (``make experiments``)."""
    folder = Path(runs) / "experiments"
    if not (folder / "table2.json").is_file():
        return []
    return [(folder / name, "make experiments") for name in EXPERIMENT_FILES]


def check_inputs(runs, data):
    """Raise :class:`InputError` for the first missing input; return the digest of them all."""
    hashes = {}
    for path, target in required_inputs(runs, data) + optional_inputs(runs):
        if not Path(path).is_file():
            raise InputError(f"missing {path} (run `{target}`)")
        hashes[Path(path).relative_to(Path(path).parents[1]).as_posix()] = files.sha256_file(path)
    return files.digest(hashes, files.code_digest(cellfcn, tools))


# ----------------------------------------------------------------------------------------- document model
class Doc:
    """Blocks rendered both as HTML and as Markdown."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.blocks = []

    def h(self, level, text):
        self.blocks.append(("h", level, text))

    def p(self, text):
        self.blocks.append(("p", text))

    def pre(self, text, title=None):
        self.blocks.append(("pre", text, title))

    def table(self, header, rows):
        self.blocks.append(("table", header, [[("" if c is None else str(c)) for c in r] for r in rows]))

    def img(self, name, caption):
        if not (self.folder / name).is_file():
            raise FileNotFoundError(f"figure not written: {self.folder / name}")
        self.blocks.append(("img", name, caption))

    def html(self, title):
        parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                 f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
                 f"<h1>{html.escape(title)}</h1>\n"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                parts.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>\n")
            elif kind == "p":
                parts.append(f"<p>{_inline_html(block[1])}</p>\n")
            elif kind == "pre":
                summary = f"<summary>{html.escape(block[2])}</summary>" if block[2] else ""
                body = f"<pre>{html.escape(block[1])}</pre>"
                parts.append(f"<details>{summary}{body}</details>\n" if block[2] else body + "\n")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(c)}</th>" for c in block[1])
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>\n"
                               for r in block[2])
                parts.append(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n")
            elif kind == "img":
                data = base64.b64encode((self.folder / block[1]).read_bytes()).decode("ascii")
                parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(block[1])}\">"
                             f"<figcaption>{_inline_html(block[2])}</figcaption></figure>\n")
        parts.append("</body>\n</html>\n")
        return "".join(parts)

    def markdown(self, title):
        parts = [f"# {title}\n"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                parts.append(f"{'#' * block[1]} {block[2]}\n")
            elif kind == "p":
                parts.append(f"{block[1]}\n")
            elif kind == "pre":
                parts.append((f"**{block[2]}**\n\n" if block[2] else "") + f"```\n{block[1].rstrip()}\n```\n")
            elif kind == "table":
                rows = [block[1], ["---"] * len(block[1]), *block[2]]
                parts.append("\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)
                             + "\n")
            elif kind == "img":
                parts.append(f"![{block[1]}]({block[1]})\n\n*{block[2]}*\n")
        return "\n".join(parts)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
thead { background: #f0f0f0; }
img { max-width: 100%; }
figure { margin: 1.5em 0; }
figcaption { font-size: 0.9em; color: #444; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
code { background: #f2f2f2; padding: 0 0.2em; }
"""


def _inline_html(text):
    """Escape text, turning Markdown `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", lambda m: f"<code>{m.group(1)}</code>", html.escape(text, quote=False))


# ---------------------------------------------------------------------------------------------- sections
def _fmt(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def table1_section(doc, table):
    """Table 1: the paper's rows and ours with their 95% intervals (the one rendering, tools.score's)."""
    doc.h(2, "Table 1: before and after fine-tuning")
    doc.p("`t* on test` is the paper's protocol (the MCC-optimal threshold on the test set itself); `t from val` "
          "takes the MCC-optimal threshold of the validation split and applies it to the test set; the Otsu "
          "row thresholds each whole test image and scores the same test pixels. Brackets: 95% bootstrap "
          f"intervals ({table['bootstrap']['replicates']} replicates over {table['bootstrap']['unit']}s).")
    doc.table(*E.table_cells([*table["paper"], *table["rows"]]))


def training_section(doc, runs, out):
    from tools.plot_log import load_stages, plot_stages

    doc.h(2, "Training (Figure 7)")
    stages = load_stages([Path(runs) / s / "train.log" for s in STAGES])
    plot_stages(stages, out / "fig7_training.png", title="Training logs: pretraining (synthetic), fine-tuning (real)")
    doc.img("fig7_training.png", "Train loss, test loss and test pixel accuracy (test net: synthetic test split "
            "while pretraining, real validation split while fine-tuning) and the learning rate, against "
            "iterations and epochs; fine-tuning continues after pretraining.")
    header = ["Stage", "Iterations", "Final train loss", "Final test loss", "Final test accuracy", "Seconds"]
    body = []
    for s in stages:
        train, test = s["train"], s["test"]
        body.append([s["label"], int(max(train["iteration"].max(initial=0), test["iteration"].max(initial=0))),
                     _last(train, "loss"), _last(test, "loss"), _last(test, "accuracy"),
                     _fmt(max(train["seconds"].max(initial=0), test["seconds"].max(initial=0)), 1)])
    doc.table(header, body)


def _last(table, key):
    """The last finite value of a log column, formatted."""
    values = table.get(key, np.array([]))
    values = values[np.isfinite(values)]
    return _fmt(values[-1], 4) if values.size else "–"


def roc_section(doc, runs, out):
    doc.h(2, "ROC and MCC against threshold (Figure 10)")
    eval_dir = Path(runs) / "eval"
    shown = False
    for name, target, caption in (
            ("roc.png", "roc.png", "ROC on the real test set, one point per threshold, before and after "
                                   "fine-tuning, with the Otsu baseline and the paper's operating points."),
            ("before/mcc.png", "mcc_before.png", "MCC against threshold, pretrained model, real test set."),
            ("after/mcc.png", "mcc_after.png", "MCC against threshold, fine-tuned model, real test set.")):
        if (eval_dir / name).is_file():
            shutil.copyfile(eval_dir / name, out / target)
            doc.img(target, caption)
            shown = True
    if not shown:
        doc.p(f"No ROC figure in {eval_dir} (run `make evaluate`).")


def figures_section(doc, runs, data, out):
    from tools.figures import make_figures

    doc.h(2, "Examples: synthetic and real test patches (Figures 8, 9, 11)")
    for name, caption in make_figures(runs, data, out).items():
        doc.img(name, caption)


def objects_section(doc, runs):
    """Counting cells: the object-level companion of Table 1 (``objects.json``, written by make evaluate)."""
    from tools import object_table

    table = object_table.load_objects(Path(runs) / "eval" / "objects.json")
    doc.h(2, "Counting cells (object level)")
    doc.p("The report's motivation is counting cells, and pixel scores do not say whether the counts are right: "
          "two touching nuclei segmented as one blob cost few pixels but one cell. So the probability maps are "
          "cut into nuclei (threshold, the report's opening and minimum-area step, then a marker-based "
          "watershed on the distance transform that splits touching nuclei) and every found nucleus is "
          "matched one-to-one to a true one (Hungarian algorithm on the IoU). " +
          object_table.caption(len(table["test_images"]), len(table["val_images"])).strip() +
          " The Otsu row thresholds each image by Otsu's method and uses the same watershed. For reference, "
          "StarDist's demo model reports F1 0.91 at IoU 0.5 on the DSB2018 fluorescence subset (other images).")
    lines = object_table.markdown(table["rows"]).splitlines()
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    doc.table(split[0], split[2:])


def experiments_section(doc, runs, out):
    """Table 2 (``make experiments``): the report's claim and suggestions, tested over seeds."""
    folder = Path(runs) / "experiments"
    table = experiments.load_table2(folder / "table2.json")
    doc.h(2, "Table 2: the report's claim and suggestions, tested")
    doc.p(experiments.caption(table))
    doc.table(*experiments.table_cells(table))
    for sentence in experiments.findings(table):
        doc.p(sentence)
    for name, caption in (("data_efficiency.png", "Real test MCC against the number of real training patches "
                                                  "(x8 augmentation): pretrained then fine-tuned, and real only. "
                                                  "Dots: single seeds; lines: their means."),
                          ("finetune_curves.png", "Validation loss while training on the real patches: "
                                                  "from the pretrained model (solid) and from Xavier (dashed).")):
        shutil.copyfile(folder / name, out / f"table2_{name}")
        doc.img(f"table2_{name}", caption)


def segmentation_section(doc, runs, out):
    """Whole real test images segmented by ``make evaluate``: instance overlays and counts."""
    folder = Path(runs) / "eval" / "segment"
    seg = files.read_json(folder / "segment.json", "whole-image segmentations (run `make evaluate`)")
    p = seg["params"]
    doc.h(2, "Whole-image segmentation")
    doc.p(f"Fine-tuned model on whole real test images (`test_full.h5`), tiled with overlap and stitched, cut "
          f"into nuclei with the parameters chosen on the training and validation images: threshold "
          f"{p['threshold']:.2f}, "
          f"opening radius {p['opening_radius']} px, minimum area {p['min_area']} px, watershed. Overlay: red = "
          f"outline of each found nucleus (touching nuclei show their shared border), green = the true nuclei.")
    header = ["Image", "Size", "Cells (truth)", "Cells (found)", "F1 at IoU 0.5", "DSB score"]
    body, figures = [], []
    for res in seg["images"]:
        h, w = res["shape"]
        body.append([res["image"], f"{w}x{h}", res["cells_true"], res["cells"], _fmt(res["f1"]),
                     _fmt(res["dsb_score"])])
        overlay = res["files"]["overlay"]
        if not (folder / overlay).is_file():
            raise InputError(f"missing {folder / overlay} (run `make evaluate`)")
        shutil.copyfile(folder / overlay, out / overlay)
        figures.append((overlay, f"Test image {res['image']}: found nuclei (red) and true nuclei (green)."))
    doc.table(header, body)
    for name, caption in figures:
        doc.img(name, caption)


def _run(cmd):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable ({err})"
    return (done.stdout + done.stderr).strip()


def environment():
    """(name, value) pairs: Caffe version and BLAS, CPU or GPU, Python and package versions."""
    info = []
    try:
        binary = caffe_env.caffe_binary()
        info.append(("Caffe binary", str(binary)))
        info.append(("Caffe version", _run([str(binary), "--version"]).splitlines()[-1]))
        ldd = _run(["ldd", str(binary)])
        lib = re.search(r"libcaffe\S*\s*=>\s*(\S+)", ldd)
        libs = _run(["ldd", lib.group(1)]) if lib else ldd
        blas = sorted({f"{m.group(1)} -> {os.path.realpath(m.group(2))}"
                       for m in re.finditer(r"(\S*(?:blas|mkl|atlas)\S*)\s*=>\s*(\S+)", libs)})
        info.append(("BLAS (ldd libcaffe)", "; ".join(blas) or "none found"))
    except CaffeNotFound as err:
        info.append(("Caffe", f"not found ({err})"))
    cpu = cpuinfo()["model"] if Path("/proc/cpuinfo").is_file() else "unknown"
    info.append(("CPU", f"{cpu} ({os.cpu_count()} logical cores)"))
    gpu = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    info.append(("GPU", gpu if gpu and "unavailable" not in gpu and "failed" not in gpu.lower() else "none"))
    info.append(("OS", platform.platform()))
    info.append(("Python", platform.python_version()))
    import matplotlib
    import scipy
    import skimage

    info.append(("numpy / scipy / scikit-image / matplotlib",
                 f"{np.__version__} / {scipy.__version__} / {skimage.__version__} / {matplotlib.__version__}"))
    return info


def configuration_section(doc, runs):
    doc.h(2, "Configuration")
    infos = {s: files.read_json(Path(runs) / s / "run.json", "run record") for s in STAGES}
    keys = []
    for info in infos.values():
        keys += [k for k in info if k not in keys]
    doc.p("`run.json` of each stage (written by tools/train.py); `seconds` is the wall time of `caffe train`.")
    doc.table(["Key", *STAGES], [[k, *(json.dumps(infos[s].get(k)) if k in infos[s] else "–" for s in STAGES)]
                                 for k in keys])
    timings = Path(runs) / "timings.tsv"
    if timings.is_file():  # written by tools/stage_time.sh under make; this report's own time comes after it
        rows = [line.split("\t") for line in timings.read_text().splitlines() if line]
        doc.p("Wall time of each stage's latest run (`timings.tsv`, written by `make`).")
        doc.table(["Stage", "Seconds"], rows)
    for stage in STAGES:
        solver = Path(runs) / stage / "solver.prototxt"
        if solver.is_file():
            doc.pre(solver.read_text(), title=f"{stage}/solver.prototxt")


def data_section(doc, data):
    doc.h(2, "Datasets: seeds and hashes")
    for kind in ("synthetic", "real"):
        manifest = schema.load_dataset(Path(data) / kind / "manifest.json")
        splits = manifest.get("splits", {})
        doc.h(3, f"{kind}: seed {manifest.get('seed')}, patch {manifest.get('patch_size')}, "
                 f"formats {', '.join(manifest.get('formats', []))}")
        doc.table(["Split", "Patches", "Cell fraction"],
                  [[s, v.get("n"), _fmt(v.get("cell_fraction"), 4)] for s, v in splits.items()])
        doc.table(["File", "SHA-256"], [[k, v] for k, v in sorted(manifest.get("files", {}).items())])


def build(runs, data, out):
    """Write the whole report into the folder ``out`` (which must exist and be empty)."""
    runs, data, out = Path(runs), Path(data), Path(out)
    table = schema.load(runs / "eval" / "table1.json", schema.TABLE1)
    doc = Doc(out)
    doc.p("Reproduction of Marzo & La Rosa (2016), \"Microscopy cell semantic segmentation with "
          "fully-convolutional neural networks\": FCRN-A trained with BVLC Caffe on SIMCEP-like synthetic "
          "patches, then fine-tuned on real annotated fluorescence nuclei.")
    table1_section(doc, table)
    objects_section(doc, runs)
    if optional_inputs(runs):
        experiments_section(doc, runs, out)
    training_section(doc, runs, out)
    roc_section(doc, runs, out)
    figures_section(doc, runs, data, out)
    segmentation_section(doc, runs, out)
    configuration_section(doc, runs)
    doc.h(2, "Environment")
    doc.p("The machine that wrote this report.")
    doc.table(["Item", "Value"], environment())
    data_section(doc, data)
    title = "cellfcn: microscopy cell segmentation with an FCN (reproduction report)"
    files.write_text(out / "index.html", doc.html(title))
    files.write_text(out / "report.md", doc.markdown(title))


def write_report(runs, out, data=None, force=False):
    """Check the inputs and build the report in a temporary folder that replaces ``out`` when complete.

    Returns
    -------
    out : Path
    written : bool
        False when ``out`` already held the report of the same inputs.
    """
    runs, out = Path(runs), Path(out)
    data = Path(data) if data else runs / "data"
    key = check_inputs(runs, data)
    done = out / "report.json"
    if not force and done.is_file() and (out / "index.html").is_file() and \
            files.read_json(done).get("inputs_sha256") == key:
        return out, False
    with files.staged_folder(out) as tmp:
        build(runs, data, tmp)
        files.write_json(tmp / "report.json", {"inputs_sha256": key})
    return out, True


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="runs folder (default: %(default)s)")
    parser.add_argument("--data", help="datasets folder (default: RUNS/data)")
    parser.add_argument("--out", required=True, help="report folder to write, e.g. runs/report")
    parser.add_argument("--force", action="store_true", help="rebuild even if the inputs are unchanged")
    args = parser.parse_args(argv)
    out, written = write_report(args.runs, args.out, args.data, args.force)
    print(f"Report: {out / 'index.html'}" + ("" if written else " (up to date)"))


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
