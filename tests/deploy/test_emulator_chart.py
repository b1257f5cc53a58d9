"""The tap-emulator chart: what `helm install pi2-analysis-emulator` puts in analysis-emulator."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_support import (
    EMULATOR_CHART,
    EMULATOR_NAMESPACE,
    EMULATOR_RELEASE,
    EXAMPLES,
    REPO,
    Helm,
    Obj,
    Rendered,
    validate_object,
)

from tap_emulator.config import FIELDS, build_settings

KUBERNETES_VERSION = "1.30"
EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"

# The settings `tap-emulator serve` reads (the emulator's settings contract).
# Every `serve` setting appears in the chart's settings file, with its default, so a user
# sees each one; the TLS files only when a Secret is given (see the TLS tests).
TLS_SETTINGS = {"tls_cert_file", "tls_key_file", "tls_client_ca_file"} | {
    "forward_tls_ca_file",
    "forward_tls_cert_file",
    "forward_tls_key_file",
}
SERVE_SETTINGS = set(FIELDS) - TLS_SETTINGS


def settings(rendered: Rendered) -> dict[str, Any]:
    config_map = rendered.one("ConfigMap")
    loaded = yaml.safe_load(config_map["data"]["config.yaml"])
    assert isinstance(loaded, dict)
    return loaded


def pod_spec(rendered: Rendered) -> Obj:
    spec: Obj = rendered.one("Deployment")["spec"]["template"]["spec"]
    return spec


def container(rendered: Rendered) -> Obj:
    (only,) = pod_spec(rendered)["containers"]
    assert isinstance(only, dict)
    return only


def port_number(rendered: Rendered, name: str) -> int:
    (port,) = [p for p in container(rendered)["ports"] if p["name"] == name]
    number = port["containerPort"]
    assert isinstance(number, int)
    return number


def render(helm: Helm, values: dict[str, Any]) -> Rendered:
    return helm.template(EMULATOR_CHART, EMULATOR_RELEASE, EMULATOR_NAMESPACE, values)


def test_chart_passes_helm_lint(helm: Helm) -> None:
    done = helm.lint(EMULATOR_CHART, EMULATOR_NAMESPACE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_default_render_is_a_deployment_service_configmap_service_account_and_tap_port_rule(
    emulator: Rendered,
) -> None:
    kinds = sorted(o["kind"] for o in emulator.objects)
    assert kinds == ["ConfigMap", "Deployment", "DestinationRule", "Service", "ServiceAccount"]


def test_every_object_is_in_the_release_namespace(emulator: Rendered) -> None:
    assert {o["metadata"]["namespace"] for o in emulator.objects} == {EMULATOR_NAMESPACE}


def validate(obj: Obj) -> None:
    validate_object(obj)


def test_every_object_validates_against_the_kubernetes_schema(emulator: Rendered) -> None:
    for obj in emulator.objects:
        validate(obj)


def test_service_is_named_tap_emulator_so_the_filter_default_fqdn_reaches_it(
    emulator: Rendered,
) -> None:
    assert emulator.one("Service")["metadata"]["name"] == "tap-emulator"


def test_service_grpc_port_9000_is_detected_as_grpc_by_istio(emulator: Rendered) -> None:
    (grpc,) = [p for p in emulator.one("Service")["spec"]["ports"] if p["port"] == 9000]
    assert grpc["name"].startswith("grpc")
    assert grpc["appProtocol"] == "grpc"
    assert grpc["targetPort"] == "grpc"


def test_service_exposes_metrics_port_9090(emulator: Rendered) -> None:
    (metrics,) = [p for p in emulator.one("Service")["spec"]["ports"] if p["port"] == 9090]
    assert metrics["targetPort"] == "metrics"


def test_service_selects_the_deployment_pods(emulator: Rendered) -> None:
    selector = emulator.one("Service")["spec"]["selector"]
    pod_labels = emulator.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert selector == emulator.one("Deployment")["spec"]["selector"]["matchLabels"]


def test_pod_carries_prometheus_scrape_annotations_for_the_metrics_port(
    emulator: Rendered,
) -> None:
    annotations = emulator.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9090"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_monitor_is_rendered_only_when_enabled(helm: Helm, emulator: Rendered) -> None:
    assert emulator.of_kind("ServiceMonitor") == []
    rendered = render(helm, {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}})
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http-metrics"
    assert endpoint["path"] == "/metrics"
    service_labels = rendered.one("Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()


def test_container_runs_as_non_root_uid_65532(emulator: Rendered) -> None:
    pod = pod_spec(emulator)["securityContext"]
    own = container(emulator)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert own["runAsNonRoot"] is True
    assert pod["runAsUser"] == own["runAsUser"] == 65532


def test_container_has_read_only_root_and_no_capabilities_or_escalation(
    emulator: Rendered,
) -> None:
    own = container(emulator)["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]
    assert "add" not in own["capabilities"]


def test_pod_uses_the_runtime_default_seccomp_profile(emulator: Rendered) -> None:
    assert pod_spec(emulator)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_service_account_token_is_not_mounted(emulator: Rendered) -> None:
    assert pod_spec(emulator)["automountServiceAccountToken"] is False
    assert emulator.one("ServiceAccount")["automountServiceAccountToken"] is False
    account = emulator.one("ServiceAccount")["metadata"]["name"]
    assert pod_spec(emulator)["serviceAccountName"] == account


def test_output_dir_is_an_emptydir_with_a_size_limit(emulator: Rendered) -> None:
    (mount,) = [m for m in container(emulator)["volumeMounts"] if m["name"] == "output"]
    (volume,) = [v for v in pod_spec(emulator)["volumes"] if v["name"] == "output"]
    assert mount["mountPath"] == settings(emulator)["output_dir"] == "/tmp"
    assert volume["emptyDir"]["sizeLimit"] == "1024Mi"


def test_output_mount_follows_output_dir(helm: Helm) -> None:
    rendered = render(helm, {"config": {"output_dir": "/var/lib/tap-emulator"}})
    (mount,) = [m for m in container(rendered)["volumeMounts"] if m["name"] == "output"]
    assert mount["mountPath"] == "/var/lib/tap-emulator"


def test_retention_cap_defaults_below_the_emptydir_size_limit(emulator: Rendered) -> None:
    cap = settings(emulator)["retention_max_bytes"]
    assert 0 < cap < 1024 * 1024 * 1024
    assert cap == 1024 * 1024 * 1024 * 80 // 100


def test_retention_cap_follows_a_changed_size_limit(helm: Helm) -> None:
    rendered = render(helm, {"output": {"sizeLimitMiB": 100, "retentionPercent": 50}})
    assert settings(rendered)["retention_max_bytes"] == 50 * 1024 * 1024


def test_retention_cap_at_the_size_limit_fails_with_the_eviction_reason(helm: Helm) -> None:
    error = helm.template_error(
        EMULATOR_CHART,
        EMULATOR_RELEASE,
        EMULATOR_NAMESPACE,
        {"output": {"sizeLimitMiB": 1}, "config": {"retention_max_bytes": 1048576}},
    )
    assert "retention_max_bytes" in error
    assert "evicts" in error


def test_retention_cap_of_zero_is_refused_because_the_volume_would_fill(helm: Helm) -> None:
    error = helm.template_error(
        EMULATOR_CHART, EMULATOR_RELEASE, EMULATOR_NAMESPACE, {"config": {"retention_max_bytes": 0}}
    )
    assert "must be above 0" in error


def test_termination_grace_exceeds_the_drain_timeout(emulator: Rendered) -> None:
    grace = pod_spec(emulator)["terminationGracePeriodSeconds"]
    assert grace > settings(emulator)["drain_timeout_seconds"]


def test_termination_grace_is_derived_from_the_drain_timeout(helm: Helm) -> None:
    rendered = render(helm, {"config": {"drain_timeout_seconds": 45}})
    assert settings(rendered)["drain_timeout_seconds"] == 45
    assert pod_spec(rendered)["terminationGracePeriodSeconds"] == 55


def test_probes_check_healthz_and_readyz_on_the_metrics_port(emulator: Rendered) -> None:
    own = container(emulator)
    assert own["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert own["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_container_has_cpu_and_memory_requests_and_limits(emulator: Rendered) -> None:
    resources = container(emulator)["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) == {"cpu", "memory"}


def test_container_runs_serve_with_the_mounted_settings_file(emulator: Rendered) -> None:
    own = container(emulator)
    assert own["args"] == ["serve", "--config", "/etc/tap-emulator/config.yaml"]
    (mount,) = [m for m in own["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == "/etc/tap-emulator/config.yaml"
    assert mount["readOnly"] is True


def test_settings_file_holds_every_serve_setting(emulator: Rendered) -> None:
    assert set(settings(emulator)) == SERVE_SETTINGS


def test_settings_file_is_accepted_by_the_emulator(emulator: Rendered) -> None:
    """The emulator refuses unknown or invalid settings at start: the chart's must load."""
    loaded = build_settings(settings(emulator))
    assert str(loaded.output_dir) == "/tmp"


def test_settings_file_keeps_integers_and_octal_string_types(emulator: Rendered) -> None:
    loaded = settings(emulator)
    assert loaded["queue_max_bytes"] == 67108864
    assert type(loaded["queue_max_bytes"]) is int
    assert loaded["file_mode"] == "0640"
    assert loaded["fsync"] is False
    assert loaded["trace_id_headers"][0] == "x-b3-traceid"


def test_a_config_value_reaches_the_settings_file(helm: Helm) -> None:
    rendered = render(helm, {"config": {"writers": 8, "name_format": "req_res"}})
    assert settings(rendered)["writers"] == 8
    assert settings(rendered)["name_format"] == "req_res"


def test_changed_settings_change_the_pod_template_checksum(helm: Helm, emulator: Rendered) -> None:
    rendered = render(helm, {"config": {"writers": 8}})

    def checksum(r: Rendered) -> str:
        value = r.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(value["checksum/config"])

    assert checksum(rendered) != checksum(emulator)


def test_container_ports_follow_the_listen_addresses(helm: Helm) -> None:
    rendered = render(
        helm, {"config": {"listen": "0.0.0.0:9443", "metrics_listen": "0.0.0.0:9091"}}
    )
    assert port_number(rendered, "grpc") == 9443
    assert port_number(rendered, "metrics") == 9091
    service_ports = {p["port"] for p in rendered.one("Service")["spec"]["ports"]}
    assert service_ports == {9000, 9090}


def test_image_digest_replaces_the_tag(helm: Helm, emulator: Rendered) -> None:
    assert container(emulator)["image"] == "tap-emulator:0.1.0"
    digest = "sha256:" + "a" * 64
    rendered = render(
        helm, {"image": {"repository": "registry.example/tap-emulator", "digest": digest}}
    )
    assert container(rendered)["image"] == f"registry.example/tap-emulator@{digest}"


def test_network_policy_is_rendered_only_when_enabled(helm: Helm, emulator: Rendered) -> None:
    assert emulator.of_kind("NetworkPolicy") == []
    rendered = render(helm, {"networkPolicy": {"enabled": True}})
    policy = rendered.one("NetworkPolicy")
    kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ports == ["grpc", "metrics"]


def test_tls_secret_is_mounted_and_named_in_the_settings(helm: Helm) -> None:
    rendered = helm.template(
        EMULATOR_CHART,
        EMULATOR_RELEASE,
        EMULATOR_NAMESPACE,
        values_file=EXAMPLES / "emulator-tls-values.yaml",
    )
    loaded = settings(rendered)
    assert loaded["tls_cert_file"] == "/etc/tap-emulator/tls/tls.crt"
    assert loaded["tls_key_file"] == "/etc/tap-emulator/tls/tls.key"
    assert loaded["tls_client_ca_file"] == "/etc/tap-emulator/tls/ca.crt"
    (volume,) = [v for v in pod_spec(rendered)["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "tap-emulator-tls"
    for obj in rendered.objects:
        validate(obj)


# --- the emulator's own sidecar ---------------------------------------------------------------


def pod_annotations(rendered: Rendered) -> dict[str, str]:
    annotations: dict[str, str] = rendered.one("Deployment")["spec"]["template"]["metadata"][
        "annotations"
    ]
    return annotations


def tap_port_tls(rendered: Rendered) -> Obj:
    rule = rendered.one("DestinationRule")
    (setting,) = rule["spec"]["trafficPolicy"]["portLevelSettings"]
    assert setting["port"] == {"number": 9000}
    tls: Obj = setting["tls"]
    return tls


def test_the_tap_port_is_left_out_of_the_emulators_own_sidecar(emulator: Rendered) -> None:
    assert pod_annotations(emulator)[EXCLUDE_INBOUND_PORTS] == "9000"


def test_the_excluded_port_follows_the_listen_address(helm: Helm) -> None:
    rendered = render(helm, {"config": {"listen": "0.0.0.0:9443"}})
    assert pod_annotations(rendered)[EXCLUDE_INBOUND_PORTS] == "9443"


def test_ports_the_user_excludes_are_kept_beside_the_tap_port(helm: Helm) -> None:
    rendered = render(helm, {"podAnnotations": {EXCLUDE_INBOUND_PORTS: "8081,8082", "a": "b"}})
    assert pod_annotations(rendered)[EXCLUDE_INBOUND_PORTS] == "9000,8081,8082"
    assert pod_annotations(rendered)["a"] == "b"


def test_proxies_are_told_to_send_plaintext_to_the_tap_port_of_the_emulator_service(
    emulator: Rendered,
) -> None:
    rule = emulator.one("DestinationRule")
    assert rule["apiVersion"] == "networking.istio.io/v1beta1"
    # Short host names are read in the rule's namespace: the Service the filters send to.
    assert rule["spec"]["host"] == emulator.one("Service")["metadata"]["name"]
    assert rule["metadata"]["namespace"] == EMULATOR_NAMESPACE
    assert rule["spec"]["exportTo"] == ["*"]
    # Only the tap port: the metrics port keeps Istio's mutual TLS.
    assert set(rule["spec"]["trafficPolicy"]) == {"portLevelSettings"}
    assert tap_port_tls(emulator) == {"mode": "DISABLE"}


def test_outside_istio_there_is_no_destination_rule_and_no_sidecar_annotation(
    helm: Helm,
) -> None:
    rendered = render(helm, {"mesh": {"bypassSidecarOnTapPort": False}})
    assert rendered.of_kind("DestinationRule") == []
    assert EXCLUDE_INBOUND_PORTS not in pod_annotations(rendered)


def test_an_emulator_serving_tls_gets_the_proxies_tls_the_user_gives(helm: Helm) -> None:
    tls = {"mode": "SIMPLE", "sni": "tap-emulator.analysis-emulator.svc.cluster.local"}
    rendered = render(helm, {"tls": {"secretName": "s"}, "mesh": {"tapPortTls": tls}})
    assert tap_port_tls(rendered) == tls
    validate(rendered.one("DestinationRule"))


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"tls": {"secretName": "s"}}, "the proxies would send plaintext"),
        ({"mesh": {"tapPortTls": {"mode": "SIMPLE"}}}, "needs the emulator to serve TLS"),
        (
            {"tls": {"secretName": "s"}, "mesh": {"tapPortTls": {"mode": "ISTIO_MUTUAL"}}},
            "no longer serves the tap port",
        ),
    ],
)
def test_tls_the_tap_port_would_not_answer_is_refused_with_the_reason(
    helm: Helm, values: dict[str, Any], reason: str
) -> None:
    error = helm.template_error(EMULATOR_CHART, EMULATOR_RELEASE, EMULATOR_NAMESPACE, values)
    assert "mesh.tapPortTls" in error and reason in error


@pytest.mark.parametrize("extra", [0, -5])
def test_grace_margin_below_one_second_is_refused(helm: Helm, extra: int) -> None:
    error = helm.template_error(
        EMULATOR_CHART,
        EMULATOR_RELEASE,
        EMULATOR_NAMESPACE,
        {"terminationGraceExtraSeconds": extra},
    )
    assert "terminationGraceExtraSeconds" in error


# --- the values schema ------------------------------------------------------------------------

SCHEMA = EMULATOR_CHART / "values.schema.json"


def test_config_schema_is_current_with_the_settings_table() -> None:
    """The lead adds settings to tap_emulator/config.py; the chart's schema must follow."""
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate_chart_schema.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_config_schema_lists_exactly_the_emulator_settings() -> None:
    config = json.loads(SCHEMA.read_text())["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == set(FIELDS)


@pytest.mark.parametrize("example", ["emulator-tls-values.yaml", "emulator-hardened-values.yaml"])
def test_example_values_files_pass_the_schema(helm: Helm, example: str) -> None:
    done = helm.template_text(
        EMULATOR_CHART, EMULATOR_RELEASE, EMULATOR_NAMESPACE, values_file=EXAMPLES / example
    )
    assert done.returncode == 0, done.stderr


def schema_error(helm: Helm, values: dict[str, Any]) -> str:
    return helm.template_error(EMULATOR_CHART, EMULATOR_RELEASE, EMULATOR_NAMESPACE, values)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"config": {"writer": 2}}, "config: Additional property writer is not allowed"),
        ({"Config": {"writers": 2}}, "Additional property Config is not allowed"),
        ({"image": {"pullpolicy": "Always"}}, "image: Additional property pullpolicy"),
        ({"service": {"grpcport": 9000}}, "service: Additional property grpcport"),
        ({"output": {"sizeLimitMib": 10}}, "output: Additional property sizeLimitMib"),
        (
            {"mesh": {"bypassSidecar": False}},
            "mesh: Additional property bypassSidecar is not allowed",
        ),
    ],
)
def test_a_misspelled_key_is_refused_by_name(helm: Helm, values: dict[str, Any], key: str) -> None:
    assert key in schema_error(helm, values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"fsync": "maybe"}}, "config.fsync: Invalid type. Expected: boolean"),
        ({"config": {"writers": 100}}, "config.writers: Must be less than or equal to 64"),
        (
            {"config": {"name_format": "plane"}},
            "config.name_format: config.name_format must be one of",
        ),
        (
            {"config": {"drain_timeout_seconds": "20s"}},
            "config.drain_timeout_seconds: Invalid type",
        ),
        ({"config": {"listen": "0.0.0.0"}}, "config.listen: Does not match pattern"),
        ({"replicaCount": "one"}, "replicaCount: Invalid type. Expected: integer"),
        ({"service": {"grpcPort": 70000}}, "service.grpcPort: Must be less than or equal to 65535"),
        (
            {"mesh": {"tapPortTls": {"mode": "PLAIN"}}},
            "mesh.tapPortTls.mode: mesh.tapPortTls.mode must be one of",
        ),
    ],
)
def test_a_wrong_type_or_range_is_refused_by_name(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    assert message in schema_error(helm, values)


def test_sizes_with_units_are_accepted_as_the_emulator_accepts_them(helm: Helm) -> None:
    rendered = render(helm, {"config": {"queue_max_bytes": "128MiB", "file_mode": "0600"}})
    loaded = build_settings(settings(rendered))
    assert loaded.queue_max_bytes == 128 * 1024 * 1024
    assert loaded.file_mode == 0o600


def schema_generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "generate_chart_schema", REPO / "scripts" / "generate_chart_schema.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def a_setting(name: str, kind: str) -> Any:
    item: Any = dataclasses.field(default=None, metadata={"help": "a new setting"})
    item.name, item.type = name, kind
    return item


def test_schema_generator_maps_an_optional_setting_to_its_type_or_null() -> None:
    schema = schema_generator().field_schema("relay_to", a_setting("relay_to", "str | None"))
    assert schema == {
        "description": "a new setting",
        "anyOf": [{"type": "string"}, {"type": "null"}],
    }


def test_schema_generator_stops_on_a_type_it_cannot_map_and_names_the_setting() -> None:
    with pytest.raises(SystemExit, match="'limits' has type 'dict\\[str, int\\]'"):
        schema_generator().field_schema("limits", a_setting("limits", "dict[str, int]"))
