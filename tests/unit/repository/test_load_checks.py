"""What a load refuses from the config against the model: `labels` against the classifier output
at load, and the engine, device and preprocess steps already in `surge models`, with the reason
the load gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from surge.errors import ModelLoadError, SurgeError
from surge.processors.in_worker import serving_runner
from surge.repository import Repository
from tests.unit.tiny_models import make_repo

# The tiny model: x FP32 [-1, 4] -> y FP32 [-1, 4], so a classifier of 4 classes.
DECODE_STEP = """preprocess:
- name: decode
  processor: {processor}
  inputs: {{image: image}}
  outputs: {{pixels: x}}
  params: {params}
"""


def test_label_count_unlike_the_output_fails_the_load(tmp_path: Path) -> None:
    repo = Repository(make_repo(tmp_path, config="max_batch_size: 8\nlabels: [a, b, c]\n"))
    with pytest.raises(ModelLoadError, match=r"model 'tiny': config.yaml gives 3 labels, but its "
                       r"output 'y' \(model.onnx\) has 4 classes \(shape \[-1, 4\]\)"):
        repo.load("tiny")


@pytest.mark.parametrize("config", [
    "labels: [a, b, c, d]\n",  # one name per class
    "labels: [a, b, c]\nparameters: {task: detection}\n",  # a detector's labels name class ids
    "labels: [a, b, c]\noutputs: [{name: y, datatype: FP32, shape: [-1, -1]}]\n",  # variable
])
def test_labels_that_cannot_clash_load(tmp_path: Path, config: str) -> None:
    repo = Repository(make_repo(tmp_path, config="max_batch_size: 8\n" + config))
    assert repo.load("tiny").signature.outputs[0].name == "y"


@pytest.mark.parametrize("config", [
    "device: gpu7\n",
    "engine: keras\n",
    "device: cuda\nengine: openvino\n",
    DECODE_STEP.format(processor="image.nosuch", params="{}"),
    DECODE_STEP.format(processor="image.decode", params="{size: 3}"),
])
def test_models_lists_what_the_load_refuses_with_its_reason(tmp_path: Path, config: str) -> None:
    repo = Repository(make_repo(tmp_path, config="max_batch_size: 8\n" + config))
    with pytest.raises(SurgeError) as refused:
        serving_runner(repo.load("tiny"))
    entry = repo.entries()[0]
    assert (entry.state, entry.reason) == ("UNAVAILABLE", str(refused.value))


def test_models_leaves_the_model_inputs_to_the_load(tmp_path: Path) -> None:
    # image.decode writes UINT8 images, the model takes FP32 [-1, 4]: only loading tells
    config = DECODE_STEP.format(processor="image.decode", params="{size: [2, 2]}")
    repo = Repository(make_repo(tmp_path, config="max_batch_size: 8\n" + config))
    assert repo.entries()[0].state == "READY"


@pytest.mark.parametrize(("device", "reason"), [
    ("gpu", r"device 'gpu' is not a torch device \(Expected one of cpu, cuda"),
    ("cuda:99", r"device 'cuda:99': this machine has (no cuda device|\d+ cuda device)"),
    ("meta", r"device 'meta': this machine has no meta device"),
])
def test_a_torch_device_the_machine_lacks_is_refused_by_models_and_the_load(
        tmp_path: Path, device: str, reason: str) -> None:
    """Torch's own RuntimeError (and, without CUDA, an AssertionError) were tracebacks at load,
    and `surge models` said READY."""
    from tests.unit.tiny_models import write_pt2

    folder = tmp_path / "tiny"
    (folder / "1").mkdir(parents=True)
    write_pt2(folder / "1" / "model.pt2")
    (folder / "config.yaml").write_text(f"max_batch_size: 8\ndevice: '{device}'\n")
    repo = Repository(tmp_path)
    entry = repo.entries()[0]
    assert entry.state == "UNAVAILABLE"
    assert re.match(reason, entry.reason), entry.reason
    with pytest.raises(ModelLoadError, match=reason):
        serving_runner(repo.load("tiny"))


def test_a_tflite_model_asking_for_a_gpu_is_refused_not_run_on_the_cpu(tmp_path: Path) -> None:
    """LiteRT runs on the CPU: `device: cuda` was ignored, the model served on the CPU."""
    folder = tmp_path / "tiny"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.tflite").write_bytes(b"not read: the device is refused first")
    (folder / "config.yaml").write_text("max_batch_size: 8\ndevice: cuda\n")
    repo = Repository(tmp_path)
    reason = f"{folder / '1' / 'model.tflite'}: the LiteRT engine runs on cpu, not 'cuda'"
    assert (repo.entries()[0].state, repo.entries()[0].reason) == ("UNAVAILABLE", reason)
    with pytest.raises(ModelLoadError, match=re.escape(reason)):
        repo.load("tiny")
