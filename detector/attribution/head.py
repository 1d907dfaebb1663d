"""Open-set generator attribution on frozen features: a known-generator classifier that can say "unknown".

The head works in a standardised feature space (per-dimension mean/std fixed at fit time) and keeps
four things there:

* a multinomial logistic-regression layer (scikit-learn, balanced class weights) giving top-k generator
  probabilities;
* one prototype (mean) per generator and a shared, shrunk within-class covariance (Ledoit-Wolf
  shrinkage fixed at fit time) for Mahalanobis distances;
* a memory bank of standardised training vectors (at most ``bank_per_class`` per generator) for k-NN
  distances, which also stores what the linear layer and the covariance are fitted on;
* one rejection threshold per unknown score, fitted on known validation samples for a target accept rate.

Four unknown scores are computed side by side, each oriented so that *higher means more likely unknown*:
``msp`` (1 - max softmax), ``energy`` (-logsumexp of the logits), ``mahalanobis`` (distance to the
nearest prototype under the shared covariance) and ``knn`` (cosine distance to the k-th nearest bank
vector). Enrolling a generator from a few vectors adds its prototype and bank rows, recomputes the
covariance and refits only the linear layer on the bank: the backbone is never touched. Everything is
stored as safetensors plus a JSON header (no pickle).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import DetectorError
from detector.io.tensors import load_format, save_arrays

UNKNOWN_SCORES = ("msp", "energy", "mahalanobis", "knn")
UNKNOWN = "unknown"
FORMAT = "detector.attribution.head/1"


class AttributionError(DetectorError, ValueError):
    """The head cannot do what was asked (bad shapes, unknown generator names, bad file)."""


@dataclass
class HeadConfig:
    """Hyper-parameters of the attribution head (saved with it)."""

    C: float = 1.0  # inverse L2 strength of the logistic regression
    max_iter: int = 2000
    knn_k: int = 5
    bank_per_class: int = 1000
    score: str = "mahalanobis"  # the unknown score used for the is_unknown decision
    accept_rate: float = 0.95  # share of known validation samples the thresholds accept
    seed: int = 0

    def __post_init__(self) -> None:
        if self.score not in UNKNOWN_SCORES:
            raise AttributionError(f"score must be one of {UNKNOWN_SCORES}, got {self.score!r}")
        if not 0.0 < self.accept_rate <= 1.0:
            raise AttributionError(f"accept_rate must be in (0, 1], got {self.accept_rate}")
        if self.knn_k < 1 or self.bank_per_class < 1:
            raise AttributionError("knn_k and bank_per_class must be positive")


@dataclass
class Attribution:
    """The attribution of one sample: top-k generators, its unknown score and the decision."""

    top_k: list[tuple[str, float]]
    unknown_score: float
    is_unknown: bool
    score_name: str
    threshold: float | None
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def generator(self) -> str:
        """The predicted generator, or ``"unknown"`` when rejected."""
        return UNKNOWN if self.is_unknown else self.top_k[0][0]


@dataclass
class Predictions:
    """Batch output of :meth:`AttributionHead.predict` (row i belongs to input row i)."""

    classes: list[str]
    probs: np.ndarray  # N x C
    scores: dict[str, np.ndarray]  # name -> N, higher = more unknown
    score_name: str
    threshold: float | None

    @property
    def top1(self) -> list[str]:
        return [self.classes[i] for i in self.probs.argmax(axis=1)]

    @property
    def unknown_score(self) -> np.ndarray:
        return self.scores[self.score_name]

    @property
    def is_unknown(self) -> np.ndarray:
        if self.threshold is None:
            return np.zeros(len(self.probs), dtype=bool)
        return self.unknown_score > self.threshold

    @property
    def labels(self) -> list[str]:
        """Top-1 generator, or ``"unknown"`` for rejected rows."""
        return [UNKNOWN if u else g for g, u in zip(self.top1, self.is_unknown, strict=True)]

    def item(self, i: int, k: int = 3) -> Attribution:
        order = np.argsort(-self.probs[i], kind="stable")[:k]
        return Attribution(
            top_k=[(self.classes[j], float(self.probs[i, j])) for j in order],
            unknown_score=float(self.unknown_score[i]),
            is_unknown=bool(self.is_unknown[i]),
            score_name=self.score_name,
            threshold=self.threshold,
            scores={name: float(values[i]) for name, values in self.scores.items()},
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1)
    return top + np.log(np.exp(logits - top[:, None]).sum(axis=1))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class AttributionHead:
    """Known-generator classifier + unknown scores + enrolment. Build with :meth:`fit` or :meth:`load`."""

    def __init__(self, config: HeadConfig | None = None, metadata: dict[str, Any] | None = None):
        self.config = config or HeadConfig()
        #: Free-form facts saved with the head (backbone name, weights id, feature layers...).
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.classes: list[str] = []
        self.enrolled: list[str] = []  # generators added by enrolment rather than by fit
        self.mean = np.zeros(0, np.float32)
        self.scale = np.ones(0, np.float32)
        self.coef = np.zeros((0, 0), np.float32)
        self.intercept = np.zeros(0, np.float32)
        self.prototypes = np.zeros((0, 0), np.float32)
        self.counts = np.zeros(0, np.int64)
        self.precision = np.zeros((0, 0), np.float32)
        self.shrinkage = 0.0
        self.bank = np.zeros((0, 0), np.float32)
        self.bank_labels = np.zeros(0, np.int64)
        self.thresholds: dict[str, float] = {}

    # ------------------------------------------------------------------ fitting
    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def fitted(self) -> bool:
        return bool(self.classes)

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim == 1:
            features = features[None, :]
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise AttributionError(f"expected N x {self.dim} features, got shape {features.shape}")
        if not np.isfinite(features).all():
            raise AttributionError("features contain NaN or infinite values")
        return (features - self.mean) / self.scale

    def fit(self, features: np.ndarray, generators: list[str]) -> AttributionHead:
        """Fit on N x D features of known generators (at least two generators)."""
        features = np.asarray(features, dtype=np.float32)
        generators = [str(g) for g in generators]
        if features.ndim != 2 or len(features) != len(generators):
            raise AttributionError(
                f"need N x D features and N labels, got {features.shape} and {len(generators)}"
            )
        if UNKNOWN in generators:
            raise AttributionError(
                f"{UNKNOWN!r} is reserved for rejected samples and cannot be a generator name"
            )
        classes = sorted(set(generators))
        if len(classes) < 2:
            raise AttributionError(f"fitting needs at least two generators, got {classes}")
        self.classes = classes
        self.enrolled = []
        self.mean = features.mean(axis=0)
        std = features.std(axis=0)
        self.scale = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        z = self._standardise(features)
        labels = np.array([classes.index(g) for g in generators])
        self.prototypes = np.stack([z[labels == c].mean(axis=0) for c in range(len(classes))]).astype(
            np.float32
        )
        self.counts = np.bincount(labels, minlength=len(classes)).astype(np.int64)
        rng = np.random.default_rng(self.config.seed)
        keep = []
        for c in range(len(classes)):
            rows = np.flatnonzero(labels == c)
            if len(rows) > self.config.bank_per_class:
                rows = np.sort(rng.choice(rows, self.config.bank_per_class, replace=False))
            keep.append(rows)
        keep = np.concatenate(keep)
        self.bank = z[keep].astype(np.float32)
        self.bank_labels = labels[keep].astype(np.int64)
        self.shrinkage = self._fit_shrinkage()
        self._refresh()
        self.thresholds = {}
        return self

    def _residuals(self) -> np.ndarray:
        return self.bank - self.prototypes[self.bank_labels]

    def _fit_shrinkage(self) -> float:
        """Ledoit-Wolf shrinkage of the within-class covariance, fixed at fit so enrolment stays cheap."""
        from sklearn.covariance import ledoit_wolf_shrinkage

        residuals = self._residuals()
        return float(ledoit_wolf_shrinkage(residuals, assume_centered=True))

    def _refresh(self) -> None:
        """Recompute the covariance and refit the linear layer from the bank (after fit/enrol/remove)."""
        residuals = self._residuals().astype(np.float64)
        dof = max(len(residuals) - len(self.classes), 1)
        cov = residuals.T @ residuals / dof
        mu = np.trace(cov) / self.dim
        cov = (1.0 - self.shrinkage) * cov + self.shrinkage * mu * np.eye(self.dim)
        cov += 1e-6 * max(mu, 1e-12) * np.eye(self.dim)  # keeps the inverse finite when shrinkage is ~0
        self.precision = np.linalg.inv(cov).astype(np.float32)
        self.precision = (self.precision + self.precision.T) / 2
        self._fit_linear()

    def _fit_linear(self) -> None:
        n_classes = len(self.classes)
        if n_classes < 2:  # one generator left after removals: everything attributes to it
            self.coef = np.zeros((n_classes, self.dim), np.float32)
            self.intercept = np.zeros(n_classes, np.float32)
            return
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=self.config.C, max_iter=self.config.max_iter, class_weight="balanced")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(self.bank, self.bank_labels)
        coef, intercept = model.coef_, model.intercept_
        if n_classes == 2:  # sklearn gives one logit for two classes; split it into a softmax pair
            coef = np.concatenate([-coef / 2, coef / 2])
            intercept = np.concatenate([-intercept / 2, intercept / 2])
        self.coef = coef.astype(np.float32)
        self.intercept = intercept.astype(np.float32)

    # ------------------------------------------------------------------ scoring
    def _check_fitted(self) -> None:
        if not self.fitted:
            raise AttributionError("the attribution head is not fitted")

    def _mahalanobis(self, z: np.ndarray) -> np.ndarray:
        zp = z @ self.precision
        proto_p = self.prototypes @ self.precision
        d2 = (
            (zp * z).sum(axis=1)[:, None]
            - 2 * zp @ self.prototypes.T
            + (proto_p * self.prototypes).sum(axis=1)
        )
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))

    def _knn(self, z: np.ndarray, chunk: int = 2048) -> np.ndarray:
        bank = _unit_rows(self.bank)
        k = min(self.config.knn_k, len(bank))
        out = np.empty(len(z), np.float32)
        for start in range(0, len(z), chunk):
            sims = _unit_rows(z[start : start + chunk]) @ bank.T
            kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
            out[start : start + chunk] = 1.0 - kth
        return out

    def predict(self, features: np.ndarray) -> Predictions:
        """Probabilities over known generators and every unknown score for N x D features."""
        self._check_fitted()
        z = self._standardise(features)
        logits = z @ self.coef.T + self.intercept
        probs = _softmax(logits)
        scores = {
            "msp": 1.0 - probs.max(axis=1),
            "energy": -_logsumexp(logits),
            "mahalanobis": self._mahalanobis(z),
            "knn": self._knn(z),
        }
        scores = {name: value.astype(np.float64) for name, value in scores.items()}
        name = self.config.score
        return Predictions(list(self.classes), probs, scores, name, self.thresholds.get(name))

    def fit_thresholds(self, features: np.ndarray, generators: list[str] | None = None) -> dict[str, float]:
        """Fit one rejection threshold per score so that ``accept_rate`` of known validation rows pass.

        Rows whose generator is not a known class are ignored (they are not known samples)."""
        self._check_fitted()
        features = np.asarray(features, dtype=np.float32)
        if generators is not None:
            known = np.array([g in self.classes for g in generators], dtype=bool)
            features = features[known]
        if len(features) == 0:
            raise AttributionError("no known-generator rows to fit the rejection thresholds on")
        preds = self.predict(features)
        self.thresholds = {
            name: float(np.quantile(values, self.config.accept_rate, method="higher"))
            for name, values in preds.scores.items()
        }
        return dict(self.thresholds)

    # ------------------------------------------------------------------ enrolment
    def enroll(self, name: str, features: np.ndarray) -> None:
        """Add generator ``name`` from a few (typically 5-50) feature vectors; the backbone is untouched."""
        self._check_fitted()
        name = str(name).strip()
        if not name or name == UNKNOWN:
            raise AttributionError(f"invalid generator name {name!r}")
        if name in self.classes:
            raise AttributionError(f"generator {name!r} is already known; remove it first to re-enrol")
        z = self._standardise(features)
        if len(z) < 1:
            raise AttributionError("enrolment needs at least one feature vector")
        label = len(self.classes)
        self.classes.append(name)
        self.enrolled.append(name)
        self.prototypes = np.concatenate([self.prototypes, z.mean(axis=0, keepdims=True)]).astype(np.float32)
        self.counts = np.append(self.counts, len(z))
        if len(z) > self.config.bank_per_class:
            rng = np.random.default_rng(self.config.seed)
            z = z[np.sort(rng.choice(len(z), self.config.bank_per_class, replace=False))]
        self.bank = np.concatenate([self.bank, z.astype(np.float32)])
        self.bank_labels = np.append(self.bank_labels, np.full(len(z), label, dtype=np.int64))
        self._refresh()

    def remove(self, name: str) -> None:
        """Forget generator ``name`` (its prototype, its bank rows) and refit the linear layer."""
        self._check_fitted()
        if name not in self.classes:
            raise AttributionError(f"no generator named {name!r}; known: {self.classes}")
        if len(self.classes) == 1:
            raise AttributionError("cannot remove the last generator")
        c = self.classes.index(name)
        self.classes.pop(c)
        if name in self.enrolled:
            self.enrolled.remove(name)
        self.prototypes = np.delete(self.prototypes, c, axis=0)
        self.counts = np.delete(self.counts, c)
        keep = self.bank_labels != c
        self.bank = self.bank[keep]
        labels = self.bank_labels[keep]
        self.bank_labels = np.where(labels > c, labels - 1, labels)
        self._refresh()

    # ------------------------------------------------------------------ storage
    _ARRAYS = (
        "mean",
        "scale",
        "coef",
        "intercept",
        "prototypes",
        "counts",
        "precision",
        "bank",
        "bank_labels",
    )

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {name: np.ascontiguousarray(getattr(self, name)) for name in self._ARRAYS}
        meta = {
            "format": FORMAT,
            "classes": self.classes,
            "enrolled": self.enrolled,
            "shrinkage": self.shrinkage,
            "thresholds": self.thresholds,
            "config": asdict(self.config),
            "metadata": self.metadata,
        }
        return arrays, meta

    #: Statistics stored in half precision (the memory bank and the shared precision matrix): they are
    #: most of the file (a 1280-d backbone: 6.5 MB of precision, 5 KB per bank row) and scoring reads
    #: them as float32 again; distances move by about 1e-3 relative, far below any threshold's margin.
    _HALF = ("bank", "precision")

    def save(self, path: str | Path) -> Path:
        """Write the head as one safetensors file with its JSON description in the header (atomic)."""
        self._check_fitted()
        arrays, meta = self.state()
        arrays = {k: (v.astype(np.float16) if k in self._HALF else v) for k, v in arrays.items()}
        return save_arrays(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> AttributionHead:
        path = Path(path)
        arrays, meta = load_format(path, FORMAT, AttributionError, "attribution head")
        missing = [name for name in cls._ARRAYS if name not in arrays]
        if missing:
            raise AttributionError(f"{path}: missing arrays {missing}")
        head = cls(HeadConfig(**meta["config"]), meta.get("metadata"))
        for name in cls._ARRAYS:
            value = arrays[name]
            setattr(head, name, value.astype(np.float32) if value.dtype == np.float16 else value)
        head.classes = list(meta["classes"])
        head.enrolled = list(meta.get("enrolled", []))
        head.shrinkage = float(meta["shrinkage"])
        head.thresholds = {k: float(v) for k, v in meta.get("thresholds", {}).items()}
        if len(head.classes) != len(head.prototypes) or head.coef.shape != (len(head.classes), head.dim):
            raise AttributionError(
                f"{path}: arrays do not match the {len(head.classes)} classes in the header"
            )
        return head

    def set_score(self, name: str) -> None:
        """Choose which unknown score decides ``is_unknown``."""
        if name not in UNKNOWN_SCORES:
            raise AttributionError(f"score must be one of {UNKNOWN_SCORES}, got {name!r}")
        self.config.score = name

    def describe(self) -> list[dict[str, Any]]:
        """One row per generator: name, origin (fit/enrolled), sample count, bank rows."""
        bank_rows = np.bincount(self.bank_labels, minlength=len(self.classes))
        return [
            {
                "generator": name,
                "origin": "enrolled" if name in self.enrolled else "fit",
                "samples": int(self.counts[i]),
                "bank_rows": int(bank_rows[i]),
            }
            for i, name in enumerate(self.classes)
        ]
