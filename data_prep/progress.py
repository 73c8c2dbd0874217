"""Progress bars that never leave a half-drawn line behind an error message."""

import sys

from tqdm import tqdm


def progress_map(function, items, desc, unit="image"):
    """Return ``[function(item) for item in items]``, showing a progress bar on stderr.

    The bar is a context manager around the loop, so it is cleared when ``function`` raises and the
    one-line error that follows starts on a clean line.
    """
    items = list(items)
    out = []
    with tqdm(total=len(items), desc=desc, unit=unit, leave=False, file=sys.stderr) as bar:
        for item in items:
            out.append(function(item))
            bar.update()
    return out


def log(message):
    """Print ``data_prep: message`` on stderr without breaking an active progress bar."""
    tqdm.write(f"data_prep: {message}", file=sys.stderr)
