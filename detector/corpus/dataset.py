"""A torch ``Dataset`` over a corpus, reading through the one data path (:mod:`detector.data`).

A file that fails to load does not crash a DataLoader worker: the sample comes back as an error
record, and :func:`collate_skip_errors` drops it from the batch and reports it by name and reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from detector.corpus.manifest import Corpus
from detector.data import decode_array, to_tensor
from detector.io import DEFAULT_MAX_PIXELS, ImageLoadError

Transform = Callable[..., Any]


class CorpusDataset(Dataset):
    """Samples ``{"image", "target", "generator", "index"}``; ``image`` is a float CHW tensor.

    ``transform`` is an albumentations transform (called as ``transform(image=array)``) or any
    callable taking and returning an ``H x W x 3`` uint8 array.
    """

    def __init__(
        self,
        corpus: Corpus,
        transform: Transform | None = None,
        generators: Sequence[str] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.corpus = corpus
        self.transform = transform
        self.max_pixels = max_pixels
        names = list(generators) if generators is not None else ["real", *corpus.generators]
        self.generator_index = {name: i for i, name in enumerate(names)}

    def __len__(self) -> int:
        return len(self.corpus.records)

    def _apply(self, array: np.ndarray) -> np.ndarray:
        if self.transform is None:
            return array
        try:
            out = self.transform(image=array)
        except TypeError:
            return self.transform(array)
        return out["image"] if isinstance(out, dict) else out

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.corpus.records[index]
        path = self.corpus.resolve(record)
        try:
            # the scoring decode (reduced above KEEP_PIXELS), with no minimum side: a corpus is trusted
            array = decode_array(path, max_pixels=self.max_pixels, min_side=1)
        except ImageLoadError as exc:
            return {"index": index, "error": f"{exc.path}: {exc.reason}"}
        image = self._apply(array)
        return {
            "image": image if isinstance(image, torch.Tensor) else to_tensor(image),
            "target": record.target,
            "generator": self.generator_index.get(record.generator, -1),
            "index": index,
        }


def collate_skip_errors(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good samples; list the failed ones under ``"errors"`` as ``(index, message)``."""
    good = [s for s in samples if "error" not in s]
    errors = [(s["index"], s["error"]) for s in samples if "error" in s]
    batch: dict[str, Any] = {"errors": errors}
    if good:
        batch["image"] = torch.stack([s["image"] for s in good])
        batch["target"] = torch.tensor([s["target"] for s in good], dtype=torch.long)
        batch["generator"] = torch.tensor([s["generator"] for s in good], dtype=torch.long)
        batch["index"] = torch.tensor([s["index"] for s in good], dtype=torch.long)
    return batch
