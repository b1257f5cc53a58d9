"""The Dockerfile, read as text (no Docker engine here): lint-clean and shaped as promised."""

from __future__ import annotations

import json
import re

import yaml
from deploy_support import EMULATOR_CHART, REPO, find_tool, run

from tap_emulator.config import build_settings

DOCKERFILE = REPO / "Dockerfile"


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), per stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: list[list[str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.upper().startswith("FROM "):
            found.append([])
        found[-1].append(stripped)
    return found


def final_stage() -> list[str]:
    return stages()[-1]


def instruction(stage: list[str], name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in stage if line.split(None, 1)[0].upper() == name]


def test_dockerfile_is_clean_under_hadolint() -> None:
    done = run([find_tool("hadolint"), DOCKERFILE])
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_is_built_in_two_stages_from_slim_python_3_11() -> None:
    found = stages()
    assert len(found) >= 2
    for stage in found:
        (base,) = instruction(stage, "FROM")
        assert base.split()[0].startswith("python:3.11-slim")


def test_final_stage_installs_nothing_and_copies_only_the_built_environment() -> None:
    stage = final_stage()
    for command in instruction(stage, "RUN"):
        assert "pip install" not in command
        assert "apt-get install" not in command
    sources = [c for c in instruction(stage, "COPY") if c.startswith("--from=")]
    assert sources == ["--from=build /opt/tap-emulator /opt/tap-emulator"]


def test_final_stage_runs_as_uid_65532() -> None:
    (user,) = instruction(final_stage(), "USER")
    assert user.split(":")[0] == "65532"


def test_image_exposes_the_grpc_and_metrics_ports() -> None:
    exposed = " ".join(instruction(final_stage(), "EXPOSE")).split()
    assert sorted(exposed) == ["9000", "9090"]


def test_entrypoint_is_tap_emulator_serving_the_settings_file() -> None:
    (entrypoint,) = instruction(final_stage(), "ENTRYPOINT")
    (cmd,) = instruction(final_stage(), "CMD")
    assert json.loads(entrypoint) == ["tap-emulator"]
    assert json.loads(cmd) == ["serve", "--config", "/etc/tap-emulator/config.yaml"]


def test_image_settings_listen_where_the_chart_expects() -> None:
    image = yaml.safe_load((REPO / "deploy" / "image" / "config.yaml").read_text())
    chart = yaml.safe_load((EMULATOR_CHART / "values.yaml").read_text())["config"]
    for key in ("listen", "metrics_listen", "output_dir"):
        assert image[key] == chart[key]


def test_image_settings_are_accepted_by_the_emulator() -> None:
    image = yaml.safe_load((REPO / "deploy" / "image" / "config.yaml").read_text())
    assert str(build_settings(image).output_dir) == "/tmp"


def test_build_context_admits_only_what_the_image_needs() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert admitted == {"pyproject.toml", "README.md", "tap_emulator", "deploy/image/config.yaml"}
    copied = " ".join(instruction(stages()[0], "COPY") + instruction(final_stage(), "COPY"))
    for path in admitted:
        assert path in copied
