"""Real finance data that packages ship, as datasets of the library.

- `hmda-credit`: the Boston HMDA mortgage applications (2,380 rows, Munnell et al. 1996) from
  the R package AER, read from the `.rda` of Debian's `r-cran-aer` with `rdata`. Target: the
  application was denied. The applicant's race (`afam`) is left out of the features: a risk
  model must not score it.
- `stock-prices`: monthly closing prices of five stocks, 2000-2010, from `vega_datasets`.
  Inputs: the last 12 prices in dollars; target: next month's price. Train on windows whose
  target is before 2008, test on the rest (the crash included), so no future leaks backwards.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surge.errors import ConfigError
from surge.tasks import DataOptions, Dataset, EvalDataset, Split
from surge.tasks.tabular import Column, ColumnDataset, pack

AER_PACKAGE_DIR = Path("usr/lib/R/site-library/AER/data")
# Where `scripts/setup.sh` unpacks r-cran-aer (installing R itself would take 155 packages).
UNPACKED = Path.home() / ".cache/surge/debian/r-cran-aer"
NUMERIC = ("pirat", "hirat", "lvrat", "unemp")
ORDINAL = ("chist", "mhist")  # credit and mortgage history scores: 1 best .. 6 (4) worst
YES_NO = ("phist", "selfemp", "insurance", "condomin", "single", "hschool")
CREDIT_COLUMNS = tuple(Column(name) for name in (*NUMERIC, *ORDINAL, *YES_NO))
TEST_FRACTION = 0.2
WINDOW = 12
SPLIT_DATE = np.datetime64("2008-01-01")


def aer_dir(root: Path | None = None) -> Path:
    """The AER data directory: `root`, $SURGE_AER_DIR, the installed R package, or the copy
    `scripts/setup.sh` unpacks."""
    if root is not None:
        return Path(root)
    if "SURGE_AER_DIR" in os.environ:
        return Path(os.environ["SURGE_AER_DIR"])
    installed = Path("/") / AER_PACKAGE_DIR
    return installed if installed.is_dir() else UNPACKED / AER_PACKAGE_DIR


def read_rda(path: Path, name: str) -> Any:
    """One data frame of an .rda file."""
    import rdata

    if not path.is_file():
        raise ConfigError(f"{path}: no such file; run scripts/setup.sh (it unpacks Debian's "
                          "r-cran-aer) or set SURGE_AER_DIR")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unknown encoding. Assumed ASCII." for every file
        try:
            frames = rdata.read_rda(str(path))
        except Exception as exc:  # rdata raises what its parser meets (NotImplementedError...)
            raise ConfigError(f"{path}: cannot be read as R data ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None
    if name not in frames:
        raise ConfigError(f"{path}: holds no data frame {name!r} (it has {sorted(frames)})")
    return frames[name]


def load_hmda(root: Path | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Feature columns (FP32 [N] each) and denial labels (INT64 [N], 1 = denied)."""
    path = aer_dir(root) / "HMDA.rda"
    frame = read_rda(path, "HMDA")
    missing = [c for c in ("deny", *NUMERIC, *ORDINAL, *YES_NO) if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path}: the HMDA frame lacks column(s) {missing}")
    if frame.isna().any().any():  # a NA would train and score as a made-up value
        raise ConfigError(f"{path}: the HMDA frame has missing values in "
                          f"{[str(c) for c in frame.columns[frame.isna().any()]]}")
    columns = {name: frame[name].to_numpy(np.float32) for name in NUMERIC}
    for name in ORDINAL:
        columns[name] = frame[name].astype(int).to_numpy(np.float32)
    for name in YES_NO:
        columns[name] = (frame[name].astype(str) == "yes").to_numpy(np.float32)
    labels = (frame["deny"].astype(str) == "yes").to_numpy(np.int64)
    return columns, labels


def split_rows(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: a fixed shuffle, TEST_FRACTION held out."""
    order = np.random.default_rng(seed).permutation(count)
    cut = int(round(count * (1 - TEST_FRACTION)))
    return np.sort(order[:cut]), np.sort(order[cut:])


class HmdaCredit(ColumnDataset, Dataset):
    """Mortgage denial from 12 applicant columns; the same split for trees and networks."""

    name = "hmda-credit"
    columns = CREDIT_COLUMNS

    def check(self, options: DataOptions) -> None:
        path = aer_dir(options.root) / "HMDA.rda"
        if not path.is_file():
            raise ConfigError(f"{path}: no such file; run scripts/setup.sh (it unpacks Debian's "
                              "r-cran-aer) or set SURGE_AER_DIR")

    def arrays(self, options: DataOptions) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                    np.ndarray, np.ndarray]:
        """(columns, labels, train rows, test rows)."""
        columns, labels = load_hmda(options.root)
        train, test = split_rows(len(labels))
        return columns, labels, train[:options.train_size], test[:options.test_size]

    def training(self, options: DataOptions) -> tuple[Split, Split]:
        columns, labels, train, test = self.arrays(options)
        packed = torch.from_numpy(pack(self.columns, columns))
        target = torch.from_numpy(labels)
        return Split(packed[train], target[train]), Split(packed[test], target[test])

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        columns, labels, _, test = self.arrays(options)
        return EvalDataset(self.name, {k: v[test] for k, v in columns.items()}, labels[test])


def load_stock_windows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(windows [N, WINDOW] of monthly prices, next prices [N], dates of the targets [N])."""
    from vega_datasets import local_data

    frame = local_data.stocks()
    windows, targets, dates = [], [], []
    for _, series in frame.sort_values("date").groupby("symbol"):
        prices = series["price"].to_numpy(np.float32)
        when = series["date"].to_numpy("datetime64[D]")
        for end in range(WINDOW, len(prices)):
            windows.append(prices[end - WINDOW:end])
            targets.append(prices[end])
            dates.append(when[end])
    return np.stack(windows), np.array(targets, np.float32), np.array(dates)


class StockPrices(ColumnDataset, Dataset):
    """Next month's price from the last 12, split in time at 2008-01."""

    name = "stock-prices"
    columns = (Column("window", "FP32", WINDOW),)

    def arrays(self, options: DataOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                    np.ndarray]:
        windows, targets, dates = load_stock_windows()
        train = np.flatnonzero(dates < SPLIT_DATE)[:options.train_size]
        test = np.flatnonzero(dates >= SPLIT_DATE)[:options.test_size]
        return windows, targets, train, test

    def training(self, options: DataOptions) -> tuple[Split, Split]:
        windows, targets, train, test = self.arrays(options)
        inputs, labels = torch.from_numpy(windows), torch.from_numpy(targets)
        return Split(inputs[train], labels[train]), Split(inputs[test], labels[test])

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        windows, targets, _, test = self.arrays(options)
        return EvalDataset(self.name, {"window": windows[test]}, targets[test])
