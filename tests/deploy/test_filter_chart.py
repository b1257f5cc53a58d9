"""The tap-filter chart over the user guide's configuration table, and its guard."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from cloudcoil.models.istio.networking.v1alpha3 import EnvoyFilter
from deploy_support import (
    EMULATOR_CLUSTER,
    FILTER_CHART,
    POD_SET_LABELS,
    Helm,
    Obj,
    Rendered,
    grpc_sinks,
    last_token,
    tap_configs,
)

RELEASE = "pi2-bookinfo"


@dataclass(frozen=True)
class Scenario:
    """One row of the guide's table: where the instance is installed, with which labels."""

    namespace: str
    values: dict[str, Any] = field(default_factory=dict)


# "To capture traffic from ... do this", as the user guide's configuration overview lists it.
SCENARIOS = {
    "all-pods-in-a-namespace": Scenario("bookinfo"),
    "labeled-pods-in-any-namespace": Scenario(
        "istio-system", {"workloadSelector": {"labels": POD_SET_LABELS}}
    ),
    "labeled-pods-in-a-namespace": Scenario(
        "bookinfo", {"workloadSelector": {"labels": POD_SET_LABELS}}
    ),
}


def render(
    helm: Helm, namespace: str = "bookinfo", values: dict[str, Any] | None = None
) -> Rendered:
    return helm.template(FILTER_CHART, RELEASE, namespace, values)


def by_context(rendered: Rendered) -> dict[str, Obj]:
    found: dict[str, Obj] = {}
    for envoy_filter in rendered.of_kind("EnvoyFilter"):
        (patch,) = envoy_filter["spec"]["configPatches"]
        found[patch["match"]["context"]] = envoy_filter
    return found


def static_config(envoy_filter: Obj) -> Obj:
    (config,) = tap_configs(envoy_filter)
    static: Obj = config["common_config"]["static_config"]
    return static


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> Scenario:
    return SCENARIOS[request.param]


@pytest.fixture(scope="module")
def rendered(helm: Helm, scenario: Scenario) -> Rendered:
    return render(helm, scenario.namespace, scenario.values)


def test_chart_passes_helm_lint(helm: Helm, scenario: Scenario) -> None:
    done = helm.lint(FILTER_CHART, scenario.namespace, scenario.values)
    assert done.returncode == 0, done.stdout + done.stderr


def test_renders_only_envoy_filters_in_the_install_namespace(
    rendered: Rendered, scenario: Scenario
) -> None:
    assert {o["kind"] for o in rendered.objects} == {"EnvoyFilter"}
    assert {o["apiVersion"] for o in rendered.objects} == {"networking.istio.io/v1alpha3"}
    assert {o["metadata"]["namespace"] for o in rendered.objects} == {scenario.namespace}


def test_envoy_filter_names_start_with_f5_tap(rendered: Rendered) -> None:
    names = sorted(o["metadata"]["name"] for o in rendered.objects)
    assert names == ["f5-tap-pi2-bookinfo-inbound", "f5-tap-pi2-bookinfo-outbound"]


def test_envoy_filters_validate_against_the_istio_crd_model(rendered: Rendered) -> None:
    for envoy_filter in rendered.objects:
        model = EnvoyFilter.model_validate(envoy_filter)
        # A field the model does not know would be dropped here: the round trip catches it.
        assert model.model_dump(mode="json", by_alias=True, exclude_none=True) == envoy_filter


def test_inbound_and_outbound_sidecars_get_the_tap_before_the_router(
    rendered: Rendered,
) -> None:
    contexts = by_context(rendered)
    assert sorted(contexts) == ["SIDECAR_INBOUND", "SIDECAR_OUTBOUND"]
    for envoy_filter in contexts.values():
        (patch,) = envoy_filter["spec"]["configPatches"]
        assert patch["applyTo"] == "HTTP_FILTER"
        chain_filter = patch["match"]["listener"]["filterChain"]["filter"]
        assert chain_filter["name"] == "envoy.filters.network.http_connection_manager"
        assert chain_filter["subFilter"]["name"] == "envoy.filters.http.router"
        assert patch["patch"]["operation"] == "INSERT_BEFORE"
        assert patch["patch"]["value"]["name"] == "envoy.filters.http.tap"
        assert patch["patch"]["value"]["typed_config"]["@type"] == (
            "type.googleapis.com/envoy.extensions.filters.http.tap.v3.Tap"
        )


def test_sink_streams_protobuf_to_the_emulator_istio_cluster(rendered: Rendered) -> None:
    for envoy_filter in rendered.objects:
        (sink,) = static_config(envoy_filter)["output_config"]["sinks"]
        assert sink["format"] == "PROTO_BINARY"
        assert sink["streaming_grpc"]["grpc_service"]["envoy_grpc"]["cluster_name"] == (
            EMULATOR_CLUSTER
        )


def test_tap_id_last_token_names_the_direction(rendered: Rendered) -> None:
    contexts = by_context(rendered)
    for context, direction in (("SIDECAR_INBOUND", "inbound"), ("SIDECAR_OUTBOUND", "outbound")):
        (sink,) = grpc_sinks(contexts[context])
        assert last_token(sink["tap_id"]) == direction


def test_workload_selector_matches_the_scenario_labels(
    rendered: Rendered, scenario: Scenario
) -> None:
    wanted = scenario.values.get("workloadSelector")
    for envoy_filter in rendered.objects:
        assert envoy_filter["spec"].get("workloadSelector") == wanted


def test_default_values_capture_streamed_traces_of_every_request(helm: Helm) -> None:
    for envoy_filter in render(helm).objects:
        config = static_config(envoy_filter)
        assert config["match"] == {"any_match": True}
        assert config["output_config"]["streaming"] is True


def test_istio_system_without_labels_fails_because_it_would_capture_the_whole_mesh(
    helm: Helm,
) -> None:
    error = helm.template_error(FILTER_CHART, RELEASE, "istio-system")
    assert "workloadSelector.labels" in error
    assert "all pods in the service mesh" in error
    assert "including the analysis service" in error


def test_istio_system_guard_follows_a_custom_root_namespace(helm: Helm) -> None:
    error = helm.template_error(
        FILTER_CHART, RELEASE, "mesh-root", {"istioRootNamespace": "mesh-root"}
    )
    assert "all pods in the service mesh" in error


def test_analysis_service_namespace_without_labels_fails(helm: Helm) -> None:
    error = helm.template_error(FILTER_CHART, RELEASE, "analysis-emulator")
    assert "capture its own incoming traffic" in error


def test_gateway_filter_is_rendered_only_when_enabled(helm: Helm) -> None:
    rendered = render(
        helm,
        "istio-system",
        {"workloadSelector": {"labels": {"istio": "ingressgateway"}}, "capture": {"gateway": True}},
    )
    gateway = by_context(rendered)["GATEWAY"]
    assert gateway["metadata"]["name"] == "f5-tap-pi2-bookinfo-gateway"
    (sink,) = grpc_sinks(gateway)
    assert last_token(sink["tap_id"]) == "inbound"


def test_inbound_only_capture_renders_one_filter(helm: Helm) -> None:
    rendered = render(helm, values={"capture": {"outbound": False}})
    assert sorted(by_context(rendered)) == ["SIDECAR_INBOUND"]


def test_nothing_to_capture_fails(helm: Helm) -> None:
    error = helm.template_error(
        FILTER_CHART, RELEASE, "bookinfo", {"capture": {"inbound": False, "outbound": False}}
    )
    assert "nothing to capture" in error


def test_buffered_traces_keep_the_byte_limits(helm: Helm) -> None:
    values = {"trace": {"streaming": False, "maxBufferedRxBytes": 4096, "maxBufferedTxBytes": 8192}}
    for envoy_filter in render(helm, values=values).objects:
        output = static_config(envoy_filter)["output_config"]
        assert output["streaming"] is False
        assert output["max_buffered_rx_bytes"] == 4096
        assert output["max_buffered_tx_bytes"] == 8192


def test_request_header_with_value_matches_that_exact_value(helm: Helm) -> None:
    values = {"match": {"requestHeader": {"name": "x-pi2-capture", "value": "yes"}}}
    for envoy_filter in render(helm, values=values).objects:
        assert static_config(envoy_filter)["match"] == {
            "http_request_headers_match": {
                "headers": [{"name": "x-pi2-capture", "string_match": {"exact": "yes"}}]
            }
        }


def test_request_header_without_value_matches_its_presence(helm: Helm) -> None:
    values = {"match": {"requestHeader": {"name": "x-pi2-capture"}}}
    for envoy_filter in render(helm, values=values).objects:
        (header,) = static_config(envoy_filter)["match"]["http_request_headers_match"]["headers"]
        assert header == {"name": "x-pi2-capture", "present_match": True}


def test_a_network_analysis_tool_address_changes_the_cluster_name(helm: Helm) -> None:
    values = {"serviceFqdn": "nat.tools.svc.cluster.local", "servicePort": 7443}
    for envoy_filter in render(helm, values=values).objects:
        (sink,) = grpc_sinks(envoy_filter)
        assert sink["grpc_service"]["envoy_grpc"]["cluster_name"] == (
            "outbound|7443||nat.tools.svc.cluster.local"
        )


def test_admin_sink_waits_for_the_relay_on_config_id_tap_emulator(helm: Helm) -> None:
    rendered = render(helm, values={"sink": "admin", "capture": {"outbound": False}})
    (envoy_filter,) = rendered.objects
    (config,) = tap_configs(envoy_filter)
    assert config["common_config"] == {"admin_config": {"config_id": "tap-emulator"}}


def test_admin_sink_with_two_directions_fails(helm: Helm) -> None:
    error = helm.template_error(FILTER_CHART, RELEASE, "bookinfo", {"sink": "admin"})
    assert "exactly one" in error


def test_unknown_sink_fails(helm: Helm) -> None:
    error = helm.template_error(FILTER_CHART, RELEASE, "bookinfo", {"sink": "udp"})
    assert "sink must be grpc or admin" in error


def test_default_values_follow_the_user_guide() -> None:
    values = yaml.safe_load((FILTER_CHART / "values.yaml").read_text())
    assert values["serviceFqdn"] == "tap-emulator.analysis-emulator.svc.cluster.local"
    assert values["servicePort"] == 9000
    assert values["workloadSelector"]["labels"] == {}


def test_every_value_carries_a_comment_for_the_user() -> None:
    """Each key in values.yaml has a comment on the lines just above it or on its own line."""
    lines = (FILTER_CHART / "values.yaml").read_text().splitlines()
    keys = [i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    undocumented = []
    for i in keys:
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        above = lines[i - 1] if i else ""
        is_parent = i + 1 < len(lines) and lines[i + 1].startswith(" " * (indent + 2))
        commented = above.lstrip().startswith("#") or "#" in line
        if not (commented or is_parent):
            undocumented.append(line.strip())
    assert undocumented == []
