"""The output folder of a batch run: one folder per row, committed once, and the summaries.

Layout of ``out``::

    <key>/               one row: NN-seedS.png (rank NN) and result.json (written last)
    .partial/            rows being written: <key>.<host>.<pid>.<random>/, renamed to <key>/ whole
    .errors/<key>.json   the last failure of a row that has no folder (retried by the next run)
    .lock                held by the driver of a run (a second driver on the same folder stops)
    summary.jsonl        one line per row finished or failed, appended as they come (the log)
    summary.json / .md   the state of every manifest row, rebuilt from the row folders

Exactly once. A row is done when ``<key>/result.json`` exists. A worker writes a row into its own
folder under ``.partial`` and renames it to ``<key>`` in one step; the rename fails when ``<key>``
exists (a directory is never renamed onto a non-empty one), so a row retried after a worker died,
or run by two workers at once, is committed once and the other copy is dropped. A killed worker or
driver leaves at most a ``.partial`` folder, which the next run removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blendedit.batch.manifest import Row
from blendedit.errors import InputError
from blendedit.io import check_writable, read_json, save_json, write_text

PARTIAL, ERRORS, LOCK = ".partial", ".errors", ".lock"
RESULT = "result.json"


@dataclass
class Outcome:
    """What a worker reports for one row (small: it travels back to the driver)."""

    key: str
    index: int
    status: str  # "done" (committed now), "exists" (already committed), "failed"
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""  # host:pid
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "row": self.index,
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "worker": self.worker,
            "files": self.files,
        }


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class BatchStore:
    """The run folder ``out``, shared by the driver and every worker (shared storage on a
    cluster). Workers use only :meth:`state` and :meth:`commit`."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self._lock: Any = None

    # -- per row (driver and workers) ------------------------------------------------------
    def row_dir(self, row: Row) -> Path:
        return self.out / row.key

    def state(self, row: Row) -> str:
        """ "done" when the row's folder is committed with the same fingerprint, "todo" when there
        is none; a folder made with other settings raises (never reused, never overwritten)."""
        d = self.row_dir(row)
        path = d / RESULT
        if not path.is_file():
            if d.exists():
                raise InputError(
                    f"out: {str(d)!r} is in the way of {row.name} and was not made by a batch run"
                )
            return "todo"
        try:
            report = read_json(path)
            old = report.get("batch", {}).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            report, old = {}, None
        if old != row.fingerprint:
            was = report.get("settings", {}) if isinstance(report, dict) else {}
            diff = [k for k, v in row.settings.items() if k in was and was[k] != v]
            diff += [k for k in ("prompt", "model", "clip_model") if report.get(k, getattr(row, k)) != getattr(row, k)]  # fmt: skip
            what = f" (differs in {', '.join(diff)})" if diff else ""
            raise InputError(
                f"out: {str(d)!r} holds {row.name}'s edit made with other inputs or "
                f"settings{what}; use another --out, or delete that folder to remake it"
            )
        return "done"

    def commit(self, row: Row, write: Callable[[Path], dict[str, Any]]) -> tuple[str, list[str]]:
        """Make a private folder (its name says which host and process works on the row), run
        ``write(folder)`` (the edit, then its files; returns result.json's content), add
        result.json last, then rename the folder into place. Returns ("done", files), or
        ("exists", []) when another worker committed the row first."""
        if self.state(row) == "done":
            return "exists", []
        host, pid = socket.gethostname(), os.getpid()
        tmp = self.out / PARTIAL / f"{row.key}.{host}.{pid}.{secrets.token_hex(4)}"
        tmp.mkdir(parents=True)
        try:
            report = write(tmp)
            files = sorted(p.name for p in tmp.iterdir())
            save_json(report, tmp / RESULT)
            _fsync_dir(tmp)
            final = self.row_dir(row)
            try:
                os.rename(tmp, final)
            except OSError:
                if (final / RESULT).is_file():  # committed by another worker meanwhile
                    shutil.rmtree(tmp, ignore_errors=True)
                    self.state(row)  # still refuses a folder of other settings
                    return "exists", []
                raise
            _fsync_dir(self.out)
            (self.out / ERRORS / f"{row.key}.json").unlink(missing_ok=True)
            return "done", files
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- driver --------------------------------------------------------------------------
    def open(self) -> None:
        """Create or resume the folder; take the driver lock; remove leftovers of killed runs.
        A folder that cannot be created or written is refused first, in one line."""
        out = self.out
        check_writable(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            f = open(out / LOCK, "a+")  # noqa: SIM115 - held for the whole run
        except OSError as e:
            raise InputError(f"out: cannot create {str(out)!r} ({e.strerror or e})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise InputError(
                f"out: another batch run is writing to {str(out)!r}; wait for it or use another --out"
            ) from None
        self._lock = f
        shutil.rmtree(out / PARTIAL, ignore_errors=True)

    def clean(self) -> None:
        """After a run that finished: drop what killed workers left in ``.partial``."""
        shutil.rmtree(self.out / PARTIAL, ignore_errors=True)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def check(self, rows: Iterable[Row]) -> tuple[list[Row], list[Row]]:
        """(done, todo) before any work: every folder of other settings is refused here."""
        done, todo = [], []
        for row in rows:
            (done if self.state(row) == "done" else todo).append(row)
        return done, todo

    def record(self, outcome: Outcome, run: str) -> None:
        """Append the outcome to summary.jsonl (flushed to disk) and keep a failed row's error."""
        line = json.dumps({"run": run, "time": time.time(), **outcome.to_dict()})
        with open(self.out / "summary.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        if outcome.status == "failed":
            error = {"row": outcome.index, "error": outcome.error}
            save_json(error, self.out / ERRORS / f"{outcome.key}.json", replace=True)

    def summarize(self, rows: list[Row], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rebuild summary.json and summary.md from the row folders (the source of truth) and the
        kept errors; replaces the previous summaries."""
        entries = []
        for row in rows:
            d = self.row_dir(row)
            e: dict[str, Any] = {
                "row": row.index,
                "line": row.line,
                "key": row.key,
                "image": row.image,
                "prompt": row.prompt,
            }
            if (d / RESULT).is_file():
                res = read_json(d / RESULT)
                results = res.get("results", [])
                e.update(
                    status="done",
                    folder=row.key,
                    best=results[0].get("file") if results else None,
                    clip_score=results[0].get("clip_score") if results else None,
                    **{
                        k: results[0][k] for k in ("score", "judges") if results and k in results[0]
                    },
                    seconds=res.get("timings", {}).get("total"),
                )
            else:
                err = self.out / ERRORS / f"{row.key}.json"
                if err.is_file():
                    e.update(status="failed", error=read_json(err).get("error"))
                elif row.problem:
                    e.update(status="failed", error=row.problem)
                else:
                    e.update(status="pending")
            entries.append(e)
        counts = {s: sum(e["status"] == s for e in entries) for s in ("done", "failed", "pending")}
        summary = {"rows": len(entries), **counts, **(extra or {}), "entries": entries}
        text = json.dumps(summary, indent=2, default=str) + "\n"
        write_text(text, self.out / "summary.json", replace=True)  # a rerun rebuilds them
        write_text(_markdown(summary), self.out / "summary.md", replace=True)
        return summary

    @contextlib.contextmanager
    def session(self) -> Iterator[BatchStore]:
        self.open()
        try:
            yield self
        finally:
            self.close()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Batch summary",
        "",
        f"{summary['rows']} rows: {summary['done']} done, {summary['failed']} failed, "
        f"{summary['pending']} pending.",
        "",
        "| row | line | status | folder / error | prompt |",
        "|---:|---:|---|---|---|",
    ]
    for e in summary["entries"]:
        what = e.get("folder") or e.get("error") or ""
        what = str(what).replace("|", "\\|")
        if e.get("judges"):  # --rank other than clip: each judge's score of the best result
            what += " (" + ", ".join(f"{k} {v:.4g}" for k, v in e["judges"].items()) + ")"
        prompt = str(e["prompt"]).replace("|", "\\|")
        lines.append(f"| {e['row']} | {e['line']} | {e['status']} | {what} | {prompt} |")
    return "\n".join(lines) + "\n"
