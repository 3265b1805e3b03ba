"""Models written once per session by TensorFlow, Caffe's schema and OpenVINO."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.formats.builders import build_caffe_model, build_tf_models


@pytest.fixture(scope="session")
def tf_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tf_models(tmp_path_factory.mktemp("tf-models"))


@pytest.fixture(scope="session")
def caffe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_caffe_model(tmp_path_factory.mktemp("caffe-model"))
