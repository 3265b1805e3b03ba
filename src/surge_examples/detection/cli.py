"""`surge data fashion-detection OUT`: the canvases as COCO split directories (entry point group
`surge.cli`: `register(app)` adds the command to the library's `surge data` group)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

CALIBRATION_CANVASES = 256
COMMAND = "fashion-detection"
MAX_CANVASES = 1_000_000  # 16 GiB of 128x128 canvases; more is a typo
MAX_SPLIT_BYTES = 16 << 30  # one split's uint8 canvases, held in memory at once
_SPLIT_FILES = frozenset({"images.npy", "annotations.json"})
# What the command writes into OUT: a previous run's outputs are written over, anything else
# would end up beside splits it does not belong to.
OUTPUTS: dict[str, frozenset[str] | None] = {
    "train": _SPLIT_FILES, "val": _SPLIT_FILES, "test": _SPLIT_FILES, "val.npz": None,
    "val.json": None, "test.npz": None, "test.json": None, "calib.npy": None}


def fashion_detection(
    out: Annotated[Path, typer.Argument(help="Output directory (gets train/ val/ test/).")],
    train: Annotated[int, typer.Option(min=1, max=MAX_CANVASES, help="Training canvases.")] =
        20_000,
    val: Annotated[int, typer.Option(min=1, max=MAX_CANVASES, help="Validation canvases.")] =
        2_000,
    test: Annotated[int, typer.Option(min=1, max=MAX_CANVASES, help="Test canvases.")] = 2_000,
    size: Annotated[int, typer.Option(min=32, max=1024, help="Canvas side in pixels.")] = 128,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1,
                                      help="Random seed (same seed, same canvases).")] = 0,
) -> None:
    """Fashion-MNIST items on textured canvases, with COCO JSON boxes, as train/val/test splits.

    Each split gets OUT/<split>/images.npy + annotations.json; val and test also get
    OUT/<split>.npz + OUT/<split>.json, the evaluation format `surge tune --data` reads;
    OUT/calib.npy holds the first validation canvases for `surge optimize --calib`.
    """
    from surge.commands import console
    from surge.datafiles import refuse_foreign_files
    from surge.errors import ConfigError
    from surge_examples.detection.coco import save_eval_archive, save_split
    from surge_examples.detection.dataset import CanvasSpec, generate_split

    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT {str(out)!r} is a file: name a directory to write the splits "
                          f"into")
    _refuse_oversized_splits({"train": train, "val": val, "test": test}, size)
    refuse_foreign_files(out, OUTPUTS)
    _make_out(out)
    spec = CanvasSpec(size=size, max_scale=min(CanvasSpec.max_scale, size))
    table = Table("split", "canvases", "objects", "source images", "seconds", title=str(out))
    for split, count in (("train", train), ("val", val), ("test", test)):
        started = time.perf_counter()
        data = generate_split(split, count, spec=spec, seed=seed)
        try:
            save_split(data, out / split)
            if split != "train":
                save_eval_archive(data, out / f"{split}.npz")
            if split == "val":  # calibration inputs for static quantization (`optimize --calib`)
                np.save(out / "calib.npy", data.images[:CALIBRATION_CANVASES])
        except OSError as exc:  # a full disk, or a split's name taken by a file
            raise ConfigError(f"cannot write the {split} split into {str(out)!r}: {exc}") from None
        table.add_row(split, str(count), str(len(data.labels)), f"fashion-mnist {data.source_split}",
                      f"{time.perf_counter() - started:.1f}")
    console.print(table)


def _make_out(out: Path) -> None:
    """Create OUT now: a parent that is a file, or no permission, is said before the canvases
    are drawn (a large train split takes minutes), not as a traceback after."""
    from surge.errors import ConfigError

    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".surge-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"OUT {str(out)!r} cannot be written: {exc.strerror or exc}") from None


def _refuse_oversized_splits(counts: dict[str, int], size: int) -> None:
    """A split is drawn in memory whole: refuse one larger than MAX_SPLIT_BYTES before any."""
    from surge.errors import ConfigError

    for split, count in counts.items():
        if count * size * size > MAX_SPLIT_BYTES:
            raise ConfigError(
                f"--{split} {count} at --size {size}: {count * size * size / 2**30:,.0f} GiB of "
                f"canvases, more than the {MAX_SPLIT_BYTES / 2**30:.0f} GiB one split may hold "
                f"(at most {MAX_SPLIT_BYTES // (size * size):,} canvases of that size)")


def register(app: typer.Typer) -> None:
    """Add `fashion-detection` to the `surge data` group."""
    from surge.cli import command_group

    command_group(app, "data").command(COMMAND)(fashion_detection)
