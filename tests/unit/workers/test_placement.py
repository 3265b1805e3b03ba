"""Instances x threads planning and slot sizing."""

from __future__ import annotations

import pytest

from surge.errors import ConfigError
from surge.runtimes.base import TensorSpec
from surge.workers.placement import slot_bytes
from surge.workers.pool import Placement, plan_instances


def test_threads_default_to_cores_per_instance() -> None:
    assert plan_instances(2, 0, "cpu", cores=8) == [Placement("cpu", 4)] * 2
    assert plan_instances(2, 0, "cpu", cores=5) == [Placement("cpu", 2)] * 2


def test_explicit_threads_must_fit_the_cores() -> None:
    assert plan_instances(2, 1, "cpu", cores=2) == [Placement("cpu", 1)] * 2
    with pytest.raises(ConfigError, match=r"2 x 2 = 4 does not fit 2 cores"):
        plan_instances(2, 2, "cpu", cores=2)


def test_more_instances_than_cores_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not fit 2 cores"):
        plan_instances(3, 0, "cpu", cores=2)


def test_cuda_places_instances_on_every_device() -> None:
    placements = plan_instances(2, 1, "cuda", cores=16, cuda_devices=2)
    assert [p.device for p in placements] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    with pytest.raises(ConfigError, match="no CUDA device"):
        plan_instances(1, 0, "cuda", cores=16, cuda_devices=0)


def test_slot_bytes_cover_a_full_batch() -> None:
    specs = (TensorSpec("x", "FP32", (-1, 3, 8, 8)), TensorSpec("ids", "INT64", (-1, -1)))
    assert slot_bytes(specs, 16) >= 16 * 3 * 8 * 8 * 4 + 16 * 8
