"""The dataset registry: name -> DatasetSpec (a reader listing files, plus what the data is).

Part of the data layer of the reproduction of Lanzino et al., "Faster Than Lies: Real-time Deepfake
Detection using Binary Neural Networks", CVPRW 2024.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bnn.data.dataset import Item
from bnn.registry import Registry


@dataclass(frozen=True)
class Listing:
    """What a reader found for one split.

    Attributes:
        items: ``(path, label)`` pairs, label 1 = fake, 0 = real, in a fixed order.
        roots: Folders the paths live under (for relative-path digests).
        description: Which data this is and where, e.g. ``"COCOFake val2014 at /data/coco"``.
        sources: Per item, where the image comes from (``ffhq``, ``stylegan_ffhq``, a generator
            kind, ...), for per-source metrics; ``None``: ``real`` / ``fake`` by label.
    """

    items: list[Item]
    roots: list[Path]
    description: str
    sources: list[str] | None = None

    def __post_init__(self) -> None:
        if self.sources is not None and len(self.sources) != len(self.items):
            raise ValueError(f"{len(self.sources)} sources for {len(self.items)} items")

    def item_sources(self) -> list[str]:
        """``sources``, or ``real`` / ``fake`` by label when the reader gave none."""
        return list(self.sources) if self.sources is not None else [label_source(label) for _, label in self.items]


def label_source(label: int) -> str:
    """The source of an image whose reader knows no finer origin: ``real`` or ``fake``."""
    return "fake" if label == 1 else "real"


@dataclass(frozen=True)
class DatasetSpec:
    """How to list one named dataset and where users get it.

    Attributes:
        read: ``read(split, root, **params) -> Listing``; ``root`` may be ``None`` (then the
            reader uses ``env_var`` or its own default).
        env_var: Environment variable naming the root folder, or ``None``.
        layout: The expected folder layout, shown in errors.
        source: Where the data comes from (paper and download page), shown in errors.
        check_params: Checks reader parameter values without reading any file (``None``: no
            check), raising ``bnn.errors.KeyedValueError`` naming the parameter; run where the
            parameters are written (``FitConfig``, a study's ``evaluate:`` entries).
    """

    read: Callable[..., Listing]
    env_var: str | None
    layout: str
    source: str
    check_params: Callable[[dict], None] | None = None


DATASETS: Registry[DatasetSpec] = Registry("dataset")
