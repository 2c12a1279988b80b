"""``run_batch``: a manifest of edits through an engine, exactly once, resumable.

The driver reads and checks the manifest, opens the output folder (refusing folders made with other
settings before any work), records rows whose files cannot be read, and hands the rest to an
engine; the engine only moves rows to :func:`~blendedit.batch.worker.process_row` and outcomes back.
The driver appends each outcome to ``summary.jsonl`` as it arrives and rebuilds ``summary.json`` /
``summary.md`` from the row folders at the end.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from blendedit.batch.manifest import Row, Shared, read_manifest
from blendedit.batch.store import BatchStore, Outcome
from blendedit.batch.worker import EditorCache, WorkerSpec, process_row
from blendedit.engine import RayOptions, setup_worker
from blendedit.errors import InputError
from blendedit.frame.judges import parse_judge_models

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")


def _local(rows: list[Row], spec: WorkerSpec) -> Iterator[Outcome]:
    """The local engine: this process, one editor, rows in manifest order."""
    setup_worker(spec.threads, spec.offline)
    cache = EditorCache(spec.device, spec.dtype, spec.judge_models)
    store = BatchStore(spec.out)
    shared = spec.shared_settings()
    for row in rows:
        yield process_row(cache, store, row, shared)


def run_batch(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    shared: Shared | None = None,
    engine: str = "local",
    ray: RayOptions | None = None,
    device: str = "auto",
    dtype: str = "auto",
    threads: int | None = None,
    offline: bool = False,
    judge_models: Sequence[str] = (),
    progress: bool = True,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> dict[str, Any]:
    """Edit every row of ``manifest`` into ``out`` (new, or an earlier run of it to resume) and
    return the summary (``summary.json``'s content).

    Rows already committed with the same settings are skipped; a row folder made with other
    settings stops the run before any work. A row that fails is recorded with its error and the
    run goes on; rerunning retries it. ``engine="ray"`` spreads rows over a Ray cluster
    (``ray`` options); ``"local"`` runs them here and never imports Ray.
    """
    if engine not in ENGINES:
        raise InputError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    if threads is not None and threads < 1:
        raise InputError(f"threads: {threads} must be at least 1")
    parse_judge_models(judge_models)  # a bad NAME=MODEL stops the run before any work
    shared = shared or Shared()
    rows = read_manifest(manifest, shared)
    store = BatchStore(out)
    spec = WorkerSpec(
        str(Path(out).resolve()), shared.to_dict(), device, dtype, threads, offline,
        tuple(judge_models),
    )  # fmt: skip
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    t0 = time.perf_counter()
    with store.session():
        done, todo = store.check(rows)
        bad = [r for r in todo if r.problem]
        todo = [r for r in todo if not r.problem]
        if done:
            logger.info("%d of %d rows already done in %s", len(done), len(rows), out)
        # The driver's bar: rows done and failed, rows/s and ETA.
        bar = tqdm(total=len(bad) + len(todo), desc="batch", unit="row", disable=not progress)
        counts = {"done": 0, "exists": 0, "failed": 0}

        def take(o: Outcome) -> None:
            store.record(o, run_id)
            counts[o.status] += 1
            bar.set_postfix(done=counts["done"], failed=counts["failed"], refresh=False)
            bar.update(1)
            if on_outcome is not None:
                on_outcome(o)

        extra: dict[str, Any] = {}
        try:
            for row in bad:
                take(Outcome(row.key, row.index, "failed", row.problem))
            if todo:
                outcomes: Iterable[Outcome]
                if engine == "local":
                    outcomes = _local(todo, spec)
                else:
                    from blendedit.batch.cluster import run_rows

                    outcomes = run_rows(todo, spec, ray or RayOptions(), extra)
                for o in outcomes:
                    take(o)
            store.clean()
        finally:
            bar.close()
            elapsed = time.perf_counter() - t0
            summary = store.summarize(
                rows,
                {
                    "engine": engine,
                    "last_run": {
                        "id": run_id,
                        "seconds": round(elapsed, 3),
                        "skipped_done": len(done),
                        **counts,
                        **extra,
                    },
                    "settings": asdict(shared),
                },
            )
    return summary
