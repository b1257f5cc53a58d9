"""deploy/README.md carries the user guide's commands, and they work with our charts."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from deploy_support import EXAMPLES, REPO, Helm, run, validate_object

README = REPO / "deploy" / "README.md"

# The guide's commands with our chart paths (the guide's paths are those of the vendor's
# release bundle; deploy/README.md maps them), as a user would type them.
GUIDE_COMMANDS = [
    "kubectl label namespace <networkAnalysisToolNamespaceName> istio-injection=enabled "
    "--overwrite",
    "kubectl create namespace analysis-emulator",
    "kubectl label namespace analysis-emulator istio-injection=enabled --overwrite",
    "helm install pi2-analysis-emulator deploy/charts/tap-emulator --namespace analysis-emulator",
    "cd deploy/charts/tap-filter",
    "cp values.yaml <instanceOverrideValuesFilename>",
    "helm install <packetInspector2FilterInstanceName> deploy/charts/tap-filter "
    "--namespace <instanceNamespaceName> --values <instanceOverrideValuesFilename>",
    "helm uninstall <packetInspector2FilterInstanceName> --namespace <instanceNamespaceName>",
    "kubectl get envoyfilters --all-namespaces | grep f5-tap-",
    "helm uninstall pi2-analysis-emulator --namespace analysis-emulator",
]

# What the guide's placeholders stand for in the example of labeled pods in any namespace.
PLACEHOLDERS = {
    "<packetInspector2FilterInstanceName>": "pi2-bookinfo-app-reviews2",
    "<instanceNamespaceName>": "istio-system",
    "<instanceOverrideValuesFilename>": str(
        EXAMPLES / "pi2-override-values-bookinfo-app-reviews2.yaml"
    ),
}


def readme_commands() -> list[str]:
    """Every `$ ` command in the README, continuation lines joined, spaces collapsed."""
    text = re.sub(r"\\\n\s*", " ", README.read_text())
    return [
        " ".join(match.split()) for match in re.findall(r"^\s*\$ (.+)$", text, flags=re.MULTILINE)
    ]


def readme_command(prefix: str) -> str:
    (found,) = [c for c in readme_commands() if c.startswith(prefix)]
    return found


@pytest.mark.parametrize("command", GUIDE_COMMANDS)
def test_readme_gives_the_guide_command(command: str) -> None:
    assert command in readme_commands()


def test_readme_keeps_the_guide_troubleshooting_line() -> None:
    text = " ".join(README.read_text().split())
    assert "There are no packets being captured." in text
    assert "Verify that sidecar proxies are injected in workloads that should be capturing" in (
        text
    )


def test_readme_maps_the_guide_chart_paths_to_ours() -> None:
    text = README.read_text()
    assert "| `samples/aspenmesh/tap-emulator` | `deploy/charts/tap-emulator` |" in text
    assert "| `manifests/charts/tap-filter` | `deploy/charts/tap-filter` |" in text


def test_readme_emulator_install_renders_the_service_filters_expect(helm: Helm) -> None:
    argv = shlex.split(readme_command("helm install pi2-analysis-emulator"))
    argv[1] = "template"
    done = run([helm.binary, *argv[1:]])
    assert done.returncode == 0, done.stderr
    services = [o for o in yaml.safe_load_all(done.stdout) if o and o["kind"] == "Service"]
    assert [(s["metadata"]["name"], s["metadata"]["namespace"]) for s in services] == [
        ("tap-emulator", "analysis-emulator")
    ]


def test_readme_filter_install_renders_filters_found_by_the_uninstall_check(helm: Helm) -> None:
    command = readme_command("helm install <packetInspector2FilterInstanceName>")
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    argv = shlex.split(command)
    argv[1] = "template"
    done = run([helm.binary, *argv[1:]])
    assert done.returncode == 0, done.stderr
    names = [o["metadata"]["name"] for o in yaml.safe_load_all(done.stdout) if o]
    assert names
    assert all("f5-tap-" in name for name in names)


def test_readme_bridge_install_forwards_to_the_tool_and_passes_the_kubernetes_schema(
    helm: Helm,
) -> None:
    command = readme_command("helm upgrade --install pi2-analysis-emulator")
    tool = "packet-analyzer.analysis-tools.svc.cluster.local:9000"
    command = command.replace(
        "<networkAnalysisToolServiceName>.<networkAnalysisToolNamespaceName>"
        ".svc.cluster.local:<port>",
        tool,
    )
    argv = shlex.split(command)
    assert argv[1:3] == ["upgrade", "--install"]
    done = run([helm.binary, "template", *argv[3:]])
    assert done.returncode == 0, done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    for obj in objects:
        validate_object(obj)
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert yaml.safe_load(config_map["data"]["config.yaml"])["forward_to"] == tool
    services = [o["metadata"]["name"] for o in objects if o["kind"] == "Service"]
    assert services == ["tap-emulator"]  # filter instances keep their default serviceFqdn
