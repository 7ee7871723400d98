"""Several detection datasets as one: categories, labels and ids offset so none collide.

A mixture trains one detector on several domains (the app's default models see synthetic shapes
and BCCD cells). Dataset ``k``'s category ids become ``id + k * ID_STRIDE`` and its image ids
``id + k * ID_STRIDE``, so COCO evaluation of the mixture stays well defined; labels are
contiguous over all categories, in dataset order.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence

from torch import Tensor

from workbench.data.dataset import Category, DetectionDataset, Instance, LoadReport
from workbench.types import Target

ID_STRIDE = 1_000_000


class MixedDataset:
    """The concatenation of ``datasets`` (each a DetectionDataset)."""

    def __init__(self, datasets: Sequence[DetectionDataset]):
        if not datasets:
            raise ValueError("a mixture needs at least one dataset")
        self.datasets = list(datasets)
        self.starts = [0]
        for d in self.datasets:
            self.starts.append(self.starts[-1] + len(d))
        self.label_offsets, self.categories = [], []
        for k, d in enumerate(self.datasets):
            self.label_offsets.append(len(self.categories))
            for c in sorted(d.categories, key=lambda c: c.label):
                self.categories.append(
                    Category(c.id + k * ID_STRIDE, c.name, len(self.categories), c.split)
                )
        self.report = LoadReport()
        for d in self.datasets:
            self.report.counts.update(d.report.counts)
            self.report.messages.extend(d.report.messages)

    def __len__(self) -> int:
        return self.starts[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a mixture of {len(self)} images")
        k = bisect.bisect_right(self.starts, index) - 1
        return k, index - self.starts[k]

    def _shift(self, k: int, target: Target) -> Target:
        return dataclasses.replace(
            target,
            labels=target.labels + self.label_offsets[k],
            image_id=target.image_id + k * ID_STRIDE,
        )

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        k, i = self._locate(index)
        image, target = self.datasets[k][i]
        return image, self._shift(k, target)

    def load_image(self, index: int) -> Tensor:
        k, i = self._locate(index)
        return self.datasets[k].load_image(i)

    def target(self, index: int) -> Target:
        k, i = self._locate(index)
        return self._shift(k, self.datasets[k].target(i))

    def image_info(self, index: int) -> dict:
        k, i = self._locate(index)
        info = dict(self.datasets[k].image_info(i))
        info["id"] = info["id"] + k * ID_STRIDE
        return info

    def instances(self) -> list[Instance]:
        out = []
        for k, d in enumerate(self.datasets):
            for inst in d.instances():
                out.append(
                    dataclasses.replace(
                        inst,
                        image_index=inst.image_index + self.starts[k],
                        image_id=inst.image_id + k * ID_STRIDE,
                        label=inst.label + self.label_offsets[k],
                    )
                )
        return out

    @property
    def category_id_of_label(self) -> list[int]:
        return [c.id for c in self.categories]
