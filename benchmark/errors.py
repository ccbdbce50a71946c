"""One exception type for bad user input.

The CLI turns a BenchError into a single ``error: ...`` line and exit code 2; anything
else is a bug and keeps its traceback.
"""


class BenchError(Exception):
    """Bad input from the user (unknown name, bad value, missing/corrupt file...)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none (an empty
    ``EOFError()`` from a zero-byte checkpoint must not turn the error message into an IndexError)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
