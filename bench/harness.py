"""Time two frameworks fairly on a shared machine: one worker process each, run in alternating rounds.

Each framework lives in its own process so that neither's thread pool (OpenBLAS pthreads for Caffe, OpenMP
for PyTorch) spins while the other runs; the idle worker blocks on its pipe. Rounds alternate which goes
first, and the figure kept is the median over rounds, so load from other processes hits both alike.
"""
import importlib
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback

from cellfcn import caffe_env
from cellfcn.errors import CellfcnError
from cellfcn.machine import thread_env

PAUSE_S = 0.2  # lets the previous worker's spinning threads go to sleep before the next one starts


def _failure(err):
    """What the parent reports: a project error's one-line message (a missing build, a bad input), else the
    traceback of the bug."""
    return str(err) if isinstance(err, CellfcnError) else traceback.format_exc()


def _serve(conn, target, kwargs, env):
    os.environ.update(env)
    try:
        if "CAFFE_ROOT" in env or "PYCAFFE" in env:
            # spawn gives the child its parent's sys.path, which finds the default build's pycaffe first.
            sys.path.insert(0, str(caffe_env.pycaffe_dir()))
        module, _, name = target.partition(":")
        obj = getattr(importlib.import_module(module), name)(**kwargs)
        conn.send(("ok", None))
    except Exception as err:  # the parent reports it; the worker has nothing left to do
        conn.send(("error", _failure(err)))
        return
    while True:
        msg = conn.recv()
        if msg is None:
            return
        method, args = msg
        try:
            conn.send(("ok", getattr(obj, method)(*args)))
        except Exception as err:
            conn.send(("error", _failure(err)))


class WorkerError(RuntimeError):
    """A benchmark worker failed; the message holds its error, or its traceback if it was a bug."""


class Worker:
    """A child process holding one benchmark object, built by ``target`` ("module:Class") from ``kwargs``.

    The object's methods run in the child: ``worker.call("run", 5)``.
    """

    def __init__(self, label, target, kwargs, threads, env=None):
        self.label = label
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        full_env = {**thread_env(threads), **(env or {})}
        self._proc = ctx.Process(target=_serve, args=(child, target, kwargs, full_env), daemon=True)
        # The child must start with its environment: the dynamic loader reads LD_LIBRARY_PATH only at exec.
        saved = dict(os.environ)
        os.environ.update(full_env)
        try:
            self._proc.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self._check(self._conn.recv())

    def _check(self, reply):
        status, value = reply
        if status != "ok":
            raise WorkerError(f"{self.label} worker failed: {value}")
        return value

    def call(self, method, *args):
        self._conn.send((method, args))
        return self._check(self._conn.recv())

    def close(self):
        if self._proc.is_alive():
            self._conn.send(None)
            self._proc.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


VARIANT_HELP = ("an extra Caffe run with environment overrides, e.g. "
                "blis=LD_LIBRARY_PATH=/opt/blis,CAFFE_ROOT=/path/prefix (repeatable)")


def parse_variants(specs):
    """``--variant`` values ``LABEL=VAR=VALUE[,VAR=VALUE]`` -> ``{label: {VAR: VALUE}}``.

    Raises
    ------
    ValueError
        Naming the first value that does not have that form.
    """
    variants = {}
    for spec in specs:
        label, _, assignments = spec.partition("=")
        pairs = [kv.partition("=") for kv in assignments.split(",") if kv]
        if not label or not pairs or any(not k or not sep for k, sep, _ in pairs):
            raise ValueError(f"--variant must look like LABEL=VAR=VALUE[,VAR=VALUE], got {spec!r}")
        variants[label] = {k: v for k, _, v in pairs}
    return variants


def alternate(workers, rounds, steps, progress=True):
    """Run ``steps`` timed steps per worker per round, alternating the order each round.

    Each worker's ``run(steps)`` returns :func:`timed`'s dict; a round's figures are the medians over its steps.

    Returns
    -------
    dict
        label -> {"wall": [...], "cpu": [...]}: per-round median seconds per step, in round order.
    """
    times = {w.label: {"wall": [], "cpu": []} for w in workers}
    for r in range(rounds):
        order = workers if r % 2 == 0 else workers[::-1]
        for w in order:
            time.sleep(PAUSE_S)
            step = w.call("run", steps)
            for key in ("wall", "cpu"):
                times[w.label][key].append(statistics.median(step[key]))
        if progress:
            summary = "  ".join(f"{label} {t['wall'][-1] * 1e3:8.1f} ms" for label, t in times.items())
            print(f"  round {r + 1}/{rounds}: {summary}", file=sys.stderr, flush=True)
    return times


def timed(fn, steps):
    """Call ``fn()`` ``steps`` times.

    Returns
    -------
    dict
        ``wall``: seconds per call; ``cpu``: CPU seconds of this process (all its threads) per call. On a busy
        machine the CPU time of a one-thread run still measures the work done, while wall time also counts
        the waits for a core.
    """
    out = {"wall": [], "cpu": []}
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        out["wall"].append(time.perf_counter() - t0)
        out["cpu"].append(time.process_time() - c0)
    return out


def run_and_report(run, report, json_path=None):
    """A benchmark command's ending: ``run()``, print ``report(result)``, write the JSON; return the exit status.

    A failing worker (or a bad value found while running) ends in one ``error:`` line and exit status 1.
    """
    from cellfcn import files

    try:
        result = run()
    except (WorkerError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report(result))
    if json_path:
        files.write_json(json_path, result)
    return 0

