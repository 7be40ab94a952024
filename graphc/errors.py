"""User-facing errors: one clear line, exit status 2.

Everything the user can get wrong (a bad file, a bad option, data that does not fit the
model) raises :class:`GraphcError`; the CLI prints its message as one line and exits 2.
Any other exception is a bug in graphc and exits 1.
"""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class GraphcError(Exception):
    """An error caused by the user's input; its message is shown as one line."""

    exit_code = 2

    def __str__(self) -> str:
        return " ".join(super().__str__().split())


class VerificationError(GraphcError):
    """A pass changed the model's outputs beyond its declared tolerance (``--verify``)."""
