"""Uniform exit statuses for every command: 0 done, 1 ``error: ...`` (bad input, fault), 2 usage, 130 Ctrl-C."""
import argparse
import contextlib
import sys

from .errors import CellfcnError


def _usage_error(parser, message):
    """argparse's ``error`` in one line: the problem and where the usage is, not the usage itself."""
    parser.exit(2, f"error: {parser.prog}: {message} (see {parser.prog} --help)\n")


@contextlib.contextmanager
def _one_line_usage_errors():
    # argparse prints the whole usage (9-14 lines for our commands) before its message; every parser,
    # subcommands' included, reports through ArgumentParser.error, so this one hook covers them all.
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _usage_error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def run(main, argv=None):
    """Call ``main(argv)`` and turn the failures a user can act on into one line on stderr.

    Parameters
    ----------
    main : callable
        The command's body; returns an exit status (None means 0). A usage error (argparse's, or a
        ``parser.error`` of the command) prints one line and exits 2.
    argv : list of str, optional

    Returns
    -------
    int
        The exit status.
    """
    try:
        with _one_line_usage_errors():
            return main(argv) or 0
    except CellfcnError as err:
        print(f"error: {err}", file=sys.stderr)
    except OSError as err:  # a full disk, a read-only folder, a path that is a file
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot read or write{where}: {err.strerror or err}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 1
