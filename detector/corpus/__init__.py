"""Corpora of real and generated images: format, validation, splits, summary, torch dataset."""

from detector.corpus.manifest import (
    EXCLUDED,
    LABELS,
    REAL_GENERATOR,
    SPLITS,
    Corpus,
    CorpusError,
    Record,
    load_corpus,
    read_manifest,
    records_from_folder,
    write_manifest,
)
from detector.corpus.split import SplitConfig, assign_splits, check_no_group_leak
from detector.corpus.summary import CorpusSummary, summarize
from detector.corpus.validate import validate_corpus

__all__ = [
    "EXCLUDED",
    "LABELS",
    "REAL_GENERATOR",
    "SPLITS",
    "Corpus",
    "CorpusError",
    "CorpusSummary",
    "Record",
    "SplitConfig",
    "assign_splits",
    "check_no_group_leak",
    "load_corpus",
    "read_manifest",
    "records_from_folder",
    "summarize",
    "validate_corpus",
    "write_manifest",
]
