"""docker-compose.yml and the Dockerfile cannot run here (no docker engine): check what can be checked.

Every grouprank command they run must be a real CLI entry point whose options exist, and every
GROUPRANK_* variable they set must be a setting.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from grouprank.cli.main import app
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def grouprank_commands(compose: dict) -> dict[str, list[str]]:
    commands = {name: service["command"] for name, service in compose["services"].items()
                if service.get("command", [None])[0] == "grouprank"}
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd, "the Dockerfile has no CMD in exec form"
    commands["Dockerfile CMD"] = json.loads(cmd.group(1))
    return commands


def test_the_deployment_has_every_service(compose: dict) -> None:
    services = compose["services"]
    assert {"opensearch", "redis", "api", "rerank-worker", "index-worker", "train-worker", "beat"} <= set(services)
    for gpu_worker in ("rerank-worker", "train-worker"):
        devices = services[gpu_worker]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["rerank-worker"]["command"][1:4] == ["worker", "--queues", "rerank"]
    assert services["index-worker"]["command"][1:4] == ["worker", "--queues", "index"]
    assert services["train-worker"]["command"][1:4] == ["worker", "--queues", "train"]
    assert "GROUPRANK_RETRAIN_EVERY_S" in services["beat"]["environment"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in compose["volumes"], f"{name}: undeclared {source}"


def test_every_command_is_a_real_cli_entry_point(compose: dict) -> None:
    commands = grouprank_commands(compose)
    assert {"api", "rerank-worker", "index-worker", "train-worker", "beat", "index-init"} <= set(commands)
    runner = CliRunner()
    for name, command in commands.items():
        # --help after the real arguments: an unknown command or option still fails.
        result = runner.invoke(app, [*command[1:], "--help"])
        assert result.exit_code == 0, f"{name}: {' '.join(command)}\n{result.output}"
        assert f"grouprank {command[1]}" in result.output


def test_environment_names_are_settings(compose: dict) -> None:
    known = Settings.env_names()
    for name, service in compose["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("GROUPRANK_"):
                assert variable in known, f"{name}: {variable} is not a setting"


def test_the_retraining_config_is_a_valid_pipeline_config(compose: dict) -> None:
    from trainer.config import PipelineConfig

    beat = compose["services"]["beat"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in beat["volumes"]}
    config_path = beat["environment"]["GROUPRANK_TRAIN_CONFIG"]  # a path inside the container
    mount = next(m for m in mounts if config_path.startswith(m + "/"))
    config = PipelineConfig.load(ROOT / mounts[mount] / Path(config_path).relative_to(mount))
    assert config.registry_dir == beat["environment"]["GROUPRANK_REGISTRY_DIR"]
    assert config.index_dir == beat["environment"]["GROUPRANK_INDEX_DIR"]
    # A rerun of the same file is a positive gate: a model must beat the serving one to be promoted.
    assert config.gate.margin > 0
