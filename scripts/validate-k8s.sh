#!/usr/bin/env bash
# Validate every Kubernetes manifest under deploy/k8s/ against the Kubernetes OpenAPI schemas,
# offline: `kubernetes-validate` (PyPI) bundles the schemas, so no cluster and no schema
# download are needed. Installed once into a venv under target/ (reused afterwards).
#
#   scripts/validate-k8s.sh            # all manifests, strict (unknown fields are errors)
#   K8S_VERSION=1.30.0 scripts/validate-k8s.sh
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${K8S_VALIDATE_VENV:-$root/target/k8s-validate-venv}"
k8s_version="${K8S_VERSION:-1.31.0}"

if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate>=1.31'
fi

shopt -s nullglob
# kustomization.yaml is kustomize's own config, not a Kubernetes object.
files=()
for f in "$root"/deploy/k8s/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || files+=("$f")
done
if [ ${#files[@]} -eq 0 ]; then
    echo "validate-k8s: no manifests under deploy/k8s" >&2
    exit 1
fi

"$venv/bin/kubernetes-validate" --strict -k "$k8s_version" "${files[@]}"

# Every file kustomization.yaml lists must exist (kubectl apply -k would fail otherwise).
"$venv/bin/python" - "$root/deploy/k8s/kustomization.yaml" <<'PY'
import os, sys, yaml
path = sys.argv[1]
k = yaml.safe_load(open(path))
missing = [r for r in k.get("resources", []) if not os.path.exists(os.path.join(os.path.dirname(path), r))]
if missing:
    sys.exit(f"validate-k8s: kustomization.yaml lists missing files: {missing}")
print(f"validate-k8s: kustomization.yaml resources present ({len(k['resources'])})")
PY
echo "validate-k8s: ${#files[@]} manifest files valid against Kubernetes $k8s_version"
