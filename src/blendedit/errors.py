"""Errors that blendedit reports to a person: one line, naming the argument and the value."""

from __future__ import annotations

import re


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


# An absolute path (POSIX, home-relative or Windows): a separator not preceded by a name, a URL's
# "://" or another separator, then at least one folder and the last part.
_PATH = re.compile(
    r"""(?<![\w:/\\.~])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\'"`<>|(),;]+)*[/\\]([^\s/\\'"`<>|(),;]+)"""
)


def scrub_paths(text: str) -> str:
    """``text`` with every absolute path shortened to its last part (``/tmp/gradio/ab12/cat.png``
    -> ``cat.png``): what the server says never shows where its files are."""

    def last(m: re.Match[str]) -> str:
        return m.group(1)

    return _PATH.sub(last, text)


def one_line(e: BaseException) -> str:
    """An error as the page shows it: one line, at most 300 characters, no server path."""
    text = scrub_paths(" ".join(str(e)[:4000].split())) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
