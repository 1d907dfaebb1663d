"""Package layout rules: one name per class, every user-facing error a DetectorError."""

from __future__ import annotations

import ast
import importlib
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "detector"
#: Errors that signal a bug, not something a user did: they stay plain builtins on purpose.
INTERNAL = {"BranchError"}


def _classes() -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                found.append((module, node.name))
    return found


def test_no_two_classes_share_a_name():
    counts = Counter(name for _module, name in _classes())
    assert [name for name, n in counts.items() if n > 1] == []


def test_every_error_class_is_a_detector_error():
    from detector.errors import DetectorError

    for module, name in _classes():
        if name.endswith("Error") and name not in INTERNAL:
            cls = getattr(importlib.import_module(module), name)
            assert issubclass(cls, DetectorError), f"{module}.{name}"
