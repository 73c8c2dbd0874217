"""Uniform exit statuses for every command: 0 done, 1 ``error: ...`` (bad input, fault), 2 usage, 130 Ctrl-C."""
import sys

from .errors import CellfcnError


def run(main, argv=None):
    """Call ``main(argv)`` and turn the failures a user can act on into one line on stderr.

    Parameters
    ----------
    main : callable
        The command's body; returns an exit status (None means 0). argparse exits 2 on usage errors itself.
    argv : list of str, optional

    Returns
    -------
    int
        The exit status.
    """
    try:
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
