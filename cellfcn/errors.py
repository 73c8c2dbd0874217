"""The one error base class: every command line reports a :class:`CellfcnError` as one line and exits 1."""


class CellfcnError(Exception):
    """Bad input, a missing prerequisite or a failed write; the message names the file and the problem."""


class InputError(CellfcnError):
    """An input file or argument is missing, malformed or inconsistent."""


class CaffeNotFound(CellfcnError):
    """No usable Caffe build (binary, pycaffe or CUDA device)."""
