"""The reference lists of the docs name what the code has: every `config.yaml` field in
docs/architecture.md's field list, every option of a command in its row of README's CLI table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from pydantic import BaseModel

from surge.cli import build_app
from surge.repository.config import ModelConfig
from surge.repository.queueing import PriorityQueueConfig, QueueConfig
from surge.repository.sequencing import SequenceBatchingConfig

ROOT = Path(__file__).resolve().parents[2]


def _field_list() -> str:
    """The paragraph of docs/architecture.md that lists the config fields."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    return text.split("Config fields (defaults, bounds):", 1)[1].split("\n\n", 1)[0]


@pytest.mark.parametrize("section", [ModelConfig, QueueConfig, PriorityQueueConfig,
                                     SequenceBatchingConfig])
def test_every_config_field_is_in_the_architecture_list(section: type[BaseModel]) -> None:
    listed = _field_list()
    missing = [name for name in section.model_fields
               if not re.search(rf"`{name}[` .(]|[{{,] ?{name} \(|[{{,] `?{name}`", listed)]
    assert not missing, f"docs/architecture.md's config field list lacks {missing}"


def _options(command: object) -> list[list[str]]:
    params = getattr(command, "params", [])
    return [[opt for opt in param.opts + param.secondary_opts if opt.startswith("--")]
            for param in params if any(opt.startswith("--") for opt in param.opts)]


def test_every_command_option_is_in_its_readme_row() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    group = typer.main.get_command(build_app())
    missing = []
    for name, command in getattr(group, "commands", {}).items():
        row = " ".join(line for line in lines if re.match(rf"\| `surge {name}[ `]", line))
        for forms in _options(command):
            if forms and not any(re.search(re.escape(opt) + r"(?![\w-])", row) for opt in forms):
                missing.append(f"surge {name} {forms[0]}")
    assert not missing, f"README's CLI table lacks {missing}"
