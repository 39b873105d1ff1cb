#!/usr/bin/env bash
# Chart checks for charts/teresa: lint, render every documented values case,
# validate each object against the Kubernetes schemas, check values.schema.json,
# the CRD copy, RBAC against the operator's API calls, the sidecar example and
# the Dockerfile. No helm binary or cluster needed; Helm's own Go library comes
# from PyPI (helm-python-sdk).
#
#   bash charts/check.sh
#   bash charts/check.sh --render NAMESPACE   # print the default render as YAML
#
# The end-to-end suite (e2e/) renders the chart with --render, so it installs
# exactly the RBAC and labels these checks pass.
#
# Exits non-zero on any failure; the last line is
# "chart-checks: N passed, M failed".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/tests/requirements.txt"
python="${PYTHON:-python3}"

# One virtualenv per requirements file content, reused across runs.
key="$(sha256sum "$requirements" | cut -c1-12)"
venv="${TERESA_CHART_VENV:-/tmp/teresa-chart-venv-$key}"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.installed" ]; then
    echo "chart checks: installing Python dependencies into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    touch "$venv/.installed"
fi

PYTHONDONTWRITEBYTECODE=1 exec "$venv/bin/python" "$here/tests/run_checks.py" "$@"
