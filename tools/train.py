"""Train one stage of FCRN-A with ``caffe train`` (``make pretrain`` / ``make finetune``).

Writes into ``--out``: the train/test nets and the solver for this dataset, ``train.log`` (Caffe's own log),
snapshots ``snap_iter_<n>.caffemodel|.solverstate``, ``final.caffemodel`` and ``run.json``. A run that was
interrupted resumes from its newest intact solverstate (a snapshot torn by a kill or a full disk during Caffe's
write is said, removed, and the one before it used): on Ctrl-C (SIGINT) Caffe snapshots and stops
(``-sigint_effect stop``: Caffe's "snapshot" effect would snapshot and carry on), SIGHUP snapshots and carries on; a finished run with the
same inputs is not repeated; changed inputs start over. Caffe's glog writes to stderr only, into ``train.log``,
never a file of its own in /tmp.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cellfcn import caffe_env, cli, files, schema
from cellfcn.constants import FORMATS, MANIFEST, STAGES, TEST_SPLIT
from cellfcn.errors import CellfcnError, InputError
from prototxt import net
from solvers import solve

_SNAP = re.compile(r"snap_iter_(\d+)\.solverstate$")
_SHOW = re.compile(r"Iteration \d+ \(|Test net output|Iteration \d+, Testing|Snapshotting to|Optimization Done"
                   r"|Resuming|Finetuning from|Check failed|Error|error")


class TrainError(CellfcnError):
    """A one-line reason the stage cannot run."""


def load_manifest(data_dir, fmt, test_split, variant=net.DEFAULT):
    """Read and check a dataset manifest and the files ``variant`` reads; return (manifest, n_train, n_test)."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise TrainError(f"dataset not found: {path} (run 'make data')")
    manifest = schema.load_dataset(path)
    if fmt not in manifest["formats"]:
        raise TrainError(f"dataset {data_dir} has no {fmt} files (formats: {manifest.get('formats')})")
    splits = manifest["splits"]
    for split in ("train", test_split):
        if split not in splits or splits[split]["n"] < 1:
            raise TrainError(f"dataset {data_dir} has no '{split}' split")
        for name in net.dataset_files(split, fmt, variant):
            if not (Path(data_dir) / name).is_file():
                raise TrainError(f"dataset {data_dir} lacks {name} (rebuild it: make data)")
    return manifest, splits["train"]["n"], splits[test_split]["n"]


def check_init_weights(weights, variant=net.DEFAULT):
    """Refuse, before Caffe sees them, weights that would not initialise every layer of the net.

    ``caffe train -weights`` copies layers by name: a model of another net would leave layers at their
    random initialisation without a word, and a same-named layer of another shape aborts Caffe. Two variants
    with the same layers (``fcrn_a``, ``pool2``) differ in the name the model carries.
    """
    own = net.variant_of(caffe_env.model_name(weights))
    if own != variant:
        raise TrainError(f"{weights} is a model of net '{own}', not '{variant}'")
    caffe_env.check_weights(caffe_env.net_from_param(net.deploy_net(variant=variant)), weights)


def newest_snapshot(out):
    """Return (iteration, path) of the newest solverstate in ``out``, or (0, None)."""
    found = [(int(m.group(1)), p) for p in Path(out).glob("snap_iter_*.solverstate") if (m := _SNAP.search(p.name))]
    return max(found) if found else (0, None)


def _blob_sizes(blobs):
    return [len(b.data) or len(b.double_data) for b in blobs]


def snapshot_problem(state, iteration):
    """Why the solverstate ``state`` of ``iteration`` and its caffemodel cannot resume a run; None if they can.

    A kill or a full disk while Caffe writes a snapshot leaves a file cut short: it no longer parses, or (cut
    between two fields) it parses with fewer blobs: the solverstate's history must hold one blob per learnable
    blob of the caffemodel, of the same size.
    """
    from google.protobuf.message import DecodeError

    solver_state = caffe_env.caffe_pb2().SolverState()
    try:
        solver_state.ParseFromString(Path(state).read_bytes())
    except DecodeError:
        return f"{Path(state).name} does not parse"
    if solver_state.iter != iteration:
        return f"{Path(state).name} holds iteration {solver_state.iter}"
    try:
        model = caffe_env.read_model(Path(state).with_suffix(".caffemodel"))
    except InputError as err:
        return str(err)
    weights = _blob_sizes(b for layer in model.layer for b in layer.blobs)
    history = _blob_sizes(solver_state.history)
    if not weights or len(history) % len(weights) or history != weights * (len(history) // len(weights) or 1):
        return (f"its caffemodel holds {len(weights)} blobs and its solverstate {len(history)} history blobs, "
                "not one per learnable blob")
    return None


def resume_point(out, stage):
    """(iteration, solverstate) to resume from: the newest intact snapshot in ``out``, or (0, None).

    Newer snapshots that are torn (:func:`snapshot_problem`) are said and removed, so that Caffe, which aborts
    on them, never sees them and rewrites them when it gets there again.
    """
    found = sorted(((int(m.group(1)), p) for p in Path(out).glob("snap_iter_*.solverstate")
                    if (m := _SNAP.search(p.name))), reverse=True)
    for iteration, state in found:
        problem = snapshot_problem(state, iteration)
        if problem is None:
            return iteration, state
        print(f"{stage}: the snapshot of iteration {iteration} is torn ({problem}): removed, resuming from the one "
              "before", flush=True)
        state.unlink()
        state.with_suffix(".caffemodel").unlink(missing_ok=True)
    return 0, None


def prepare(args):
    """Write nets and solver into ``args.out``; return (solver_path, run_info)."""
    out = Path(args.out)
    test_split = TEST_SPLIT[args.stage]
    manifest, n_train, n_test = load_manifest(args.data, args.format, test_split, args.net)
    sched = solve.schedule(args.stage, n_train, args.batch, args.config, args.epochs, args.iterations)
    test_batch = solve.largest_divisor(n_test, 16)
    data = Path(args.data).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_path, test_path = out / "train.prototxt", out / "test.prototxt"
    # A weighted variant's loss reads its H from the run folder; its content joins the run's key.
    infogain = net.write_infogain(out.resolve() / net.INFOGAIN, args.net) if net.class_weights(args.net) else None
    for path, split, batch, phase in ((train_path, "train", args.batch, "train"), (test_path, test_split, test_batch, "test")):
        net.write_prototxt(path, net.train_net(net.dataset_source(data, split, args.format, args.net), batch, args.format,
                                               phase, args.net, infogain), f"{args.net}_{args.stage}_{phase}")
    solver = solve.solver_param(train_path.resolve(), test_path.resolve(), sched, n_test, test_batch,
                                out.resolve() / "snap", seed=args.seed)
    solver_path = out / "solver.prototxt"
    files.write_text(solver_path, str(solver))
    # The dataset's identity is the content of the files Caffe reads (manifest hashes), not where it lies: a
    # moved dataset resumes, and files training never reads (whole images for evaluation) do not restart it.
    read = {name.split("/")[0] for s in ("train", test_split) for fmt in FORMATS
            for name in net.dataset_files(s, fmt, args.net)}
    key = files.digest(str(net.deploy_net(variant=args.net)), str(solver).replace(str(out.resolve()), "<out>"), args.format,
                       args.batch, {k: v for k, v in manifest.get("files", {}).items() if k.split("/")[0] in read},
                       files.sha256_file(args.weights) if args.weights else None,
                       *([files.sha256_file(infogain)] if infogain else []))  # unweighted runs keep their keys
    info = dict(stage=args.stage, net=args.net, config=args.config, format=args.format, batch=args.batch, seed=args.seed,
                caffe_random_seed=solver.random_seed, data=str(data), n_train=n_train, n_test=n_test,
                test_split=test_split, test_batch=test_batch,
                weights=str(Path(args.weights).resolve()) if args.weights else None,
                gpu=args.gpu, inputs_sha256=key, **sched)
    return solver_path, info


def run_caffe(cmd, log_path, cwd):
    """Run ``caffe train`` in ``cwd``, appending its log to ``log_path`` line by line (so a killed run leaves
    every line Caffe wrote) and echoing the lines that show progress."""
    with open(log_path, "a", buffering=1) as log:
        log.write(f"# cellfcn: {' '.join(map(str, cmd))}\n")
        # glog to stderr only: into train.log, not a caffe.<host>.<user>.log.* file in /tmp per run.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                cwd=cwd, env={**os.environ, "GLOG_logtostderr": "1"})
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
    files.check_writable(out / "run.json", "run folder")
    binary = caffe_env.caffe_binary(gpu=args.gpu is not None)
    if args.weights:
        check_init_weights(args.weights, args.net)
    if args.gpu is not None:
        caffe_env.check_device(args.gpu)
    solver_path, info = prepare(args)
    final, run_json = out / "final.caffemodel", out / "run.json"
    previous = json.loads(run_json.read_text()) if run_json.is_file() else {}
    if previous.get("inputs_sha256") != info["inputs_sha256"]:
        # Different data, nets or schedule: old snapshots belong to another run.
        for stale in list(out.glob("snap_iter_*")) + [final, out / "train.log"]:
            stale.unlink(missing_ok=True)
        files.write_json(run_json, dict(info, status="started"))
    elif previous.get("status") == "done" and final.is_file():
        print(f"{args.stage}: up to date ({final})")
        return final

    cmd = [str(binary), "train", f"-solver={solver_path.resolve()}", "-sigint_effect=stop",
           "-sighup_effect=snapshot"]
    start_iter, state = resume_point(out, args.stage)
    if state is not None:
        cmd.append(f"-snapshot={state.resolve()}")
        print(f"{args.stage}: resuming from iteration {start_iter} ({state.name})")
    elif args.weights:
        cmd.append(f"-weights={Path(args.weights).resolve()}")
    if args.gpu is not None:
        cmd.append(f"-gpu={args.gpu}")
    print(f"{args.stage}: {args.net}, {info['max_iter']} iterations ({info['epochs']} epochs, batch {args.batch}) "
          f"on {'GPU ' + str(args.gpu) if args.gpu is not None else 'CPU'}; log: {out / 'train.log'}", flush=True)
    t0 = time.time()
    # HDF5 list files name their .h5 relative to the dataset folder (datasets are relocatable).
    rc = run_caffe(cmd, out / "train.log", cwd=Path(args.data).resolve())
    seconds = time.time() - t0
    last = out / f"snap_iter_{info['max_iter']}.caffemodel"
    if rc != 0 or not last.is_file():
        done_iter, _ = newest_snapshot(out)
        raise TrainError(f"caffe train stopped (exit {rc}) at snapshot iteration {done_iter}; see {out / 'train.log'}"
                         f"; run the same make target again to resume")
    with files.atomic_file(final) as tmp:
        shutil.copyfile(last, tmp)
    info.update(status="done", seconds=round(seconds, 1), resumed_from=start_iter,
                seconds_per_epoch=round(seconds / max(1e-9, (info["max_iter"] - start_iter) / info["iters_per_epoch"]), 2))
    files.write_json(run_json, info)
    print(f"{args.stage}: done in {seconds:.0f} s ({info['seconds_per_epoch']} s/epoch) -> {final}")
    return final


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=sorted(STAGES), required=True)
    parser.add_argument("--data", required=True, help="dataset folder with manifest.json (make data)")
    parser.add_argument("--out", required=True, help="run folder, e.g. runs/pretrain")
    parser.add_argument("--format", choices=FORMATS, default="hdf5")
    parser.add_argument("--batch", type=_positive, default=8)
    parser.add_argument("--seed", type=_nonnegative, default=0,
                        help="SEED of the pipeline: Caffe's random_seed is 1701 + SEED (default 0)")
    parser.add_argument("--config", choices=sorted(solve.CONFIGS), default="default")
    parser.add_argument("--net", choices=sorted(net.VARIANTS), default=net.DEFAULT,
                        help=f"net variant (default {net.DEFAULT}; prototxt/net.py)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive, help="override the configuration's number of epochs")
    length.add_argument("--iterations", type=_positive,
                        help="override the length in iterations (learning-rate step at the same fraction)")
    parser.add_argument("--weights", help="start from these weights (fine-tuning)")
    parser.add_argument("--gpu", type=int, help="CUDA device id (needs `make caffe GPU=1`)")
    args = parser.parse_args(argv)
    try:
        train(args)
    except KeyboardInterrupt:
        print(f"\n{args.stage}: interrupted; Caffe saved a snapshot: run the same make target to resume",
              file=sys.stderr)
        return 130
    except ValueError as err:
        raise TrainError(str(err)) from None


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonnegative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
