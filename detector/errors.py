"""The project's one base error: every user-facing failure is a :class:`DetectorError`.

A caller (the CLI, the service, a script scoring a million files) catches ``DetectorError`` to report a
bad input, bundle, key or manifest in one line and go on, and lets anything else (a bug) surface as a
traceback. Each module keeps its own subclass (``ImageLoadError``, ``BundleError``, ``CorpusError``...)
so the message says which part refused what; the subclasses also keep their historical builtin base
(``ValueError``, ``RuntimeError``) so existing ``except ValueError`` code still catches them.
"""

from __future__ import annotations


class DetectorError(Exception):
    """A clear, user-facing refusal: bad input, bad bundle, bad key, bad manifest, bad output path."""


__all__ = ["DetectorError"]
