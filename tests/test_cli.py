"""Every command's usage error is one line naming the command and its --help, exit status 2."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from cellfcn import cli

REPO = Path(__file__).resolve().parent.parent


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m demo")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--choice", choices=["a", "b"], default="a")
    args = parser.parse_args(argv)
    if args.n < 0:
        parser.error("--n must be >= 0")


@pytest.mark.parametrize("argv, phrase", [
    ([], "the following arguments are required: --n"),
    (["--n", "x"], "argument --n: invalid int value: 'x'"),
    (["--n", "1", "--choice", "c"], "invalid choice: 'c'"),
    (["--n", "1", "--bogus"], "unrecognized arguments: --bogus"),
    (["--n", "-1"], "--n must be >= 0"),  # the command's own parser.error
])
def test_usage_error_is_one_line(argv, phrase, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.run(_parse, argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: python -m demo: ") and phrase in err
    assert "--help" in err and "usage:" not in err


def test_parsers_outside_run_keep_argparse_behaviour(capsys):
    with pytest.raises(SystemExit):
        cli.run(_parse, [])
    capsys.readouterr()
    with pytest.raises(SystemExit):  # the hook is gone once run returns
        _parse([])
    assert capsys.readouterr().err.startswith("usage: python -m demo")


@pytest.mark.parametrize("argv, phrase", [
    (["tools.segment", "--tile", "x"], "python -m tools.segment: argument --tile: invalid int value"),
    (["tools.segment", "img", "--out", "/nonexistent/out", "--tile", "100"],
     "python -m tools.segment: --tile must be a multiple of"),
    (["data_prep", "mnfinder"], "python -m data_prep mnfinder: the following arguments are required: --out"),
    (["simcep_py", "--size", "0x"], "python -m simcep_py: argument --size"),
])
def test_real_commands_print_one_line(argv, phrase):
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and phrase in proc.stderr, proc.stderr
