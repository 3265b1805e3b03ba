"""The shared worker's side, in process: several models by member id, loaded and dropped one at a
time, each batch computed by the model it names."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

from surge.workers.messages import (
    BatchDone,
    LoadModel,
    ModelLoaded,
    ModelLoadFailed,
    ModelUnloaded,
    UnloadModel,
)
from surge.workers.shared_worker import SharedWorker
from surge.workers.transport import PipeTransport
from tests.integration.engine.onnx_models import affine


def repository(root: Path) -> Path:
    for name, features in (("narrow", 2), ("wide", 6)):
        affine(root / name / "1" / "model.onnx", features)
        (root / name / "config.yaml").write_text("max_batch_size: 8\nworker: shared\n")
    return root


def test_models_are_addressed_by_member_and_unloaded_alone(tmp_path: Path) -> None:
    front, back = mp.Pipe()
    worker = SharedWorker(str(repository(tmp_path)), back)

    def answer(message: object) -> object:
        front.send(message)
        worker.handle(back.recv())
        return front.recv()

    def send(member: str, x: np.ndarray) -> BatchDone:
        PipeTransport().send(front, 1, {"x": [x]}, member)
        worker.handle(back.recv())
        done = front.recv()
        assert isinstance(done, BatchDone)
        return done

    def run(member: str, x: np.ndarray) -> dict[str, np.ndarray]:
        done = send(member, x)
        assert not done.error
        return PipeTransport().receive(front, done)

    try:
        for member, ref in (("n:1", "narrow"), ("w:1", "wide")):
            loaded = answer(LoadModel(member, ref, 1, 1, "cpu"))
            assert isinstance(loaded, ModelLoaded)
            assert loaded.member == member
            assert loaded.added_bytes >= 0
        narrow, wide = np.ones((3, 2), np.float32), np.ones((1, 6), np.float32)
        np.testing.assert_array_equal(run("n:1", narrow)["y"], np.full((3, 2), 3.0))
        np.testing.assert_array_equal(run("w:1", wide)["z"], np.full((1, 1), 6.0))
        assert isinstance(answer(UnloadModel("n:1")), ModelUnloaded)
        gone = send("n:1", narrow)
        assert gone.error == "model 'n:1' is not loaded in this worker"
        np.testing.assert_array_equal(run("w:1", wide)["y"], np.full((1, 6), 3.0))
    finally:
        front.close()
        back.close()


def test_a_model_that_fails_to_load_is_reported_and_the_worker_serves_on(tmp_path: Path) -> None:
    front, back = mp.Pipe()
    worker = SharedWorker(str(repository(tmp_path)), back)
    try:
        front.send(LoadModel("m:1", "missing", 1, 1, "cpu"))
        worker.handle(back.recv())
        failed = front.recv()
        assert isinstance(failed, ModelLoadFailed)
        assert "missing" in failed.error
        front.send(LoadModel("n:1", "narrow", 1, 1, "cpu"))
        worker.handle(back.recv())
        assert isinstance(front.recv(), ModelLoaded)
        assert set(worker.runners) == {"n:1"}
    finally:
        front.close()
        back.close()
