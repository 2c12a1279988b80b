"""The bench's presets: every registered family's catalogue entries (``Backbone.catalogue``: the
published models' parts with their configs, and the test suite's tiny shapes), collected when
asked, so a family registered at run time (``register_family``) brings its own."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace

from blendedit.latent.backbones import FAMILIES
from blendedit.latent.backbones.parts import Architecture

__all__ = ["ARCHITECTURES", "Architecture", "Catalogue"]


class Catalogue(Mapping[str, Architecture]):
    """Preset name -> :class:`Architecture` (its ``family`` filled in): the published models
    first, then the tiny CPU shapes, each in the registry's family order."""

    def _entries(self) -> dict[str, Architecture]:
        every = [
            (name, replace(arch, family=cls.family))
            for cls in FAMILIES.values()
            for name, arch in cls.catalogue.items()
        ]
        return dict(sorted(every, key=lambda entry: not entry[1].source))  # a stable sort

    def __getitem__(self, name: str) -> Architecture:
        return self._entries()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())


ARCHITECTURES = Catalogue()
