"""Batch edits from a manifest, on this machine or a Ray cluster, exactly once and resumable.

from blendedit.batch import run_batch, Shared
summary = run_batch("edits.jsonl", "out/", shared=Shared(settings={"num_images": 4}))
"""

from __future__ import annotations

from blendedit.batch.manifest import Row, Shared, read_manifest
from blendedit.batch.run import ENGINES, run_batch
from blendedit.batch.store import BatchStore, Outcome
from blendedit.engine import RayOptions

__all__ = [
    "ENGINES",
    "BatchStore",
    "Outcome",
    "RayOptions",
    "Row",
    "Shared",
    "read_manifest",
    "run_batch",
]
