"""``blendedit batch --engine ray``: the manifest's rows on a Ray cluster (:mod:`blendedit.engine`).

Only a transport: each actor runs :func:`~blendedit.batch.worker.process_row` on the rows it is
given and returns the small :class:`~blendedit.batch.store.Outcome`; the files are written by the
actor straight into the shared output folder (committed once, see ``blendedit.batch.store``), and
the driver streams the outcomes into ``summary.jsonl`` and its progress bar.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from blendedit.batch.manifest import Row
from blendedit.batch.store import BatchStore, Outcome
from blendedit.batch.worker import EditorCache, WorkerSpec, process_row
from blendedit.engine import RayOptions, ray_pool, setup_worker


class RayWorker:
    """The callable class of the actor pool: one per worker process, its editor loaded on the
    first row and kept."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = WorkerSpec(**spec)
        setup_worker(self.spec.threads, self.spec.offline)
        self.cache = EditorCache(self.spec.device, self.spec.dtype, self.spec.judge_models)
        self.store = BatchStore(self.spec.out)
        self.shared = self.spec.shared_settings()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for text in batch["row"]:
            row = Row.from_dict(json.loads(str(text)))
            o = process_row(self.cache, self.store, row, self.shared)
            out.append(json.dumps(dataclasses.asdict(o)))
        return {"outcome": np.array(out, dtype=object)}


def run_rows(
    rows: list[Row], spec: WorkerSpec, opts: RayOptions, extra: dict[str, Any]
) -> Iterator[Outcome]:
    """Outcomes of ``rows`` as the workers finish them (any order). ``extra`` receives the
    engine's numbers (workers, GPUs, seconds to connect) for the summary."""
    with ray_pool(opts) as pool:
        extra.update(ray_workers=pool.workers, ray_gpus_per_worker=pool.gpus_per_worker,
                     ray_connect_s=round(pool.connect_s, 3))  # fmt: skip
        items = [json.dumps(r.to_dict()) for r in rows]
        spec_kwargs = {"spec": dataclasses.asdict(spec)}
        for text in pool.stream(RayWorker, "row", items, spec_kwargs, 2):
            yield Outcome(**json.loads(text))
