"""Errors that blendedit reports to a person: one line, naming the argument and the value."""

from __future__ import annotations


class BlendEditError(ValueError):
    """Base class: a problem with what the user asked for, reported as one clear line."""


class InputError(BlendEditError):
    """A bad argument or file: unreadable image, mask mismatch, empty mask, absurd size."""


class ModelNotFoundError(BlendEditError):
    """A model id or path that could not be found or loaded."""


class Cancelled(BlendEditError):
    """An edit stopped because its caller asked it to (the web editor's Cancel, a closed tab);
    raised at the next checkpoint of whatever stage it is in (:mod:`blendedit.frame.stop`)."""


class TimeLimitError(BlendEditError):
    """An edit stopped because it ran over its time limit (the web editor's ``--max-seconds``)."""


def first_line(error: BaseException, limit: int | None = 200) -> str:
    """What a library's exception says, as the first ``limit`` characters of its first line
    (its type name when it says nothing), for a one-line error of ours."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
