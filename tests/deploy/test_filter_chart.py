"""The tap-filter chart over the user guide's configuration table, its sinks and its guards."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.istio.networking.v1alpha3 import EnvoyFilter
from deploy_support import (
    EMULATOR_CLUSTER,
    FILTER_CHART,
    POD_SET_LABELS,
    WITH_MATCHER_TYPE,
    Helm,
    Obj,
    Rendered,
    ext_proc_configs,
    grpc_sinks,
    http_filter_patches,
    initial_metadata,
    last_token,
    tap_configs,
)

RELEASE = "pi2-bookinfo"
# The :authority of the side streams: the analysis service's host and port.
EMULATOR_AUTHORITY = "tap-emulator.analysis-emulator.svc.cluster.local:9000"
KUBERNETES_VERSION = "1.30"
DEFAULT_PROXY_VERSION = yaml.safe_load((FILTER_CHART / "values.yaml").read_text())["extProc"][
    "proxyVersion"
]
# The attributes every ext_proc filter asks for: what the emulator names files by.
IDENTITY_ATTRIBUTES = ["xds.node.id", "xds.node.cluster", "xds.node.metadata.NAMESPACE"]
CONNECTION_ATTRIBUTES = ["source.address", "source.port", "destination.address", "destination.port"]
# A DNS-1123 subdomain whose labels fit in 63 characters: what Kubernetes accepts as a name.
DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)


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
    """The capture points' EnvoyFilters by Istio context (the cluster patch left out)."""
    found: dict[str, Obj] = {}
    for envoy_filter in rendered.of_kind("EnvoyFilter"):
        patches = http_filter_patches(envoy_filter)
        if patches:
            (patch,) = patches
            found[patch["match"]["context"]] = envoy_filter
    return found


def cluster_patch(rendered: Rendered) -> Obj:
    (envoy_filter,) = [o for o in rendered.objects if o["metadata"]["name"].endswith("-cluster")]
    return envoy_filter


def ext_proc(envoy_filter: Obj) -> Obj:
    (config,) = ext_proc_configs(envoy_filter)
    return config


def inserted(envoy_filter: Obj) -> Obj:
    (patch,) = http_filter_patches(envoy_filter)
    value: Obj = patch["patch"]["value"]
    return value


def static_config(envoy_filter: Obj) -> Obj:
    (config,) = tap_configs(envoy_filter)
    static: Obj = config["common_config"]["static_config"]
    return static


def capture_points(rendered: Rendered) -> list[Obj]:
    return list(by_context(rendered).values())


def find_envoy_grpc(node: Any) -> list[Obj]:
    """Every `envoy_grpc` (a gRPC service's target) anywhere in `node`."""
    if isinstance(node, dict):
        found = [node["envoy_grpc"]] if isinstance(node.get("envoy_grpc"), dict) else []
        return found + [g for value in node.values() for g in find_envoy_grpc(value)]
    if isinstance(node, list):
        return [g for value in node for g in find_envoy_grpc(value)]
    return []


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> Scenario:
    return SCENARIOS[request.param]


@pytest.fixture(scope="module")
def rendered(helm: Helm, scenario: Scenario) -> Rendered:
    return render(helm, scenario.namespace, scenario.values)


# --- every row of the guide's table, default sink (extProc) ---------------------------------


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
    assert names == [
        "f5-tap-pi2-bookinfo-cluster",
        "f5-tap-pi2-bookinfo-inbound",
        "f5-tap-pi2-bookinfo-outbound",
    ]


def test_envoy_filters_validate_against_the_istio_crd_model(rendered: Rendered) -> None:
    for envoy_filter in rendered.objects:
        model = EnvoyFilter.model_validate(envoy_filter)
        # A field the model does not know would be dropped here: the round trip catches it.
        assert model.model_dump(mode="json", by_alias=True, exclude_none=True) == envoy_filter


def test_envoy_filter_metadata_validates_against_the_kubernetes_schema(
    rendered: Rendered,
) -> None:
    """kubernetes-validate has no schema for Istio's CRDs, but the metadata of any object is
    an ObjectMeta: it is checked on a ConfigMap that carries the same metadata."""
    for envoy_filter in rendered.objects:
        carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": envoy_filter["metadata"]}
        kubernetes_validate.validate(carrier, KUBERNETES_VERSION, strict=True)
        assert DNS_NAME.match(envoy_filter["metadata"]["name"])
        assert all(len(value) <= 63 for value in envoy_filter["metadata"]["labels"].values())


def test_inbound_and_outbound_sidecars_get_ext_proc_before_the_router(
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
        assert patch["patch"]["value"]["name"] == "envoy.filters.http.ext_proc"


def test_ext_proc_observes_and_never_fails_a_request(rendered: Rendered) -> None:
    for envoy_filter in capture_points(rendered):
        config = ext_proc(envoy_filter)
        assert config["observability_mode"] is True
        assert config["failure_mode_allow"] is True
        assert config["deferred_close_timeout"] == "5s"
        assert "timeout" not in config["grpc_service"]


def test_ext_proc_streams_to_the_emulator_istio_cluster(rendered: Rendered) -> None:
    for envoy_filter in capture_points(rendered):
        grpc_service = ext_proc(envoy_filter)["grpc_service"]
        assert grpc_service["envoy_grpc"] == {
            "cluster_name": EMULATOR_CLUSTER,
            "authority": EMULATOR_AUTHORITY,
        }


def test_the_side_streams_authority_is_a_host_and_port_not_the_cluster_name(
    helm: Helm,
) -> None:
    """Without an authority Envoy sends the cluster name, whose "|" an HTTP/2 peer (the
    analysis service's own sidecar) refuses, resetting the whole connection."""
    values = {"serviceFqdn": "nat.tools.svc.cluster.local", "servicePort": 7443}
    for values_sink in ({}, GRPC):
        for envoy_filter in capture_points(render(helm, values={**values, **values_sink})):
            (envoy_grpc,) = find_envoy_grpc(envoy_filter)
            assert envoy_grpc["authority"] == "nat.tools.svc.cluster.local:7443"
            assert "|" not in envoy_grpc["authority"]


def test_ext_proc_metadata_names_the_capture_point_and_the_trace_settings(
    rendered: Rendered,
) -> None:
    contexts = by_context(rendered)
    for context, direction in (("SIDECAR_INBOUND", "inbound"), ("SIDECAR_OUTBOUND", "outbound")):
        assert initial_metadata(ext_proc(contexts[context])) == {
            "x-tap-id": f"{RELEASE}-{direction}",
            "x-tap-streaming": "true",
            "x-tap-max-buffered-rx-bytes": "1048576",
            "x-tap-max-buffered-tx-bytes": "1048576",
            "x-tap-record-headers-received-time": "false",
            "x-tap-record-downstream-connection": "false",
        }


def test_ext_proc_sends_every_part_of_the_transaction(rendered: Rendered) -> None:
    for envoy_filter in capture_points(rendered):
        assert ext_proc(envoy_filter)["processing_mode"] == {
            "request_header_mode": "SEND",
            "response_header_mode": "SEND",
            "request_body_mode": "STREAMED",
            "response_body_mode": "STREAMED",
            "request_trailer_mode": "SEND",
            "response_trailer_mode": "SEND",
        }


def test_ext_proc_asks_only_for_the_identity_attributes(rendered: Rendered) -> None:
    for envoy_filter in capture_points(rendered):
        config = ext_proc(envoy_filter)
        assert config["request_attributes"] == IDENTITY_ATTRIBUTES
        assert "response_attributes" not in config


def test_capture_points_reach_only_proxies_with_observability_mode(rendered: Rendered) -> None:
    for envoy_filter in rendered.objects:
        for patch in envoy_filter["spec"]["configPatches"]:
            assert patch["match"]["proxy"] == {"proxyVersion": DEFAULT_PROXY_VERSION}


@pytest.mark.parametrize("version", ["1.23.0", "1.23.6", "1.24-dev", "1.28.1", "1.99.0", "2.0.0"])
def test_default_proxy_version_selects_istio_1_23_and_later(version: str) -> None:
    assert re.search(DEFAULT_PROXY_VERSION, version)


@pytest.mark.parametrize("version", ["1.22.8", "1.2.3", "1.9.0", "1.11.8-am4", "0.8.0", ""])
def test_default_proxy_version_leaves_older_proxies_alone(version: str) -> None:
    assert not re.search(DEFAULT_PROXY_VERSION, version)


def test_workload_selector_matches_the_scenario_labels(
    rendered: Rendered, scenario: Scenario
) -> None:
    wanted = scenario.values.get("workloadSelector")
    for envoy_filter in rendered.objects:
        assert envoy_filter["spec"].get("workloadSelector") == wanted


def test_cluster_patch_adds_http2_keepalive_to_the_emulator_cluster(rendered: Rendered) -> None:
    (patch,) = cluster_patch(rendered)["spec"]["configPatches"]
    assert patch["applyTo"] == "CLUSTER"
    assert patch["match"]["context"] == "ANY"
    assert patch["match"]["cluster"] == {"name": EMULATOR_CLUSTER}
    assert patch["patch"]["operation"] == "MERGE"
    options = patch["patch"]["value"]["typed_extension_protocol_options"]
    (protocol,) = options.values()
    assert protocol["@type"].endswith("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    http2 = protocol["explicit_http_config"]["http2_protocol_options"]
    assert http2 == {"connection_keepalive": {"interval": "10s", "timeout": "5s"}}


def test_cluster_patch_leaves_istio_circuit_breakers_alone(rendered: Rendered) -> None:
    """Istio already sets them to 4294967295, and a MERGE would only append ignored ones."""
    (patch,) = cluster_patch(rendered)["spec"]["configPatches"]
    assert "circuit_breakers" not in patch["patch"]["value"]


# --- options of the extProc sink -------------------------------------------------------------

# Each option beside the guide's table, with where it is installed.
OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "gateway": (
        "istio-system",
        {"workloadSelector": {"labels": {"istio": "ingressgateway"}}, "capture": {"gateway": True}},
    ),
    "header-match": ("bookinfo", {"match": {"requestHeader": {"name": "x-pi2", "value": "1"}}}),
    "sampling": ("bookinfo", {"sampling": {"percent": 12.5}}),
    "recorded-extras": (
        "bookinfo",
        {"trace": {"recordHeadersReceivedTime": True, "recordDownstreamConnection": True}},
    ),
    "buffered": ("bookinfo", {"trace": {"streaming": False, "maxBufferedRxBytes": 4096}}),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_option_renders_objects_istio_and_kubernetes_accept(helm: Helm, option: str) -> None:
    namespace, values = OPTIONS[option]
    rendered = render(helm, namespace, values)
    assert helm.lint(FILTER_CHART, namespace, values).returncode == 0
    for envoy_filter in rendered.objects:
        model = EnvoyFilter.model_validate(envoy_filter)
        assert model.model_dump(mode="json", by_alias=True, exclude_none=True) == envoy_filter
        carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": envoy_filter["metadata"]}
        kubernetes_validate.validate(carrier, KUBERNETES_VERSION, strict=True)


def test_gateway_filter_is_rendered_only_when_enabled(helm: Helm) -> None:
    rendered = render(
        helm,
        "istio-system",
        {"workloadSelector": {"labels": {"istio": "ingressgateway"}}, "capture": {"gateway": True}},
    )
    gateway = by_context(rendered)["GATEWAY"]
    assert gateway["metadata"]["name"] == "f5-tap-pi2-bookinfo-gateway"
    tap_id = initial_metadata(ext_proc(gateway))["x-tap-id"]
    assert tap_id == "pi2-bookinfo-gateway-inbound"
    assert last_token(tap_id) == "inbound"
    assert "GATEWAY" not in by_context(render(helm))


def test_inbound_only_capture_renders_one_filter_and_the_cluster_patch(helm: Helm) -> None:
    rendered = render(helm, values={"capture": {"outbound": False}})
    assert sorted(by_context(rendered)) == ["SIDECAR_INBOUND"]
    assert cluster_patch(rendered)


def test_default_values_run_ext_proc_unwrapped_for_every_request(helm: Helm) -> None:
    for envoy_filter in capture_points(render(helm)):
        assert inserted(envoy_filter)["typed_config"]["@type"].endswith("ExternalProcessor")


def skip_matchers(envoy_filter: Obj) -> list[Obj]:
    typed_config = inserted(envoy_filter)["typed_config"]
    assert typed_config["@type"] == WITH_MATCHER_TYPE
    assert typed_config["extension_config"]["name"] == "envoy.filters.http.ext_proc"
    matchers: list[Obj] = typed_config["xds_matcher"]["matcher_list"]["matchers"]
    for matcher in matchers:
        action = matcher["on_match"]["action"]["typed_config"]["@type"]
        assert action.endswith("envoy.extensions.filters.common.matcher.action.v3.SkipFilter")
    return matchers


def header_input(name: str) -> Obj:
    return {
        "name": "request-header",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
            "header_name": name,
        },
    }


def test_request_header_with_value_skips_requests_without_that_exact_value(helm: Helm) -> None:
    values = {"match": {"requestHeader": {"name": "x-pi2-capture", "value": "yes"}}}
    for envoy_filter in capture_points(render(helm, values=values)):
        (matcher,) = skip_matchers(envoy_filter)
        assert matcher["predicate"] == {
            "not_matcher": {
                "single_predicate": {
                    "input": header_input("x-pi2-capture"),
                    "value_match": {"exact": "yes"},
                }
            }
        }


def test_request_header_without_value_skips_requests_without_the_header(helm: Helm) -> None:
    values = {"match": {"requestHeader": {"name": "x-pi2-capture"}}}
    for envoy_filter in capture_points(render(helm, values=values)):
        (matcher,) = skip_matchers(envoy_filter)
        single = matcher["predicate"]["not_matcher"]["single_predicate"]
        assert single["input"] == header_input("x-pi2-capture")
        assert single["value_match"] == {"safe_regex": {"google_re2": {}, "regex": ".*"}}


def test_wrapped_ext_proc_is_the_same_filter(helm: Helm) -> None:
    plain = {o["metadata"]["name"]: ext_proc(o) for o in capture_points(render(helm))}
    values = {"match": {"requestHeader": {"name": "x-pi2"}}, "sampling": {"percent": 5}}
    wrapped = {
        o["metadata"]["name"]: ext_proc(o) for o in capture_points(render(helm, values=values))
    }
    assert wrapped == plain


@pytest.mark.parametrize(
    ("percent", "threshold"), [(0, 0), (12.34, 1234), (50, 5000), (99.99, 9999)]
)
def test_sampling_skips_requests_whose_request_id_hashes_at_or_above_the_percentage(
    helm: Helm, percent: float, threshold: int
) -> None:
    for envoy_filter in capture_points(render(helm, values={"sampling": {"percent": percent}})):
        (matcher,) = skip_matchers(envoy_filter)
        single = matcher["predicate"]["single_predicate"]
        assert single["input"] == header_input("x-request-id")
        hashing = single["custom_match"]["typed_config"]
        assert hashing["@type"].endswith("consistent_hashing.v3.ConsistentHashing")
        assert (hashing["threshold"], hashing["modulo"]) == (threshold, 10000)


def test_header_match_and_sampling_each_skip(helm: Helm) -> None:
    values = {"match": {"requestHeader": {"name": "x-pi2"}}, "sampling": {"percent": 25}}
    for envoy_filter in capture_points(render(helm, values=values)):
        header, sampling = skip_matchers(envoy_filter)
        assert "not_matcher" in header["predicate"]
        assert "custom_match" in sampling["predicate"]["single_predicate"]


def test_buffered_traces_are_announced_with_their_byte_limits(helm: Helm) -> None:
    values = {"trace": {"streaming": False, "maxBufferedRxBytes": 4096, "maxBufferedTxBytes": 8192}}
    for envoy_filter in capture_points(render(helm, values=values)):
        metadata = initial_metadata(ext_proc(envoy_filter))
        assert metadata["x-tap-streaming"] == "false"
        assert metadata["x-tap-max-buffered-rx-bytes"] == "4096"
        assert metadata["x-tap-max-buffered-tx-bytes"] == "8192"


def test_a_body_kept_to_zero_bytes_is_not_sent(helm: Helm) -> None:
    values = {"trace": {"maxBufferedRxBytes": 0}}
    for envoy_filter in capture_points(render(helm, values=values)):
        mode = ext_proc(envoy_filter)["processing_mode"]
        assert mode["request_body_mode"] == "NONE"
        assert mode["response_body_mode"] == "STREAMED"


def test_recorded_extras_add_their_attributes_and_metadata(helm: Helm) -> None:
    values = {"trace": {"recordHeadersReceivedTime": True, "recordDownstreamConnection": True}}
    for envoy_filter in capture_points(render(helm, values=values)):
        config = ext_proc(envoy_filter)
        assert config["request_attributes"] == [
            *IDENTITY_ATTRIBUTES,
            *CONNECTION_ATTRIBUTES,
            "request.time",
        ]
        metadata = initial_metadata(config)
        assert metadata["x-tap-record-headers-received-time"] == "true"
        assert metadata["x-tap-record-downstream-connection"] == "true"


def test_deferred_close_and_keepalive_follow_the_values(helm: Helm) -> None:
    values = {
        "extProc": {
            "deferredCloseTimeout": "2.5s",
            "keepalive": {"interval": "3s", "timeout": "1s"},
        }
    }
    rendered = render(helm, values=values)
    for envoy_filter in capture_points(rendered):
        assert ext_proc(envoy_filter)["deferred_close_timeout"] == "2.5s"
    (patch,) = cluster_patch(rendered)["spec"]["configPatches"]
    (protocol,) = patch["patch"]["value"]["typed_extension_protocol_options"].values()
    keepalive = protocol["explicit_http_config"]["http2_protocol_options"]["connection_keepalive"]
    assert keepalive == {"interval": "3s", "timeout": "1s"}


def test_an_empty_proxy_version_reaches_every_proxy(helm: Helm) -> None:
    rendered = render(helm, values={"extProc": {"proxyVersion": ""}})
    for envoy_filter in rendered.objects:
        for patch in envoy_filter["spec"]["configPatches"]:
            assert "proxy" not in patch["match"]


def test_a_network_analysis_tool_address_changes_the_cluster_name(helm: Helm) -> None:
    values = {"serviceFqdn": "nat.tools.svc.cluster.local", "servicePort": 7443}
    rendered = render(helm, values=values)
    for envoy_filter in capture_points(rendered):
        cluster = ext_proc(envoy_filter)["grpc_service"]["envoy_grpc"]["cluster_name"]
        assert cluster == "outbound|7443||nat.tools.svc.cluster.local"
    (patch,) = cluster_patch(rendered)["spec"]["configPatches"]
    assert patch["match"]["cluster"] == {"name": "outbound|7443||nat.tools.svc.cluster.local"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"extProc": {"deferredCloseTimeout": "0s"}}, "must be above 0s"),
        ({"extProc": {"keepalive": {"timeout": "0s"}}}, "extProc.keepalive.timeout"),
    ],
)
def test_durations_that_would_break_the_capture_are_refused(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    assert message in helm.template_error(FILTER_CHART, RELEASE, "bookinfo", values)


# --- sink grpc (vendor proxies) and sink admin (the relay) ---------------------------------


GRPC = {"sink": "grpc"}


def test_grpc_sink_streams_protobuf_to_the_emulator_istio_cluster(helm: Helm) -> None:
    rendered = render(helm, values=GRPC)
    assert sorted(o["metadata"]["name"] for o in rendered.objects) == [
        "f5-tap-pi2-bookinfo-inbound",
        "f5-tap-pi2-bookinfo-outbound",
    ]
    for envoy_filter in rendered.objects:
        assert inserted(envoy_filter)["name"] == "envoy.filters.http.tap"
        assert "proxy" not in http_filter_patches(envoy_filter)[0]["match"]
        (sink,) = static_config(envoy_filter)["output_config"]["sinks"]
        assert sink["format"] == "PROTO_BINARY"
        assert sink["streaming_grpc"]["grpc_service"]["envoy_grpc"]["cluster_name"] == (
            EMULATOR_CLUSTER
        )


def test_grpc_sink_tap_id_last_token_names_the_direction(helm: Helm) -> None:
    contexts = by_context(render(helm, values=GRPC))
    for context, direction in (("SIDECAR_INBOUND", "inbound"), ("SIDECAR_OUTBOUND", "outbound")):
        (sink,) = grpc_sinks(contexts[context])
        assert last_token(sink["tap_id"]) == direction


def test_grpc_sink_captures_streamed_traces_of_every_request(helm: Helm) -> None:
    for envoy_filter in render(helm, values=GRPC).objects:
        config = static_config(envoy_filter)
        assert config["match"] == {"any_match": True}
        assert config["output_config"]["streaming"] is True


def test_grpc_sink_keeps_the_byte_limits(helm: Helm) -> None:
    values = {**GRPC, "trace": {"streaming": False, "maxBufferedRxBytes": 4096}}
    for envoy_filter in render(helm, values=values).objects:
        output = static_config(envoy_filter)["output_config"]
        assert output["streaming"] is False
        assert output["max_buffered_rx_bytes"] == 4096


def test_grpc_sink_request_header_with_value_matches_that_exact_value(helm: Helm) -> None:
    values = {**GRPC, "match": {"requestHeader": {"name": "x-pi2-capture", "value": "yes"}}}
    for envoy_filter in render(helm, values=values).objects:
        assert static_config(envoy_filter)["match"] == {
            "http_request_headers_match": {
                "headers": [{"name": "x-pi2-capture", "string_match": {"exact": "yes"}}]
            }
        }


def test_grpc_sink_request_header_without_value_matches_its_presence(helm: Helm) -> None:
    values = {**GRPC, "match": {"requestHeader": {"name": "x-pi2-capture"}}}
    for envoy_filter in render(helm, values=values).objects:
        (header,) = static_config(envoy_filter)["match"]["http_request_headers_match"]["headers"]
        assert header == {"name": "x-pi2-capture", "present_match": True}


def test_grpc_sink_refuses_sampling(helm: Helm) -> None:
    error = helm.template_error(
        FILTER_CHART, RELEASE, "bookinfo", {**GRPC, "sampling": {"percent": 50}}
    )
    assert "sampling.percent 50 needs sink extProc" in error


def test_admin_sink_waits_for_the_relay_on_config_id_tap_emulator(helm: Helm) -> None:
    rendered = render(helm, values={"sink": "admin", "capture": {"outbound": False}})
    (envoy_filter,) = rendered.objects
    (config,) = tap_configs(envoy_filter)
    assert config["common_config"] == {"admin_config": {"config_id": "tap-emulator"}}


def test_admin_sink_with_two_directions_fails(helm: Helm) -> None:
    error = helm.template_error(FILTER_CHART, RELEASE, "bookinfo", {"sink": "admin"})
    assert "exactly one" in error


# --- guards and the values schema ------------------------------------------------------------


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


def test_nothing_to_capture_fails(helm: Helm) -> None:
    error = helm.template_error(
        FILTER_CHART, RELEASE, "bookinfo", {"capture": {"inbound": False, "outbound": False}}
    )
    assert "nothing to capture" in error


def test_unknown_sink_is_refused_with_the_choices(helm: Helm) -> None:
    error = helm.template_error(FILTER_CHART, RELEASE, "bookinfo", {"sink": "udp"})
    assert "sink" in error
    assert all(choice in error for choice in ('"extProc"', '"grpc"', '"admin"'))


@pytest.mark.parametrize(
    ("values", "key"),
    [
        # The typo that would silently capture the whole namespace.
        (
            {"workloadSelector": {"label": {"app": "reviews"}}},
            "workloadSelector: Additional property label",
        ),
        (
            {"workloadselector": {"labels": {"app": "reviews"}}},
            "Additional property workloadselector",
        ),
        ({"capture": {"inbund": True}}, "capture: Additional property inbund"),
        ({"extProc": {"keepAlive": {"interval": "5s"}}}, "extProc: Additional property keepAlive"),
        ({"sampling": {"percentage": 10}}, "sampling: Additional property percentage"),
    ],
)
def test_a_misspelled_key_is_refused_by_name(helm: Helm, values: dict[str, Any], key: str) -> None:
    assert key in helm.template_error(FILTER_CHART, RELEASE, "bookinfo", values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"servicePort": "9000"}, "servicePort: Invalid type. Expected: integer, given: string"),
        ({"trace": {"streaming": "yes"}}, "trace.streaming: Invalid type. Expected: boolean"),
        (
            {"workloadSelector": {"labels": {"app": True}}},
            "workloadSelector.labels.app: Invalid type",
        ),
        ({"sampling": {"percent": 150}}, "sampling.percent: Must be less than or equal to 100"),
        ({"servicePort": 70000}, "servicePort: Must be less than or equal to 65535"),
        ({"extProc": {"deferredCloseTimeout": 5}}, "extProc.deferredCloseTimeout: Invalid type"),
        (
            {"extProc": {"keepalive": {"interval": "10 s"}}},
            "extProc.keepalive.interval: Does not match",
        ),
    ],
)
def test_a_wrong_type_or_range_is_refused_by_name(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    assert message in helm.template_error(FILTER_CHART, RELEASE, "bookinfo", values)


# --- NOTES and values.yaml -------------------------------------------------------------------


def test_notes_say_plainly_that_stock_proxies_abort_on_the_grpc_sink(helm: Helm) -> None:
    notes = " ".join(helm.notes(FILTER_CHART, RELEASE, "bookinfo", GRPC).split())
    assert "stock Istio and Envoy proxies do not implement that sink and abort" in notes


def test_notes_of_the_default_sink_name_the_proxies_it_reaches(helm: Helm) -> None:
    notes = " ".join(helm.notes(FILTER_CHART, RELEASE, "bookinfo").split())
    assert "ext_proc filter in observability mode" in notes
    assert "Istio 1.23 / Envoy 1.31 and later" in notes
    assert "helm uninstall pi2-bookinfo --namespace bookinfo" in notes


def test_notes_of_a_sampled_capture_give_the_percentage(helm: Helm) -> None:
    notes = helm.notes(FILTER_CHART, RELEASE, "bookinfo", {"sampling": {"percent": 12.5}})
    assert "(12.5 % of requests)" in notes


def test_default_values_follow_the_user_guide() -> None:
    values = yaml.safe_load((FILTER_CHART / "values.yaml").read_text())
    assert values["serviceFqdn"] == "tap-emulator.analysis-emulator.svc.cluster.local"
    assert values["servicePort"] == 9000
    assert values["workloadSelector"]["labels"] == {}
    assert values["sink"] == "extProc"
    assert values["sampling"]["percent"] == 100


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


def test_every_value_is_described_by_the_schema() -> None:
    """values.yaml and values.schema.json list the same keys, at every level."""
    import json

    schema = json.loads((FILTER_CHART / "values.schema.json").read_text())
    values = yaml.safe_load((FILTER_CHART / "values.yaml").read_text())

    def missing(value: Any, part: Obj, path: str) -> list[str]:
        if not isinstance(value, dict) or "properties" not in part:
            return []
        found = []
        for key, inner in value.items():
            if key not in part["properties"]:
                found.append(f"{path}{key}")
            else:
                found += missing(inner, part["properties"][key], f"{path}{key}.")
        return found

    assert missing(values, schema, "") == []
