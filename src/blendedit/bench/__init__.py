"""``blendedit bench``: time a ranked batch edit end to end and per stage, next to diffusers'
inpaint pipeline of the model's family on the same components, with random weights (speed does not
depend on the weights) of full-size architectures, or tiny ones for a CPU.

The presets are the families' own catalogue entries (``Backbone.catalogue``, collected in
``catalogue``); ``build`` makes them with random weights by the family's builder, ``measure`` times
them (``timing``: the clocks; ``reference``: diffusers' pipeline), ``report`` writes the tables,
``photos`` times one edit against the photo's size, ``cli`` is the command.
"""

from __future__ import annotations

from blendedit.bench.build import build_backbone, build_editor
from blendedit.bench.catalogue import ARCHITECTURES, Architecture
from blendedit.bench.measure import PEAK_TFLOPS, BenchResult, run_bench, unet_flops
from blendedit.bench.report import append_report, realtime_line, stages_table, table
from blendedit.latent.backbones.common import write_bert_vocab, write_char_vocab

__all__ = [
    "ARCHITECTURES",
    "PEAK_TFLOPS",
    "Architecture",
    "BenchResult",
    "append_report",
    "build_backbone",
    "build_editor",
    "realtime_line",
    "run_bench",
    "stages_table",
    "table",
    "unet_flops",
    "write_bert_vocab",
    "write_char_vocab",
]
