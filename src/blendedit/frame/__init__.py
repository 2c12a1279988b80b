"""The edit frame every method runs through, and its stages (see :mod:`blendedit.frame.edit`):
the photo as shown (``photo``), its mask (``masks``), the working region (``region``), ranking
(``ranking``), the background (``reconstruct``), measurements (``metrics``) and results
(``results``)."""

from blendedit.frame.edit import (
    EditCore,
    FrameMethod,
    Generated,
    Work,
    photo_mask,
    read_mask,
    run_edit,
)

__all__ = ["EditCore", "FrameMethod", "Generated", "Work", "photo_mask", "read_mask", "run_edit"]
