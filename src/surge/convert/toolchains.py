"""The interpreters that run each converter: TensorFlow and Caffe each live in their own venv."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from surge.errors import ModelLoadError

HERE = Path(__file__).resolve().parent
# format -> (toolchain, script, what installs it)
TOOLCHAIN = {"savedmodel": "tf", "h5": "tf", "caffe": "caffe"}
SCRIPT = {"tf": HERE / "tf_script.py", "caffe": HERE / "caffe_script.py"}
INSTALL_HINT = "scripts/setup.sh creates .venv-{0}; or set SURGE_{1}_PYTHON to an interpreter with it"
TIMEOUT_S = 600


def interpreter(toolchain: str) -> Path | None:
    """SURGE_TF_PYTHON / SURGE_CAFFE_PYTHON, else `.venv-tf` / `.venv-caffe` beside the running
    venv (the layout scripts/setup.sh makes), else beside the working directory."""
    variable = f"SURGE_{toolchain.upper()}_PYTHON"
    override = os.environ.get(variable)
    if override:
        if not Path(override).is_file():
            raise ModelLoadError(f"{variable}={override}: no such interpreter")
        return Path(override)
    for base in (Path(sys.prefix).parent, Path.cwd()):
        candidate = base / f".venv-{toolchain}" / "bin" / "python"
        if candidate.is_file():
            return candidate
    return None


def available(fmt: str) -> bool:
    return interpreter(TOOLCHAIN[fmt]) is not None


def run_script(fmt: str, args: list[str], what: Path) -> None:
    """Run the converter for `fmt`; its one-line refusal becomes a ModelLoadError."""
    toolchain = TOOLCHAIN[fmt]
    python = interpreter(toolchain)
    if python is None:
        raise ModelLoadError(
            f"{what}: converting a {fmt} model needs the {toolchain} toolchain: "
            + INSTALL_HINT.format(toolchain, toolchain.upper()))
    command = [str(python), str(SCRIPT[toolchain]), *args]
    returncode, stderr = _run_group(command, what)
    if returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit status {returncode}"
        raise ModelLoadError(detail if returncode == 3 else f"{what}: conversion failed ({detail})")


def _run_group(command: list[str], what: Path) -> tuple[int, str]:
    """Run `command` in a process group of its own; its exit status and stderr. A timeout, an
    interrupt or any other exception here kills the whole group: the converter's own children
    (tf2onnx runs in one) would otherwise go on, orphaned, writing a conversion nobody awaits."""
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as process:
        try:
            _, stderr = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ModelLoadError(f"{what}: conversion took longer than {TIMEOUT_S} s") from None
        finally:
            _kill_group(process)  # interrupted, or a child the converter left running
    return process.returncode, stderr


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
