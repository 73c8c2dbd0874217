"""Write the reproduction report: one self-contained HTML page plus Markdown and PNGs (``make report``).

Reads ``RUNS/{pretrain,finetune}/`` (train.log, run.json, solver.prototxt, final.caffemodel), ``RUNS/eval/``
(table1.json and roc.png from ``make evaluate``) and the datasets under ``--data`` (default ``RUNS/data``).
Writes ``index.html`` (PNGs inlined as base64), ``report.md`` and the PNGs into ``--out``: Table 1 beside
the paper's, the training logs (Figure 7), the ROC (Figure 10), Figures 8, 9 and 11, whole-image
segmentations of real test images, the configuration, the environment, seeds and dataset hashes. The folder
is built under a temporary name and renamed when complete.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRICS = ("specificity", "precision", "recall", "accuracy", "f_score", "mcc")
LABELS = {"specificity": "Specificity", "precision": "Precision", "recall": "Recall", "accuracy": "Accuracy",
          "f_score": "F-score", "mcc": "MCC", "auc": "AUC"}
STAGES = ("pretrain", "finetune")


class MissingInput(Exception):
    """A required input file is absent; the message names it and the make target that creates it."""


def required_inputs(runs, data):
    """(path, make target) of every file the report needs."""
    runs, data = Path(runs), Path(data)
    need = []
    for stage in STAGES:
        need += [(runs / stage / name, f"make {stage}") for name in ("train.log", "final.caffemodel", "run.json")]
    need += [(runs / "eval" / "table1.json", "make evaluate")]
    need += [(data / "synthetic" / name, "make data") for name in ("manifest.json", "test.h5")]
    need += [(data / "real" / name, "make data") for name in ("manifest.json", "test.h5", "test_full.h5")]
    return need


def check_inputs(runs, data):
    """Raise :class:`MissingInput` for the first missing input."""
    for path, target in required_inputs(runs, data):
        if not Path(path).is_file():
            raise MissingInput(f"missing {path} (run `{target}`)")


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


def _with_ci(row, key):
    text = _fmt(row.get(key))
    ci = (row.get("ci") or {}).get(key)
    if ci and row.get(key) is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def _find_row(rows, protocol, word):
    for row in rows:
        if row.get("protocol") == protocol and word in row.get("name", "") and "synthetic" not in row["name"]:
            return row
    return None


def table1_section(doc, table1):
    """Table 1: a side-by-side comparison with the paper, then every row with its 95% interval."""
    rows, paper = table1.get("rows", []), table1.get("paper", [])
    doc.h(2, "Table 1: before and after fine-tuning")
    pairs = [("before", _find_row(paper, "test-optimal", "before"), _find_row(rows, "test-optimal", "before")),
             ("after", _find_row(paper, "test-optimal", "after"), _find_row(rows, "test-optimal", "after"))]
    header = ["Metric"]
    for which, p, o in pairs:
        header += [f"paper, {which}", f"ours, {which}"]
    body = []
    for key in ("threshold", *METRICS, "auc"):
        line = [LABELS.get(key, "Threshold")]
        for _, p, o in pairs:
            line += [_fmt((p or {}).get(key), 2), _fmt((o or {}).get(key))]
        body.append(line)
    doc.p("Each model at the threshold that maximises MCC on the real test set, as in the paper "
          "(pixel-wise scores over all test patches).")
    doc.table(header, body)
    doc.p("All rows: `t* on test` is the paper's protocol; `t from val` takes the MCC-optimal threshold of the "
          "validation split and applies it to the test set; the Otsu row thresholds each whole test image "
          "and scores the same test pixels. Brackets: 95% bootstrap intervals"
          + (f" ({table1['bootstrap'].get('replicates')} replicates over {table1['bootstrap'].get('unit')}s)."
             if isinstance(table1.get("bootstrap"), dict) else "."))
    header = ["Row", "Threshold", *(LABELS[k] for k in METRICS), "AUC"]
    body = []
    for row in [*paper, *rows]:
        threshold = "per image" if row.get("threshold") is None else f"{row['threshold']:.3f}"
        body.append([row.get("name", "?"), threshold, *(_with_ci(row, k) for k in (*METRICS, "auc"))])
    doc.table(header, body)


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


def figures_section(doc, runs, data, out, gpu):
    from tools.figures import make_figures

    doc.h(2, "Examples: synthetic and real test patches (Figures 8, 9, 11)")
    for name, caption in make_figures(runs, data, out, gpu=gpu).items():
        doc.img(name, caption)


def segmentation_section(doc, runs, data, out, table1, n_images, opening, min_area, gpu):
    """Segment whole real test images with the fine-tuned model; overlays and counts."""
    import h5py

    from tools import caffe_env
    from tools.segment import segment_and_save

    rows = table1.get("rows", [])
    chosen = _find_row(rows, "val-threshold", "after") or _find_row(rows, "test-optimal", "after")
    threshold = float(chosen["threshold"]) if chosen else 0.5
    doc.h(2, "Whole-image segmentation")
    doc.p(f"Fine-tuned model on whole real test images (`test_full.h5`), tiled with overlap and stitched; "
          f"threshold {threshold:.3f} ({chosen['name'] if chosen else 'default'}). Post-processing: opening "
          f"with a disk of radius {opening} px, then removal of objects under {min_area} px. Cells are counted "
          f"as 8-connected components of the masks, so touching nuclei count once (in the truth too). "
          f"Overlay: red = predicted outline (post-processed), green = ground truth.")
    caffe = caffe_env.import_caffe(gpu)
    net = caffe.Net(str(Path(__file__).resolve().parent.parent / "prototxt" / "deploy.prototxt"), caffe.TEST,
                    weights=str(Path(runs) / "finetune" / "final.caffemodel"))
    header = ["Image", "Size", "Cells (truth)", "Cells (raw)", "Cells (post)", "MCC raw", "MCC post",
              "F-score raw", "F-score post"]
    body, figures = [], []
    with h5py.File(Path(data) / "real" / "test_full.h5", "r") as f:
        keys = sorted(f["images"], key=int)[:n_images]
        for key in keys:
            image = f["images"][key][()].astype(np.float32)
            truth = f["masks"][key][()] != 0
            name = f["images"][key].attrs.get("name", key)
            name = name.decode() if isinstance(name, bytes) else str(name)
            res = segment_and_save(net, image, out, f"segment_{int(key):02d}", threshold, opening, min_area,
                                   truth)
            body.append([name, f"{image.shape[1]}x{image.shape[0]}", res["cells_true"], res["cells_raw"],
                         res["cells"], _fmt(res["scores_raw"]["mcc"]), _fmt(res["scores"]["mcc"]),
                         _fmt(res["scores_raw"]["f_score"]), _fmt(res["scores"]["f_score"])])
            figures.append((res["files"]["overlay"], f"Test image {key} ({name}): segmentation overlay."))
            (out / res["files"]["prob"]).unlink()  # the float map is for tools, not for the page
            (out / res["files"]["mask"]).unlink()
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
    from tools import caffe_env

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
    except caffe_env.CaffeNotFound as err:
        info.append(("Caffe", f"not found ({err})"))
    cpu = "unknown"
    if Path("/proc/cpuinfo").is_file():
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1).strip() if found else cpu
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
    infos = {s: json.loads((Path(runs) / s / "run.json").read_text()) for s in STAGES}
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
        manifest = json.loads((Path(data) / kind / "manifest.json").read_text())
        splits = manifest.get("splits", {})
        doc.h(3, f"{kind}: seed {manifest.get('seed')}, patch {manifest.get('patch_size')}, "
                 f"formats {', '.join(manifest.get('formats', []))}")
        doc.table(["Split", "Patches", "Cell fraction"],
                  [[s, v.get("n"), _fmt(v.get("cell_fraction"), 4)] for s, v in splits.items()])
        files = manifest.get("files", {})
        doc.table(["File", "SHA-256"], [[k, v] for k, v in sorted(files.items())])


def build(runs, data, out, n_images=2, opening=1, min_area=30, gpu=None):
    """Write the whole report into the folder ``out`` (which must exist and be empty)."""
    runs, data, out = Path(runs), Path(data), Path(out)
    table1 = json.loads((runs / "eval" / "table1.json").read_text())
    doc = Doc(out)
    doc.p("Reproduction of Marzo & La Rosa (2016), \"Microscopy cell semantic segmentation with "
          "fully-convolutional neural networks\": FCRN-A trained with BVLC Caffe on SIMCEP-like synthetic "
          "patches, then fine-tuned on real annotated fluorescence nuclei.")
    table1_section(doc, table1)
    training_section(doc, runs, out)
    roc_section(doc, runs, out)
    figures_section(doc, runs, data, out, gpu)
    segmentation_section(doc, runs, data, out, table1, n_images, opening, min_area, gpu)
    configuration_section(doc, runs)
    doc.h(2, "Environment")
    doc.p("The machine that wrote this report.")
    doc.table(["Item", "Value"], environment())
    data_section(doc, data)
    title = "cellfcn: microscopy cell segmentation with an FCN (reproduction report)"
    (out / "index.html").write_text(doc.html(title))
    (out / "report.md").write_text(doc.markdown(title))


def write_report(runs, out, data=None, **kwargs):
    """Check the inputs, build the report in a temporary folder beside ``out`` and rename it to ``out``."""
    runs, out = Path(runs), Path(out)
    data = Path(data) if data else runs / "data"
    check_inputs(runs, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build(runs, data, tmp, **kwargs)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="runs folder (default: %(default)s)")
    parser.add_argument("--data", help="datasets folder (default: RUNS/data)")
    parser.add_argument("--out", required=True, help="report folder to write, e.g. runs/report")
    parser.add_argument("--images", type=int, default=2, help="whole test images to segment (default: %(default)s)")
    parser.add_argument("--opening", type=int, default=1, help="opening radius for post-processing (default: %(default)s)")
    parser.add_argument("--min-area", type=int, default=30,
                        help="remove objects smaller than this in post-processing (default: %(default)s)")
    parser.add_argument("--gpu", type=int, help="CUDA device id for forward passes (default: CPU)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.opening < 0 or args.min_area < 0:
        parser.error("--images must be positive, --opening and --min-area >= 0")
    from tools import caffe_env
    from tools.evaluate import InputError

    try:
        out = write_report(args.runs, args.out, args.data, n_images=args.images, opening=args.opening,
                           min_area=args.min_area, gpu=args.gpu)
    except (MissingInput, OSError, ValueError, KeyError, InputError, caffe_env.CaffeNotFound) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Report: {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
