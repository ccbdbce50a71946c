"""One exception type for bad user input.

The CLI turns a BenchError into a single ``error: ...`` line and exit code 2; anything
else is a bug and keeps its traceback.
"""


class BenchError(Exception):
    """Bad input from the user (unknown name, bad value, missing/corrupt file...)."""
