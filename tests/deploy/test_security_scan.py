"""checkov over the emulator's manifests and the Dockerfile: no failed security checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploy_support import (
    EMULATOR_CHART,
    EMULATOR_NAMESPACE,
    EMULATOR_RELEASE,
    EXAMPLES,
    MANIFESTS,
    REPO,
    Helm,
    find_tool,
    run,
)

# Checks the default manifests skip, each for a reason the defaults cannot avoid. The
# hardened example below passes all three, so they stay reachable through values.
JUSTIFIED_SKIPS = {
    # Image pinned by digest: the digest exists only once the image is pushed to a registry,
    # and none is reachable from here. image.digest sets it.
    "CKV_K8S_43",
    # imagePullPolicy Always: the emulator is for non-production clusters, where images are
    # often loaded straight into the nodes (kind load, k3d image import) and Always would fail
    # to pull them. With image.digest set, IfNotPresent runs the same bytes as Always.
    "CKV_K8S_15",
    # A NetworkPolicy for the pod: off by default because its port list depends on the mesh
    # (Istio's sidecar probes and merged metrics use their own ports) and on where Prometheus
    # runs. networkPolicy.enabled renders one.
    "CKV2_K8S_6",
}


def checkov(target: Path, framework: str, skips: set[str] | None = None) -> dict[str, Any]:
    argv: list[str | Path] = [
        find_tool("checkov"),
        "--file",
        target,
        "--framework",
        framework,
        "--output",
        "json",
        # No network: no download of Prisma Cloud guidelines or policies.
        "--skip-download",
    ]
    if skips:
        argv += ["--skip-check", ",".join(sorted(skips))]
    done = run(argv)
    assert done.stdout.strip(), f"checkov printed nothing:\n{done.stderr[-2000:]}"
    report = json.loads(done.stdout)
    if isinstance(report, list):
        (report,) = [r for r in report if r.get("check_type") == framework]
    assert isinstance(report, dict)
    return report


def failed(report: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['check_name']} ({c['resource']})"
        for c in report["results"]["failed_checks"]
    ]


def test_emulator_manifests_pass_checkov_with_only_justified_skips() -> None:
    report = checkov(MANIFESTS / "tap-emulator.yaml", "kubernetes", JUSTIFIED_SKIPS)
    assert failed(report) == []
    assert report["summary"]["passed"] > 50
    assert report["summary"]["parsing_errors"] == 0


def test_hardened_example_passes_checkov_with_no_skips(helm: Helm, tmp_path: Path) -> None:
    done = helm.template_text(
        EMULATOR_CHART,
        EMULATOR_RELEASE,
        EMULATOR_NAMESPACE,
        values_file=EXAMPLES / "emulator-hardened-values.yaml",
    )
    assert done.returncode == 0, done.stderr
    manifest = tmp_path / "hardened.yaml"
    manifest.write_text(done.stdout)
    report = checkov(manifest, "kubernetes")
    assert failed(report) == []
    assert report["summary"]["skipped"] == 0


def test_dockerfile_passes_checkov() -> None:
    report = checkov(REPO / "Dockerfile", "dockerfile")
    assert failed(report) == []
    assert report["summary"]["passed"] > 0
