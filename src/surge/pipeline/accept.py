"""A pipeline's input check, prepared once from its signature when it loads.

`Signature.validate_inputs` looks each input's spec up by name, maps its dtype to a V2 name and
walks its shape: 4 us per request of a one-input pipeline, a tenth of the pipeline's own path.
`Accept` holds, per input, the numpy dtype and the fixed dims the signature asks for, and passes
a request that plainly fits in well under a microsecond. It accepts only what
`validate_inputs` accepts; anything else (a wrong dtype, a missing input, a byte-swapped array
that may still be fine) goes to `validate_inputs`, which stays the one place that decides and
words the error. Inputs with a declared range (`min`, `max`, `finite`) have their values
checked too, a request that fits or not.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from surge.datatypes import v2_to_numpy
from surge.runtimes.base import Signature


class Accept:
    """The checks of one signature's inputs, resolved: dtype, rank and fixed dims by name."""

    __slots__ = ("_inputs", "_max_batch", "_names", "_ranged", "signature")

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self._names = frozenset(spec.name for spec in signature.inputs)
        # name -> (dtype, rank, ((axis, size), ...) of the dims the spec fixes)
        self._inputs = {spec.name: (v2_to_numpy(spec.datatype), len(spec.shape),
                                    tuple((axis, size) for axis, size in enumerate(spec.shape)
                                          if size != -1))
                        for spec in signature.inputs}
        batched = signature.batched
        self._max_batch = (signature.max_batch_size or None) if batched else None
        self._ranged = tuple(spec.name for spec in signature.inputs if spec.values is not None)

    def check(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Raise InputError (from `validate_inputs`) unless `inputs` fit the signature."""
        if not self._fits(inputs):
            self.signature.validate_inputs(inputs)
        elif self._ranged:
            for name in self._ranged:
                self.signature.check_input(name, inputs[name])

    def _fits(self, inputs: Mapping[str, np.ndarray]) -> bool:
        if inputs.keys() != self._names:
            return False
        batch = None
        for name, array in inputs.items():
            dtype, rank, fixed = self._inputs[name]
            if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != rank:
                return False
            if array.dtype.metadata is not None:  # BF16 words equal uint16: the slow check names
                return False
            shape = array.shape
            for axis, size in fixed:
                if shape[axis] != size:
                    return False
            if self.signature.batched and rank:
                if batch is None:
                    batch = shape[0]
                elif shape[0] != batch:
                    return False
        return self._max_batch is None or batch is None or batch <= self._max_batch
