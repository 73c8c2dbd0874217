"""The one exception the command line turns into a one-line ``error: ...`` message."""


class DataPrepError(Exception):
    """Bad input or an unusable output path; the message names the file and the problem."""
