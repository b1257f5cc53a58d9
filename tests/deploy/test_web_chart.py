"""The web page in the emulator's chart: on the pod's loopback, never in the Service, reached
with the port-forward the NOTES print; turned off with an empty `config.ui_listen`."""

from __future__ import annotations

import yaml
from deploy_support import EMULATOR_CHART, EMULATOR_NAMESPACE, EMULATOR_RELEASE, Helm, Rendered

FORWARD = (
    "kubectl --namespace analysis-emulator port-forward "
    "deploy/pi2-analysis-emulator-tap-emulator 8080:8080"
)


def test_the_page_listens_on_the_pods_loopback_by_default(emulator: Rendered) -> None:
    settings = yaml.safe_load(emulator.one("ConfigMap")["data"]["config.yaml"])

    assert settings["ui_listen"] == "127.0.0.1:8080"
    assert settings["ui_max_transactions"] == 10000


def test_the_page_is_neither_a_service_port_nor_a_container_port(emulator: Rendered) -> None:
    service_ports = {port["port"] for port in emulator.one("Service")["spec"]["ports"]}
    deployment = emulator.one("Deployment")["spec"]["template"]["spec"]
    container_ports = {p["containerPort"] for c in deployment["containers"] for p in c["ports"]}

    assert 8080 not in service_ports | container_ports
    assert service_ports == {9000, 9090}


def test_the_notes_give_the_port_forward_and_say_why(helm: Helm) -> None:
    notes = " ".join(helm.notes(EMULATOR_CHART, EMULATOR_RELEASE, EMULATOR_NAMESPACE).split())

    assert FORWARD in notes
    assert "http://127.0.0.1:8080/" in notes
    assert "the Service does not expose it" in notes


def test_the_notes_follow_a_changed_page_port_and_say_nothing_when_it_is_off(
    helm: Helm,
) -> None:
    moved = helm.notes(
        EMULATOR_CHART,
        EMULATOR_RELEASE,
        EMULATOR_NAMESPACE,
        {"config": {"ui_listen": "127.0.0.1:8181"}},
    )
    off = helm.notes(
        EMULATOR_CHART, EMULATOR_RELEASE, EMULATOR_NAMESPACE, {"config": {"ui_listen": ""}}
    )

    assert "8080:8181" in " ".join(moved.split())
    assert "port-forward" not in off
