"""Train one stage of FCRN-A with ``caffe train`` (``make pretrain`` / ``make finetune``).

Writes into ``--out``: the train/test nets and the solver for this dataset, ``train.log`` (Caffe's own log),
snapshots ``snap_iter_<n>.caffemodel|.solverstate``, ``final.caffemodel`` and ``run.json``. A run that was
interrupted resumes from its newest solverstate: on Ctrl-C (SIGINT) Caffe snapshots and stops
(``-sigint_effect stop``: Caffe's "snapshot" effect would snapshot and carry on), SIGHUP snapshots and carries on; a finished run with the
same inputs is not repeated; changed inputs start over.
"""
import argparse
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "prototxt"))
sys.path.insert(0, str(REPO / "solvers"))

import net  # noqa: E402  (prototxt/net.py)
import solve  # noqa: E402  (solvers/solve.py)
from tools import caffe_env  # noqa: E402

_SNAP = re.compile(r"snap_iter_(\d+)\.solverstate$")
_SHOW = re.compile(r"Iteration \d+ \(|Test net output|Iteration \d+, Testing|Snapshotting to|Optimization Done"
                   r"|Resuming|Finetuning from|Check failed|Error|error")


class TrainError(RuntimeError):
    """A one-line reason the stage cannot run."""


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(data_dir, fmt, test_split):
    """Read and check a dataset manifest; return (manifest, n_train, n_test)."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise TrainError(f"dataset not found: {path} (run 'make data')")
    manifest = json.loads(path.read_text())
    if fmt not in manifest.get("formats", []):
        raise TrainError(f"dataset {data_dir} has no {fmt} files (formats: {manifest.get('formats')})")
    splits = manifest.get("splits", {})
    for split in ("train", test_split):
        if split not in splits or splits[split].get("n", 0) < 1:
            raise TrainError(f"dataset {data_dir} has no '{split}' split")
    return manifest, splits["train"]["n"], splits[test_split]["n"]


def newest_snapshot(out):
    """Return (iteration, path) of the newest solverstate in ``out``, or (0, None)."""
    found = [(int(m.group(1)), p) for p in Path(out).glob("snap_iter_*.solverstate") if (m := _SNAP.search(p.name))]
    return max(found) if found else (0, None)


def prepare(args):
    """Write nets and solver into ``args.out``; return (solver_path, run_info)."""
    out = Path(args.out)
    test_split = solve.TEST_SPLIT[args.stage]
    manifest, n_train, n_test = load_manifest(args.data, args.format, test_split)
    sched = solve.schedule(args.stage, n_train, args.batch, args.config, args.epochs)
    test_batch = solve.largest_divisor(n_test, 16)
    data = Path(args.data).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_path, test_path = out / "train.prototxt", out / "test.prototxt"
    net.write_prototxt(train_path, net.train_net(net.dataset_source(data, "train", args.format), args.batch,
                                                 args.format, "train"), f"fcrn_a_{args.stage}_train")
    net.write_prototxt(test_path, net.train_net(net.dataset_source(data, test_split, args.format), test_batch,
                                                args.format, "test"), f"fcrn_a_{args.stage}_test")
    solver = solve.solver_param(train_path.resolve(), test_path.resolve(), sched, n_test, test_batch,
                                out.resolve() / "snap")
    solver_path = out / "solver.prototxt"
    solver_path.write_text(str(solver))
    key = hashlib.sha256()
    for part in (train_path.read_bytes(), test_path.read_bytes(), solver_path.read_bytes(),
                 json.dumps(manifest.get("files", {}), sort_keys=True).encode(),
                 sha256(args.weights).encode() if args.weights else b""):
        key.update(part)
    info = dict(stage=args.stage, config=args.config, format=args.format, batch=args.batch, data=str(data),
                n_train=n_train, n_test=n_test, test_split=test_split, test_batch=test_batch,
                weights=str(Path(args.weights).resolve()) if args.weights else None,
                gpu=args.gpu, inputs_sha256=key.hexdigest(), **sched)
    return solver_path, info


def run_caffe(cmd, log_path):
    """Run ``caffe train``, appending its log to ``log_path`` and echoing the lines that show progress."""
    with open(log_path, "a") as log:
        log.write(f"# cellfcn: {' '.join(map(str, cmd))}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        try:
            for line in proc.stdout:
                log.write(line)
                if _SHOW.search(line):
                    print(line.rstrip().split("] ", 1)[-1], flush=True)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)  # Caffe snapshots, then exits (-sigint_effect stop)
            proc.wait()
            raise
        return proc.wait()


def train(args):
    """Run (or resume, or skip) one stage; return the path of the final model."""
    out = Path(args.out)
    if args.weights and not Path(args.weights).is_file():
        raise TrainError(f"weights not found: {args.weights} (run 'make pretrain' first)")
    binary = caffe_env.caffe_binary(gpu=args.gpu is not None)
    if args.gpu is not None:
        caffe_env.check_device(args.gpu)
    solver_path, info = prepare(args)
    final, run_json = out / "final.caffemodel", out / "run.json"
    previous = json.loads(run_json.read_text()) if run_json.is_file() else {}
    if previous.get("inputs_sha256") != info["inputs_sha256"]:
        # Different data, nets or schedule: old snapshots belong to another run.
        for stale in list(out.glob("snap_iter_*")) + [final, out / "train.log"]:
            stale.unlink(missing_ok=True)
        run_json.write_text(json.dumps(dict(info, status="started"), indent=1))
    elif previous.get("status") == "done" and final.is_file():
        print(f"{args.stage}: up to date ({final})")
        return final

    cmd = [str(binary), "train", f"-solver={solver_path.resolve()}", "-sigint_effect=stop",
           "-sighup_effect=snapshot"]
    start_iter, state = newest_snapshot(out)
    if state is not None:
        cmd.append(f"-snapshot={state.resolve()}")
        print(f"{args.stage}: resuming from iteration {start_iter} ({state.name})")
    elif args.weights:
        cmd.append(f"-weights={Path(args.weights).resolve()}")
    if args.gpu is not None:
        cmd.append(f"-gpu={args.gpu}")
    print(f"{args.stage}: {info['epochs']} epochs x {info['iters_per_epoch']} iterations (batch {args.batch}) "
          f"on {'GPU ' + str(args.gpu) if args.gpu is not None else 'CPU'}; log: {out / 'train.log'}", flush=True)
    t0 = time.time()
    rc = run_caffe(cmd, out / "train.log")
    seconds = time.time() - t0
    last = out / f"snap_iter_{info['max_iter']}.caffemodel"
    if rc != 0 or not last.is_file():
        done_iter, _ = newest_snapshot(out)
        raise TrainError(f"caffe train stopped (exit {rc}) at snapshot iteration {done_iter}; see {out / 'train.log'}"
                         f"; run the same make target again to resume")
    tmp = final.with_name(final.name + ".tmp")
    shutil.copyfile(last, tmp)
    tmp.replace(final)
    info.update(status="done", seconds=round(seconds, 1), resumed_from=start_iter,
                seconds_per_epoch=round(seconds / max(1e-9, (info["max_iter"] - start_iter) / info["iters_per_epoch"]), 2))
    run_json.write_text(json.dumps(info, indent=1))
    print(f"{args.stage}: done in {seconds:.0f} s ({info['seconds_per_epoch']} s/epoch) -> {final}")
    return final


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("pretrain", "finetune"), required=True)
    parser.add_argument("--data", required=True, help="dataset folder with manifest.json (make data)")
    parser.add_argument("--out", required=True, help="run folder, e.g. runs/pretrain")
    parser.add_argument("--format", choices=net.FORMATS, default="hdf5")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--config", choices=sorted(solve.CONFIGS), default="default")
    parser.add_argument("--epochs", type=int, help="override the configuration's number of epochs")
    parser.add_argument("--weights", help="start from these weights (fine-tuning)")
    parser.add_argument("--gpu", type=int, help="CUDA device id (needs `make caffe GPU=1`)")
    args = parser.parse_args(argv)
    try:
        train(args)
    except (TrainError, caffe_env.CaffeNotFound, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{args.stage}: interrupted; Caffe saved a snapshot: run the same make target to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
