"""The tap-emulator chart as the bridge to a network analysis tool: `forwardTo`, TLS to the
tool, and `config.output_dir: ""` for a pure bridge."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from deploy_support import (
    EMULATOR_CHART,
    EMULATOR_NAMESPACE,
    EMULATOR_RELEASE,
    EXAMPLES,
    Helm,
    Rendered,
    validate_object,
)

from tap_emulator.config import build_settings

TOOL = "packet-analyzer.analysis-tools.svc.cluster.local:9000"


def render(helm: Helm, values: dict[str, Any]) -> Rendered:
    return helm.template(EMULATOR_CHART, EMULATOR_RELEASE, EMULATOR_NAMESPACE, values)


def settings(rendered: Rendered) -> dict[str, Any]:
    loaded = yaml.safe_load(rendered.one("ConfigMap")["data"]["config.yaml"])
    assert isinstance(loaded, dict)
    return loaded


def pod_spec(rendered: Rendered) -> Any:
    return rendered.one("Deployment")["spec"]["template"]["spec"]


def mounts(rendered: Rendered) -> dict[str, str]:
    (container,) = pod_spec(rendered)["containers"]
    return {m["name"]: m["mountPath"] for m in container["volumeMounts"]}


def volumes(rendered: Rendered) -> dict[str, Any]:
    return {v["name"]: v for v in pod_spec(rendered)["volumes"]}


def error(helm: Helm, values: dict[str, Any]) -> str:
    return helm.template_error(EMULATOR_CHART, EMULATOR_RELEASE, EMULATOR_NAMESPACE, values)


def test_the_default_forwards_nowhere(emulator: Rendered) -> None:
    assert settings(emulator)["forward_to"] == ""


def test_forward_to_renders_objects_that_pass_the_kubernetes_schema(helm: Helm) -> None:
    rendered = render(helm, {"forwardTo": TOOL})
    for obj in rendered.objects:
        validate_object(obj)
    loaded = build_settings(settings(rendered))
    assert loaded.forward_to == TOOL
    assert loaded.forward_tls_ca_file is None
    assert str(loaded.output_dir) == "/tmp"  # files stay on by default


def test_forward_tls_mounts_the_secret_and_names_its_files(helm: Helm) -> None:
    values = {
        "forwardTo": TOOL,
        "forwardTLS": {"secretName": "analysis-tool-client", "clientCertificate": True},
    }
    rendered = render(helm, values)
    for obj in rendered.objects:
        validate_object(obj)
    loaded = settings(rendered)
    assert loaded["forward_tls_ca_file"] == "/etc/tap-emulator/forward-tls/ca.crt"
    assert loaded["forward_tls_cert_file"] == "/etc/tap-emulator/forward-tls/tls.crt"
    assert loaded["forward_tls_key_file"] == "/etc/tap-emulator/forward-tls/tls.key"
    assert mounts(rendered)["forward-tls"] == "/etc/tap-emulator/forward-tls"
    assert volumes(rendered)["forward-tls"]["secret"]["secretName"] == "analysis-tool-client"
    build_settings(loaded)


def test_forward_tls_without_a_client_certificate_only_trusts_the_ca(helm: Helm) -> None:
    values = {"forwardTo": TOOL, "forwardTLS": {"secretName": "analysis-tool-ca"}}
    loaded = settings(render(helm, values))
    assert loaded["forward_tls_ca_file"] == "/etc/tap-emulator/forward-tls/ca.crt"
    assert "forward_tls_cert_file" not in loaded


def test_a_pure_bridge_mounts_no_output_volume_and_its_settings_load(helm: Helm) -> None:
    rendered = render(helm, {"forwardTo": TOOL, "config": {"output_dir": ""}})
    for obj in rendered.objects:
        validate_object(obj)
    assert "output" not in mounts(rendered)
    assert "output" not in volumes(rendered)
    loaded = build_settings(settings(rendered))
    assert loaded.output_dir is None
    assert loaded.forward_to == TOOL


def test_no_files_and_no_tool_is_refused_as_doing_nothing(helm: Helm) -> None:
    assert "would do nothing" in error(helm, {"config": {"output_dir": ""}})


def test_forward_tls_without_forward_to_is_refused(helm: Helm) -> None:
    assert "forwardTo is empty" in error(helm, {"forwardTLS": {"secretName": "x"}})


def test_forward_to_and_a_different_config_forward_to_are_refused(helm: Helm) -> None:
    message = error(helm, {"forwardTo": TOOL, "config": {"forward_to": "other.ns.svc:9000"}})
    assert "set forwardTo only" in message


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"forwardTo": "packet-analyzer.analysis-tools"}, "forwardTo: Does not match pattern"),
        ({"forwardTLS": {"secret": "x"}}, "forwardTLS: Additional property secret"),
        (
            {"config": {"forward_when_full": "block"}},
            "config.forward_when_full: config.forward_when_full must be one of",
        ),
        ({"config": {"output_dir": "relative"}}, "config.output_dir: Does not match pattern"),
    ],
)
def test_the_schema_refuses_a_bad_forward_value_by_name(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    assert message in error(helm, values)


def test_notes_name_the_tool_and_how_to_see_what_is_forwarded(helm: Helm) -> None:
    notes = helm.notes(EMULATOR_CHART, EMULATOR_RELEASE, EMULATOR_NAMESPACE, {"forwardTo": TOOL})
    assert f"forwarded to the network analysis tool at {TOOL}" in " ".join(notes.split())
    assert "tap_emulator_forward_" in notes
    assert "ls /tmp" in notes


def test_notes_of_a_pure_bridge_say_no_files_are_written(helm: Helm) -> None:
    notes = helm.notes(
        EMULATOR_CHART,
        EMULATOR_RELEASE,
        EMULATOR_NAMESPACE,
        {"forwardTo": TOOL, "config": {"output_dir": ""}},
    )
    assert "No files are written" in notes
    assert "ls " not in notes


def test_the_bridge_example_renders_a_pure_bridge_over_mutual_tls(helm: Helm) -> None:
    rendered = helm.template(
        EMULATOR_CHART,
        EMULATOR_RELEASE,
        EMULATOR_NAMESPACE,
        values_file=EXAMPLES / "emulator-bridge-values.yaml",
    )
    for obj in rendered.objects:
        validate_object(obj)
    loaded = build_settings(settings(rendered))
    assert loaded.output_dir is None
    assert loaded.forward_to == TOOL
    assert loaded.forward_tls_cert_file is not None
    assert "output" not in volumes(rendered)
