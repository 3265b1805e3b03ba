"""`surge train` as two nodes: two separate `surge train --nnodes 2` processes meeting at a
loopback rendezvous train the same weights as one node with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.unit.train.tiny import write_recipe

from surge.server.sockets import unused_port

pytestmark = pytest.mark.timeout(300)
REPO_ROOT = Path(__file__).resolve().parents[2]


def surge_train(config: Path, *args: str) -> subprocess.Popen[str]:
    # PYTHONPATH: the ranks import the test models; one thread per rank on CI's two cores.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    env.pop("SURGE_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-c", "from surge.cli import main; main()", "train", str(config),
         *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # its own process group: torchrun and the ranks with it


def two_nodes(config: Path, *args: str) -> None:
    """Node 0 and node 1 as separate processes; both must finish with exit code 0."""
    endpoint = f"127.0.0.1:{unused_port()}"
    nodes = [surge_train(config, "--nproc", "1", "--nnodes", "2", "--rdzv", endpoint, *args)
             for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=240)[0] for node in nodes]
    finally:
        for node in nodes:  # a hung node must not outlive the test
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.communicate()
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-4000:]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    latest = json.loads((run / "ckpt" / "latest.json").read_text())["epoch"]
    return load_file(str(run / "ckpt" / f"epoch-{latest:04d}" / "model.safetensors"))


def test_two_nodes_train_what_one_node_trains_with_the_same_global_batch(
        tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    one = write_recipe(tmp_path / "one", epochs=2, parallelism="ddp")
    two = write_recipe(tmp_path / "two", epochs=2, parallelism="ddp")
    single = surge_train(one, "--nproc", "2")  # 2 ranks x batch 16 on one node
    output = single.communicate(timeout=240)[0]
    assert single.returncode == 0, output[-4000:]
    two_nodes(two)  # 1 rank x batch 16 on each of two nodes
    expected, got = final_weights(tmp_path / "one" / "run"), final_weights(tmp_path / "two" / "run")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    records = [json.loads(line) for line in
               (tmp_path / "two" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]


def test_a_rank_killed_on_one_node_restarts_both_nodes_from_the_last_checkpoint(
        tmp_path: Path) -> None:
    # 128 samples / global batch 16 = 8 steps per epoch; checkpoints after epochs 2 and 4;
    # global rank 1 dies in its 28th step (epoch 4). Its node's agent restarts it; the other
    # node's agent restarts its own worker when the first one rejoins the rendezvous.
    config = write_recipe(
        tmp_path, epochs=4, parallelism="ddp",
        checkpoint={"dir": str(tmp_path / "run" / "ckpt"), "interval": 2},
        model={"builder": "tests.unit.train.tiny:crashing_mlp",
               "kwargs": {"crash_rank": 1, "crash_at_call": 28},
               "input_name": "x", "output_name": "y", "input_shape": [8]},
    )
    two_nodes(config, "--max-restarts", "1")
    records = [json.loads(line)
               for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Epochs 3 and 4 were trained again from the epoch-2 checkpoint, by both nodes together.
    assert [(r["epoch"], r["resumed_from"]) for r in records] == [(1, 0), (2, 0), (3, 2), (4, 2)]
    assert json.loads((tmp_path / "run" / "ckpt" / "latest.json").read_text())["epoch"] == 4


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_a_machine_that_never_joins_ends_the_run_after_the_join_timeout(
        tmp_path: Path, static: bool) -> None:
    """torchrun waited 600 s (its rendezvous default) for the second machine. `--join-timeout
    2` ends the run a few seconds later, in one line naming the timeout, exit 2."""
    import time

    config = write_recipe(tmp_path, parallelism="ddp")
    endpoint = f"127.0.0.1:{unused_port()}"
    rank = ["--node-rank", "0"] if static else []
    started = time.monotonic()
    node = surge_train(config, "--nnodes", "2", "--rdzv", endpoint, *rank, "--join-timeout", "2")
    try:
        output = node.communicate(timeout=90)[0]
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.communicate()
    assert node.returncode == 2, output[-4000:]
    assert time.monotonic() - started < 60
    assert "Traceback" not in output, output[-4000:]
    assert output.strip().splitlines()[-1] == (
        f"error: --join-timeout 2: not all 2 machines joined the rendezvous at {endpoint} "
        "within 2 s; start `surge train` with the same --nnodes and --rdzv on each of them, or "
        "give them a longer --join-timeout"), output[-4000:]
