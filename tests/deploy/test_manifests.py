"""deploy/manifests: the charts rendered with default values, for users without Helm."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from deploy_support import (
    EMULATOR_CHART,
    EMULATOR_NAMESPACE,
    EMULATOR_RELEASE,
    FILTER_CHART,
    MANIFESTS,
    REPO,
    Helm,
    run,
)

# (file, chart, release, namespace), as deploy/render-manifests.sh renders them.
MANIFEST_SOURCES = [
    ("tap-emulator.yaml", EMULATOR_CHART, EMULATOR_RELEASE, EMULATOR_NAMESPACE),
    ("tap-filter.yaml", FILTER_CHART, "pi2-bookinfo", "bookinfo"),
]
REGENERATE = "deploy/manifests is stale: regenerate it with deploy/render-manifests.sh"


@pytest.mark.parametrize(("file", "chart", "release", "namespace"), MANIFEST_SOURCES)
def test_manifest_holds_what_the_chart_renders(
    helm: Helm, file: str, chart: Path, release: str, namespace: str
) -> None:
    committed = [o for o in yaml.safe_load_all((MANIFESTS / file).read_text()) if o]
    assert committed == helm.template(chart, release, namespace).objects, REGENERATE


def test_render_script_reproduces_the_committed_manifests_byte_for_byte(
    helm: Helm, tmp_path: Path
) -> None:
    done = run(
        ["bash", REPO / "deploy" / "render-manifests.sh"], env={"MANIFESTS_DIR": str(tmp_path)}
    )
    assert done.returncode == 0, done.stderr
    for file, *_ in MANIFEST_SOURCES:
        assert (tmp_path / file).read_text() == (MANIFESTS / file).read_text(), REGENERATE
