"""Named bundles, like open_clip's pretrained tags: ``load_detector("default")`` or ``--model default``.

A name resolves to a bundle folder that ships with the package (``checkpoints/<name>/``, found through
``importlib.resources`` so it works from a wheel as from a checkout) or to one the user keeps in
``$DETECTOR_MODELS/<name>/``. A path to a bundle folder works wherever a name does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from detector.bundle.detector import MANIFEST, BundleError

#: The bundle ``load_detector()`` and ``detector score`` use when no model is named.
DEFAULT_MODEL = "default"


def shipped_root() -> Path:
    """The shipped checkpoints folder (``detector/checkpoints`` links to the checkout's ``checkpoints/``)."""
    return Path(str(resources.files("detector").joinpath("checkpoints")))


def _roots() -> list[tuple[str, Path]]:
    roots = [("shipped", shipped_root())]
    if os.environ.get("DETECTOR_MODELS"):
        roots.append(("user", Path(os.environ["DETECTOR_MODELS"])))
    return roots


@dataclass(frozen=True)
class ModelCard:
    """What ``detector models list`` shows about one named bundle."""

    name: str
    path: Path
    origin: str  # shipped or user
    summary: str

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "origin": self.origin, "summary": self.summary}


def _summary(folder: Path) -> str:
    card = folder / "model_card.json"
    if card.is_file():
        try:
            return str(json.loads(card.read_text()).get("summary", ""))
        except (OSError, json.JSONDecodeError):
            return "(unreadable model_card.json)"
    return ""


def list_models() -> list[ModelCard]:
    """Every named bundle available here (a folder with a ``bundle.json`` under a models root)."""
    cards = []
    for origin, root in _roots():
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if (folder / MANIFEST).is_file():
                cards.append(ModelCard(folder.name, folder, origin, _summary(folder)))
    return cards


def resolve_model(model: str | os.PathLike | None = None) -> Path:
    """A bundle folder for ``model``: a bundle folder path, else a name from :func:`list_models`."""
    model = DEFAULT_MODEL if model is None else model
    path = Path(model)
    if (path / MANIFEST).is_file():
        return path
    for card in list_models():  # a name wins over a same-named folder that is not a bundle
        if card.name == str(model):
            return card.path
    if path.is_dir():
        return path  # not a bundle: loading it says so, naming the folder
    names = ", ".join(c.name for c in list_models()) or "none"
    raise BundleError(
        f"{str(model)!r} is not a detector bundle folder nor a model name (available models: {names}; "
        "`detector models list`)"
    )
