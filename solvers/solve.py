"""Write Caffe SGD solvers from a dataset manifest, so that epochs become iterations exactly.

The report: base_lr 0.01, divided by 10 every 20 epochs, momentum 0.9, weight decay 0.001 (section 7.2). It
states neither the number of epochs nor the fine-tuning schedule; ``CONFIGS`` records our choices:

- ``paper``: the report's pretraining schedule with 60 epochs, then fine-tuning at a tenth of the learning
  rate (0.001, divided by 10 every 20 epochs) for 40 epochs.
- ``default``: the same optimiser, shortened so ``make reproduce`` fits in about 30 minutes on 2 CPU cores:
  pretraining for 20 epochs (0.01, divided by 10 after 10), fine-tuning for 12 epochs (0.01, divided by 10
  after 6). Fine-tuning keeps 0.01: the real nuclei differ from the synthetic ones in background and texture,
  and at that rate 3 epochs lifted the real-test MCC from 0.879 to 0.910, and 6 to 12 epochs held it at
  0.920-0.921 (measured with the synthetic images of simcep_py's earlier measurement model; with today's, 12
  epochs end at 0.919: README, Results).
"""
import argparse
import json
import math
import sys
from pathlib import Path

from cellfcn import caffe_env, cli, files, schema
from cellfcn.constants import CAFFE_SEED_BASE, STAGES
from cellfcn.errors import InputError

# Epoch figures per stage: total length, learning-rate step, snapshot interval.
CONFIGS = {
    "paper": {
        "pretrain": dict(base_lr=0.01, epochs=60, step_epochs=20, snapshot_epochs=5),
        "finetune": dict(base_lr=0.001, epochs=40, step_epochs=20, snapshot_epochs=5),
    },
    "default": {
        "pretrain": dict(base_lr=0.01, epochs=20, step_epochs=10, snapshot_epochs=5),
        "finetune": dict(base_lr=0.01, epochs=12, step_epochs=6, snapshot_epochs=3),
    },
}
COMMON = dict(lr_policy="step", gamma=0.1, momentum=0.9, weight_decay=0.001)


def largest_divisor(n, limit):
    """Largest divisor of ``n`` not above ``limit``: a test batch that covers a split exactly once."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def schedule(stage, n_train, batch_size, config="default", epochs=None, iterations=None):
    """Return the iteration figures of a stage.

    Parameters
    ----------
    stage : {'pretrain', 'finetune'}
    n_train : int
        Training patches (one epoch).
    batch_size : int
    config : {'default', 'paper'}
    epochs : int, optional
        Overrides the configuration's length; the step and snapshot intervals keep their epoch values, capped
        at the length.
    iterations : int, optional
        Overrides the length in iterations (not with ``epochs``): the step and snapshot intervals are the
        same fractions of it as in the configuration, and the net is tested 10 times, so runs on training
        sets of any size follow one schedule (``make experiments``).

    Returns
    -------
    dict
        ``iters_per_epoch``, ``max_iter``, ``stepsize``, ``snapshot``, ``test_interval``, ``epochs`` (a float
        when ``iterations`` is given) and ``base_lr``.
    """
    if config not in CONFIGS:
        raise ValueError(f"config must be one of {sorted(CONFIGS)}, got {config!r}")
    if stage not in CONFIGS[config]:
        raise ValueError(f"stage must be one of {sorted(CONFIGS[config])}, got {stage!r}")
    if n_train < 1 or batch_size < 1:
        raise ValueError(f"need at least one training patch and a positive batch size, got {n_train}, {batch_size}")
    cfg = CONFIGS[config][stage]
    # A partial last batch wraps around in HDF5Data/Data; ceil keeps every patch seen once per epoch.
    ipe = math.ceil(n_train / batch_size)
    if iterations is not None:
        if epochs is not None:
            raise ValueError("give epochs or iterations, not both")
        if int(iterations) < 1:
            raise ValueError(f"iterations must be positive, got {iterations}")
        n = int(iterations)
        return dict(iters_per_epoch=ipe, epochs=round(n / ipe, 3), max_iter=n, base_lr=cfg["base_lr"],
                    stepsize=max(1, round(n * cfg["step_epochs"] / cfg["epochs"])),
                    snapshot=max(1, round(n * cfg["snapshot_epochs"] / cfg["epochs"])),
                    test_interval=math.ceil(n / 10))
    epochs = cfg["epochs"] if epochs is None else int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    return dict(iters_per_epoch=ipe, epochs=epochs, max_iter=epochs * ipe, base_lr=cfg["base_lr"],
                stepsize=min(cfg["step_epochs"], epochs) * ipe,
                snapshot=min(cfg["snapshot_epochs"], epochs) * ipe, test_interval=ipe)


def solver_param(train_net, test_net, sched, n_test, test_batch, snapshot_prefix, display=None, seed=0):
    """Build the SolverParameter for one stage from ``schedule`` figures.

    ``seed`` (the pipeline's SEED) sets Caffe's ``random_seed`` to ``CAFFE_SEED_BASE + seed``: weight
    initialisation and HDF5 shuffling follow it.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    caffe_pb2 = caffe_env.caffe_pb2()
    s = caffe_pb2.SolverParameter()
    s.train_net = str(train_net)
    s.test_net.append(str(test_net))
    s.test_iter.append(n_test // test_batch)
    s.test_interval = sched["test_interval"]
    s.test_initialization = True
    s.base_lr = sched["base_lr"]
    s.lr_policy = COMMON["lr_policy"]
    s.gamma = COMMON["gamma"]
    s.stepsize = sched["stepsize"]
    s.momentum = COMMON["momentum"]
    s.weight_decay = COMMON["weight_decay"]
    s.max_iter = sched["max_iter"]
    s.display = display or max(1, sched["iters_per_epoch"] // 5)
    s.average_loss = s.display
    s.snapshot = sched["snapshot"]
    s.snapshot_prefix = str(snapshot_prefix)
    s.random_seed = CAFFE_SEED_BASE + seed
    s.solver_mode = caffe_pb2.SolverParameter.CPU  # the GPU is chosen on the command line (-gpu)
    return s


def write_defaults(out, batch_size=8):
    """Write the committed solvers for the default datasets (200 synthetic, 440 real patches)."""
    counts = {"pretrain": (200, 100), "finetune": (440, 76)}  # (train, test/val) patches of `make data`
    for config in CONFIGS:
        for stage, (n_train, n_test) in counts.items():
            sched = schedule(stage, n_train, batch_size, config)
            tb = largest_divisor(n_test, 16)
            s = solver_param(f"prototxt/{stage}_train_hdf5.prototxt", f"prototxt/{stage}_test_hdf5.prototxt",
                             sched, n_test, tb, f"runs/{stage}/snap")
            files.write_text(Path(out) / f"{stage}_{config}.prototxt",
                             f"# Generated by solvers/solve.py for {n_train} training patches, batch {batch_size}"
                             f"; tools/train.py writes the one a run uses from its dataset's manifest.\n{s}")


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m solvers.solve", description=__doc__.splitlines()[0])
    parser.add_argument("--write-defaults", metavar="DIR", help="write the committed default solvers to DIR")
    parser.add_argument("--manifest", help="dataset manifest.json: print the schedule for it")
    parser.add_argument("--stage", choices=sorted(STAGES), default="pretrain")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--epochs", type=int)
    args = parser.parse_args(argv)
    try:
        if args.write_defaults:
            write_defaults(args.write_defaults, args.batch)
        if args.manifest:
            n_train = schema.load_dataset(args.manifest)["splits"].get("train", {}).get("n")
            if not n_train:
                raise InputError(f"{args.manifest}: no 'train' split")
            print(json.dumps(schedule(args.stage, n_train, args.batch, args.config, args.epochs), indent=1))
    except ValueError as err:
        raise InputError(str(err)) from None


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
