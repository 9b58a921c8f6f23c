"""The dataset every reader returns: a list of (path, label) files, label 1 = fake and 0 = real,
plus the collate function that drops unreadable files instead of crashing an epoch.

Part of the data layer of the reproduction of Lanzino et al., "Faster Than Lies: Real-time Deepfake
Detection using Binary Neural Networks", CVPRW 2024.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from bnn.data.layout import display_path, path_bytes
from bnn.data.transforms import UnreadableImage, load_rgb

log = logging.getLogger(__name__)

Item = tuple[str, int]
Sample = tuple[Tensor, int, str]


class ImageDataset(Dataset):
    """Image files with real/fake labels, decoded and preprocessed on access.

    Args:
        items: ``(path, label)`` pairs, label 1 = fake, 0 = real.
        name: Registered dataset name (``"cocofake"``, ...).
        split: ``"train"``, ``"val"`` or ``"test"``.
        description: What this data is and where it lies; ``describe()`` adds the counts.
        roots: Folders the paths live under; ``digest()`` hashes paths relative to them.
        transform: RGB PIL image -> float tensor (3, R, R) in [0, 1].
        sources: Per item, where the image comes from (``Listing.sources``); default ``real`` /
            ``fake`` by label.

    Attributes:
        items: The ``(path, label)`` list, in a fixed order.
        sources: One source name per item (the reader's, e.g. DFFD's ``stylegan_ffhq``).
    """

    def __init__(
        self,
        items: Sequence[Item],
        *,
        name: str,
        split: str,
        description: str,
        roots: Sequence[str | os.PathLike],
        transform: Callable[[Image.Image], Tensor],
        sources: Sequence[str] | None = None,
    ) -> None:
        self.items: list[Item] = [(str(path), int(label)) for path, label in items]
        if sources is not None and len(sources) != len(self.items):
            raise ValueError(f"{len(sources)} sources for {len(self.items)} items")
        self.sources: list[str] = (
            [str(s) for s in sources] if sources is not None else ["fake" if y else "real" for _, y in self.items]
        )
        self.name = name
        self.split = split
        self.description = description
        self.roots = [Path(r) for r in roots]
        self.transform = transform
        self._warned: set[str] = set()

    @property
    def root(self) -> Path | None:
        """The first root (the only one for every reader except ``cocofake``)."""
        return self.roots[0] if self.roots else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample | None:
        """Returns ``(image (3, R, R) in [0, 1], label, path)``, or ``None`` for an ``UnreadableImage``
        (logged once per file with its reason)."""
        path, label = self.items[index]
        try:
            image = load_rgb(path)
        except UnreadableImage as error:
            if path not in self._warned:
                self._warned.add(path)
                log.warning("skipping unreadable image %s: %s", path, error.reason)
            return None
        return self.transform(image), label, path

    def source_by_path(self) -> dict[str, str]:
        """``{path: source}`` for every item (for per-source metrics of predictions)."""
        return {path: source for (path, _), source in zip(self.items, self.sources, strict=True)}

    def perturbed(self, perturbation: Callable[[Image.Image], Image.Image], note: str) -> ImageDataset:
        """The same items with ``perturbation`` applied to each decoded RGB image before the
        preprocessing (so before the detector computes its extra channels); ``note`` (e.g.
        ``JPEG quality 75``) is added to the description."""
        return ImageDataset(
            self.items, name=self.name, split=self.split, description=f"{self.description}, {note}",
            roots=self.roots, transform=Perturbed(perturbation, self.transform), sources=self.sources,
        )

    def labels(self) -> list[int]:
        """Labels in item order."""
        return [label for _, label in self.items]

    def class_counts(self) -> dict[str, int]:
        """``{"real": n0, "fake": n1}``."""
        fake = sum(self.labels())
        return {"real": len(self.items) - fake, "fake": fake}

    def describe(self) -> str:
        """One line saying which data this is, where it lies and how many images of each class."""
        counts = self.class_counts()
        return (
            f"{self.description}; split {self.split}: {len(self)} images "
            f"({counts['real']} real, {counts['fake']} fake), digest {self.digest()}"
        )

    def digest(self) -> str:
        """Short sha256 (16 hex digits) over the sorted relative paths and labels."""
        lines = sorted(f"{self._relative(path)}\t{label}" for path, label in self.items)
        return hashlib.sha256(path_bytes("\n".join(lines))).hexdigest()[:16]

    def _relative(self, path: str) -> str:
        """``"<root index>/<path relative to that root>"``, or the path itself outside all roots."""
        for i, root in enumerate(self.roots):
            try:
                return f"{i}/{Path(path).relative_to(root).as_posix()}"
            except ValueError:
                continue
        return Path(path).as_posix()

    def subset(self, indices: Sequence[int], note: str | None = None) -> ImageDataset:
        """The items at ``indices`` (same transform); ``note`` is added to the description."""
        description = self.description if note is None else f"{self.description}, {note}"
        return ImageDataset(
            [self.items[i] for i in indices],
            name=self.name,
            split=self.split,
            description=description,
            roots=self.roots,
            transform=self.transform,
            sources=[self.sources[i] for i in indices],
        )

    def subsample(self, max_samples: int, seed: int = 0) -> ImageDataset:
        """At most ``max_samples`` items, stratified by label and chosen with a seeded shuffle.

        Each class keeps its share (rounded, at least one image when the class is present and
        ``max_samples >= 2``); the chosen items keep their original order.
        """
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        if max_samples >= len(self):
            return self
        by_label = {0: [], 1: []}
        for i, (_, label) in enumerate(self.items):
            by_label[label].append(i)
        n_fake = round(max_samples * len(by_label[1]) / len(self))
        if max_samples >= 2 and by_label[0] and by_label[1]:
            n_fake = min(max(n_fake, 1), max_samples - 1)
        takes = {0: max_samples - n_fake, 1: n_fake}
        rng = random.Random(seed)
        chosen: list[int] = []
        for label, indices in by_label.items():
            shuffled = list(indices)
            rng.shuffle(shuffled)
            chosen.extend(shuffled[: takes[label]])
        note = f"subsample of {max_samples} of {len(self)} (stratified, seed={seed})"
        return self.subset(sorted(chosen), note=note)


class Perturbed:
    """``transform(perturbation(image))``: a picklable composition (DataLoader workers pickle it)."""

    def __init__(self, perturbation: Callable[[Image.Image], Image.Image], transform: Callable[[Image.Image], Tensor]):
        self.perturbation, self.transform = perturbation, transform

    def __call__(self, image: Image.Image) -> Tensor:
        return self.transform(self.perturbation(image))


# The most of a split's images that may be unreadable before a run stops: a few bad files in a
# scraped data set are normal, a tenth means the folder or the decoder is wrong.
MAX_UNREADABLE_FRACTION = 0.10


class UnreadableSplitError(ValueError):
    """Too many of a split's images (or every image of one class) could not be read."""


def check_readable(dataset: ImageDataset, read_fake: int, read_total: int, skipped: int) -> None:
    """Fails a pass over ``dataset`` whose unreadable images exceed ``MAX_UNREADABLE_FRACTION``, or
    that read no image of a class the split has.

    Args:
        dataset: The split that was read.
        read_fake, read_total: Images decoded in the pass (fake ones, all).
        skipped: Images skipped in the pass as unreadable.

    Raises:
        UnreadableSplitError: One line with the split, the counts and up to three example files
            with their reasons.
    """
    if skipped == 0:
        return
    attempted = read_total + skipped
    fraction = skipped / attempted
    present = dataset.class_counts()
    read = {"real": read_total - read_fake, "fake": read_fake}
    lost = [name for name in ("real", "fake") if present[name] and not read[name]]
    if fraction <= MAX_UNREADABLE_FRACTION and not lost:
        return
    examples = "; ".join(f"{display_path(path)}: {reason}" for path, reason in unreadable_examples(dataset, 3))
    lost_note = f", no {' or '.join(lost)} image at all" if lost else ""
    raise UnreadableSplitError(
        f"{dataset.split} split of {dataset.name}: {skipped} of {attempted} images could not be read "
        f"({fraction:.0%}{lost_note}; at most {MAX_UNREADABLE_FRACTION:.0%} may be skipped); e.g. {examples or '-'}"
    )


def unreadable_examples(dataset: ImageDataset, limit: int, tries: int = 1000) -> list[tuple[str, str]]:
    """Up to ``limit`` (path, reason) of unreadable items, trying at most ``tries`` items."""
    out = []
    for path, _ in dataset.items[:tries]:
        try:
            load_rgb(path)
        except UnreadableImage as error:
            out.append((path, error.reason))
            if len(out) == limit:
                break
    return out


def collate_skip(
    batch: Sequence[Sample | None],
) -> tuple[Tensor, Tensor, list[str], int]:
    """DataLoader ``collate_fn`` that drops unreadable items (``None``) and counts them.

    Returns:
        ``(images (B, 3, R, R), labels (B,) float, paths, skipped)``. When every item is ``None``
        the tensors are empty (``images`` (0, 3, 0, 0), ``labels`` (0,)) and ``skipped`` is the
        batch size, so callers test ``len(labels) == 0``.
    """
    kept = [sample for sample in batch if sample is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0, 3, 0, 0), torch.empty(0), [], skipped
    images = torch.stack([image for image, _, _ in kept])  # (B, 3, R, R)
    labels = torch.tensor([label for _, label, _ in kept], dtype=torch.float32)  # (B,)
    paths = [path for _, _, path in kept]
    return images, labels, paths, skipped
