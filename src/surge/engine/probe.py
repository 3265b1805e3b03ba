"""What a model's latency probe sends on load: `size` rows that its signature accepts."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from surge.datatypes import v2_to_numpy
from surge.processors.in_worker import example_rows
from surge.repository import ModelConfig
from surge.runtimes.base import Signature


def probe_rows(config: ModelConfig, signature: Signature, size: int
               ) -> dict[str, np.ndarray] | None:
    """The probe's inputs: valid files or texts for the inputs a `preprocess:` step reads
    (its processor's example), zeros for the others; None when that cannot be made."""
    given = example_rows(config, signature, size) if config.preprocess and signature.batched else {}
    return probe_inputs(signature, size, given)


def probe_inputs(signature: Signature, size: int, given: Mapping[str, np.ndarray] | None = None,
                 ) -> dict[str, np.ndarray] | None:
    """Zeros for every input with `size` rows (batched models), but those `given` (valid rows a
    preprocess step makes); None when another input has a variable non-batch dim or is BYTES,
    whose probe size the signature cannot tell."""
    inputs: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        if given and spec.name in given:
            inputs[spec.name] = given[spec.name]
            continue
        dims = tuple(spec.shape[1:] if signature.batched else spec.shape)
        if spec.datatype == "BYTES" or any(d < 0 for d in dims):
            return None
        shape = (size, *dims) if signature.batched else dims
        inputs[spec.name] = np.zeros(shape, v2_to_numpy(spec.datatype))
    return inputs
