"""Model files Surge converts to ONNX, found by their layout in a version directory."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from surge.errors import ModelLoadError

SAVEDMODEL_DIR = "model.savedmodel"
KERAS_H5 = "model.h5"
CAFFE_PROTOTXT = "deploy.prototxt"
CAFFE_WEIGHTS = "model.caffemodel"
SOURCE_NAMES = (SAVEDMODEL_DIR, KERAS_H5, f"{CAFFE_PROTOTXT} + {CAFFE_WEIGHTS}")


@dataclass(frozen=True)
class Source:
    """One convertible model: its format and the files that make it (the first names it)."""

    format: str  # savedmodel | h5 | caffe
    files: tuple[Path, ...]

    @property
    def path(self) -> Path:
        return self.files[0]

    def fingerprint(self) -> str:
        """sha256 over every file of the source, so an edited original invalidates its conversion."""
        digest = hashlib.sha256()
        for file in _all_files(self.files):
            digest.update(str(file.relative_to(self.path.parent)).encode())
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


def _all_files(paths: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return files


def _refuse_links_and_special_files(paths: tuple[Path, ...]) -> None:
    """Symlinks could lead out of the repository; a FIFO or device would block or never end
    the converter's read of it."""
    for path in paths:
        inner = list(path.rglob("*")) if path.is_dir() and not path.is_symlink() else []
        for item in (path, *inner):
            if item.is_symlink():
                raise ModelLoadError(f"{item}: refused to load: model files may not be symlinks")
            if not (item.is_file() or item.is_dir()):
                raise ModelLoadError(f"{item}: refused to load: not a regular file "
                                     "(a FIFO, socket or device)")


def _savedmodel(directory: Path) -> Source:
    path = directory / SAVEDMODEL_DIR
    if not path.is_dir():
        raise ModelLoadError(f"{path}: a SavedModel is a directory (saved_model.pb + variables/)")
    if not (path / "saved_model.pb").is_file():
        raise ModelLoadError(f"{path}: not a TensorFlow SavedModel: saved_model.pb is missing")
    return Source("savedmodel", (path,))


def _caffe(directory: Path) -> Source:
    prototxt, weights = directory / CAFFE_PROTOTXT, directory / CAFFE_WEIGHTS
    missing = [p.name for p in (prototxt, weights) if not p.is_file()]
    if missing:
        raise ModelLoadError(f"{directory}: a Caffe model needs {CAFFE_PROTOTXT} and {CAFFE_WEIGHTS}; "
                             f"{' and '.join(missing)} missing")
    return Source("caffe", (prototxt, weights))


def find_source(directory: Path) -> Source | None:
    """The convertible model in `directory`, None when there is none; partial ones are errors."""
    source: Source | None = None
    if (directory / SAVEDMODEL_DIR).exists():
        source = _savedmodel(directory)
    elif (directory / KERAS_H5).is_file():
        source = Source("h5", (directory / KERAS_H5,))
    elif (directory / CAFFE_PROTOTXT).exists() or (directory / CAFFE_WEIGHTS).exists():
        source = _caffe(directory)
    if source is not None:
        _refuse_links_and_special_files(source.files)
    return source
