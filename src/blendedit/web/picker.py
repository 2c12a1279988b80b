"""The web editor's model picker: the models a server offers (``blendedit serve --model A --model
B``, ``--models-dir DIR``), each checked at start and shown by its name and detected family, and
the switch from one to another (one model in memory at a time by default).

Pure logic, no web imports: :class:`ModelChoices` is what the operator offered, by name (a client
chooses a name, never a path or hub id); :class:`Switcher` holds the loaded editors and swaps the
current one; the handlers (:mod:`~blendedit.web.handlers`) turn a switch into the page's updates.
"""

from __future__ import annotations

import gc
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blendedit.errors import BlendEditError, InputError, one_line
from blendedit.models import SINGLE_FILE_SUFFIXES, check_hub_id

MODEL_FILES = SINGLE_FILE_SUFFIXES  # the single files a --models-dir may hold


@dataclass(frozen=True)
class ModelChoice:
    """One model the page offers: ``source`` as the operator gave it (hub id, folder or file),
    ``label`` as the page shows it (its name, no server path, and its family when detected)."""

    source: str | None  # None: the method's default model
    label: str
    family: str = ""  # the detected family ("" for the pixel method or a hub id not cached)


def _family(source: str, method: str, offline: bool) -> str:
    """The family of a latent model, detected without loading it; "" where it cannot be told
    before loading (a hub id not in the cache). A local model that is none is one line."""
    if method != "latent":
        return ""
    from blendedit.latent.backbones import detect_family

    if Path(source).expanduser().exists():
        return detect_family(Path(source).expanduser())
    try:
        return detect_family(source, local_files_only=True)
    except BlendEditError:
        if offline:
            raise
        return ""  # told when it loads


def check_source(source: str, method: str, arg: str = "model") -> None:
    """A model the operator named: an existing folder or file, else a hub id ('owner/name');
    the pixel methods take a checkpoint file. One line naming ``arg`` otherwise."""
    path = Path(source).expanduser()
    if path.exists():
        if method != "latent" and not path.is_file():
            raise InputError(f"{arg}: {source!r} is not a checkpoint file")
        return
    if method != "latent":
        raise InputError(f"{arg}: {source!r} does not exist")
    check_hub_id(source, arg)


def models_in(folder: str | os.PathLike[str], method: str) -> list[str]:
    """The models of a ``--models-dir``: each diffusers folder (with ``model_index.json``) and
    each checkpoint file in it, by name; the pixel methods take the checkpoint files only."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"models_dir: {str(folder)!r} is not a folder")
    found = []
    for p in sorted(root.iterdir(), key=lambda p: p.name.lower()):
        if p.name.startswith("."):
            continue
        is_model_file = p.is_file() and p.suffix.lower() in MODEL_FILES
        if is_model_file or (method == "latent" and (p / "model_index.json").is_file()):
            found.append(str(p))
    if not found:
        kinds = "checkpoint files" if method != "latent" else "diffusers folders or checkpoints"
        raise InputError(f"models_dir: {str(folder)!r} holds no {kinds}")
    return found


def _name(source: str) -> str:
    """What the page calls a model: a hub id as it is, a folder's or a file's name."""
    path = Path(source).expanduser()
    if path.exists():
        return path.name or path.resolve().name or str(source)  # as named (a link: its own)
    return source


def _choice(
    arg: str, source: str | None, method: str, offline: bool, taken: set[str]
) -> ModelChoice:
    """One offered model, checked, labelled by its name and family (told apart from a
    ``taken`` label of the same name by a number)."""
    if source is None:  # the method has no default model: told when it loads
        return ModelChoice(None, "default")
    check_source(source, method, arg)
    family = _family(source, method, offline)
    name = _name(source)
    label, n = name, 2
    while (f"{label} ({family})" if family else label) in taken:  # two folders of one name
        label, n = f"{name} #{n}", n + 1
    return ModelChoice(source, f"{label} ({family})" if family else label, family)


@dataclass(frozen=True)
class ModelChoices:
    """The models a page may switch to, first the one loaded at start; the page names them by
    ``label`` only."""

    choices: tuple[ModelChoice, ...] = ()
    skipped: tuple[str, ...] = ()  # why each entry of --models-dir that is no model was left out

    @classmethod
    def from_options(
        cls,
        models: Sequence[str | None] = (),
        models_dir: str | None = None,
        *,
        method: str = "latent",
        default: str = "",
        offline: bool = False,
    ) -> ModelChoices:
        """The ``--model`` models (repeatable; none: the method's default) then those of
        ``--models-dir``, each checked (exists or a hub id; a local latent model's family
        detected), each once. A ``--model`` that fails is one line; an entry of the folder
        that is no model blendedit knows is left out (``skipped`` says why), unless none is
        left."""
        given = [("model", m or default or None) for m in models] or [("model", default or None)]
        if models_dir is not None:
            given = given[: len(models)] + [
                ("models_dir", m) for m in models_in(models_dir, method)
            ]
        out: list[ModelChoice] = []
        seen: set[str] = set()
        skipped: list[str] = []
        for arg, source in given:
            local = source is not None and Path(source).expanduser().exists()
            key = str(Path(source).expanduser().resolve()) if local else str(source)
            if key in seen:
                continue
            seen.add(key)
            try:
                out.append(_choice(arg, source, method, offline, {c.label for c in out}))
            except BlendEditError as e:
                if arg != "models_dir":
                    raise
                skipped.append(f"models_dir: left out {one_line(e)}")
        if not out:
            raise InputError(f"models_dir: {str(models_dir)!r} holds no model blendedit knows")
        return cls(tuple(out), tuple(skipped))

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.choices]

    def by_label(self, label: Any) -> ModelChoice:
        """The choice the page named; anything else is one line (never a path or hub id)."""
        for c in self.choices:
            if c.label == label:
                return c
        shown = str(label)[:60]
        raise InputError(
            f"model: {shown!r} is not a model of this server; offered: {', '.join(self.labels)}"
        )


def release() -> None:
    """Free the memory of the editors nothing holds any more (their device's too)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Switcher:
    """The loaded editors: the current one, and at most ``keep - 1`` others kept loaded (least
    recently used first out). ``load(choice)`` loads a choice's editor on the device, with the
    one-line errors of loading."""

    choices: ModelChoices
    load: Callable[[ModelChoice], Any]
    keep: int = 1  # editors in memory at once
    current: ModelChoice | None = None
    loaded: OrderedDict[str, Any] = field(default_factory=OrderedDict)  # label -> editor

    def start(self, editor: Any, choice: ModelChoice | None = None) -> None:
        """The editor loaded at start, as the choice it is (default: the first)."""
        self.current = choice or self.choices.choices[0]
        self.loaded[self.current.label] = editor

    @property
    def editor(self) -> Any:
        """The current editor; one line when none is loaded (a switch and the reload of the
        previous model both failed)."""
        if self.current is None or self.current.label not in self.loaded:
            raise InputError("model: no model is loaded (the last one failed); choose one")
        return self.loaded[self.current.label]

    def switch(self, choice: ModelChoice, say: Callable[[str], None] = lambda m: None) -> Any:
        """Make ``choice`` current and return its editor. With ``keep`` 1 the current editor is
        let go first (one model in memory); when the chosen one fails to load, the previous one
        is loaded again (with more kept, it was never let go), and the failure is raised as one
        line (:class:`SwitchError`)."""
        previous = self.current
        if choice.label in self.loaded:
            self.loaded.move_to_end(choice.label)
            self.current = choice
            return self.editor
        while len(self.loaded) >= max(1, self.keep):  # make room: least recently used first
            label = next(iter(self.loaded))
            say(f"unloading {label}")
            del self.loaded[label]
            release()
        try:
            say(f"loading {choice.label}")
            editor = self.load(choice)
        except Exception as e:
            raise SwitchError(
                self._back_to(previous, f"{choice.label} did not load ({one_line(e)})", say)
            ) from None
        self.loaded[choice.label] = editor
        self.current = choice
        return editor

    def _back_to(
        self, previous: ModelChoice | None, failed: str, say: Callable[[str], None]
    ) -> str:
        """After a failed load: the previous model current again (loaded again if it was let
        go); the line that says so."""
        self.current = None
        if previous is not None and previous.label not in self.loaded:
            try:
                say(f"loading {previous.label} again")
                self.loaded[previous.label] = self.load(previous)
            except Exception as e:
                return f"model: {failed}, nor {previous.label} again ({one_line(e)}); choose one"
        if previous is None:
            return f"model: {failed}; no model is loaded, choose one"
        self.current = previous
        return f"model: {failed}; still on {previous.label}"


class SwitchError(InputError):
    """A model that did not load; the previous one is current again."""


__all__ = [
    "ModelChoice",
    "ModelChoices",
    "SwitchError",
    "Switcher",
    "check_source",
    "models_in",
    "release",
]
