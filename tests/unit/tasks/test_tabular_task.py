"""Binary tabular metrics against values worked out by hand; feature columns packed and
unpacked; the registered `tabular-classification` task."""

from __future__ import annotations

import numpy as np
import pytest

from surge.evaluate.metrics import MetricError
from surge.tasks import EvalDataset, get_task
from surge.tasks.tabular import (
    Column,
    TabularClassification,
    binary_report,
    expected_calibration_error,
    f1_at,
    pack,
    positive_probability,
    roc_auc,
    unpack,
)


def test_auc_by_hand_with_ties() -> None:
    # pairs (pos, neg): (.9,.8) (.9,.1) (.4,.1) ordered right, (.4,.8) wrong -> 3/4
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.4, 0.1])) == pytest.approx(0.75)
    # a tie counts one half: (.7,.3) = 1, (.3,.3) = 0.5 -> 0.75
    assert roc_auc(np.array([1, 1, 0]), np.array([0.7, 0.3, 0.3])) == pytest.approx(0.75)
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    with pytest.raises(MetricError, match="both classes"):
        roc_auc(np.array([1, 1]), np.array([0.1, 0.2]))


def test_f1_at_a_chosen_threshold_by_hand() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    probabilities = np.array([0.9, 0.4, 0.6, 0.2, 0.5])
    half = f1_at(labels, probabilities, 0.5)  # predicted .9 .6 .5: two hits of three
    assert (half.precision, half.recall, half.f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    low = f1_at(labels, probabilities, 0.3)  # predicted .9 .4 .6 .5: three hits of four
    assert (low.precision, low.recall) == pytest.approx((0.75, 1.0))
    assert low.f1 == pytest.approx(2 * 0.75 / 1.75)
    assert f1_at(labels, probabilities, 0.95).f1 == 0.0


def test_calibration_error_by_hand() -> None:
    labels = np.array([1, 0, 1, 1])
    probabilities = np.array([0.05, 0.05, 0.95, 0.75])
    # bin 0: |0.5 - 0.05| x 2; bin 9: |1 - 0.95|; bin 7: |1 - 0.75| -> (0.9 + 0.05 + 0.25) / 4
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.3)
    report = binary_report(labels, probabilities)
    assert report.calibration == pytest.approx(0.7)
    assert report.brier == pytest.approx((0.95 ** 2 + 0.05 ** 2 + 0.05 ** 2 + 0.25 ** 2) / 4)
    assert report.accuracy == pytest.approx(0.75)


def test_probabilities_from_each_output_layout() -> None:
    assert positive_probability(np.array([[0.3, 0.7], [0.9, 0.1]])).tolist() == \
        pytest.approx([0.7, 0.1])
    assert positive_probability(np.array([[0.2], [0.4]])).tolist() == pytest.approx([0.2, 0.4])
    with pytest.raises(MetricError, match="probabilities in"):
        positive_probability(np.array([-2.0, 3.0]))  # logits, not probabilities
    with pytest.raises(MetricError, match="shape"):
        positive_probability(np.zeros((2, 3)))


def test_task_takes_f1_at_its_threshold() -> None:
    dataset = EvalDataset("rows", {"x": np.zeros(5)}, np.array([1, 1, 0, 0, 1]))
    outputs = {"p": np.array([0.9, 0.4, 0.6, 0.2, 0.5], np.float32)}
    assert get_task("tabular-classification").score(dataset, outputs, "p", None, None).f1 == \
        pytest.approx(2 / 3)
    report = TabularClassification(threshold=0.3).score(dataset, outputs, "p", None, None)
    assert report.f1 == pytest.approx(2 * 0.75 / 1.75)
    assert report.threshold == 0.3
    with pytest.raises(MetricError, match="threshold"):
        TabularClassification(threshold=1.5)


def test_columns_pack_and_unpack_in_their_datatypes() -> None:
    columns = (Column("user", "INT64"), Column("dense", "FP32", 2), Column("age"))
    arrays = {"user": np.array([3, 16_000_000]), "dense": np.array([[0.5, 1.5], [2.5, 3.5]]),
              "age": np.array([40.0, 51.0])}
    packed = pack(columns, arrays)
    assert packed.shape == (2, 4)
    assert packed.dtype == np.float32
    back = unpack(columns, packed)
    assert back["user"].dtype == np.int64
    assert back["user"].tolist() == [3, 16_000_000]  # exact in FP32 below 2**24
    assert back["dense"].tolist() == [[0.5, 1.5], [2.5, 3.5]]
    assert back["age"].shape == (2,)
    with pytest.raises(MetricError, match=r"missing feature column\(s\) \['age'\]"):
        pack(columns, {"user": arrays["user"], "dense": arrays["dense"]})
