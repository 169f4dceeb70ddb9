#!/usr/bin/env bash
# Validates the deployment files that cannot be run here (no Docker engine, no cluster): the
# compose file with docker-compose's own parser; every Kubernetes manifest against its schemas and
# their stop timings (terminationGracePeriodSeconds vs preStop + RUNCAST_SHUTDOWN_GRACE); the
# Prometheus alert rules with promtool (syntax and unit tests); the Grafana dashboard (JSON, its
# PromQL, and that it and the alerts name only metrics the services export). CI installs
# docker-compose and promtool (Debian's prometheus package), and make tools installs
# kubernetes-validate; elsewhere a missing tool skips its check with a note rather than failing
# a laptop without it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Fails in CI, notes the skip elsewhere.
missing() {
  if [[ "${CI:-}" == "true" ]]; then
    echo "check-deploy: $1 is required in CI ($2)" >&2
    exit 1
  fi
  echo "check-deploy: skipped $3, $1 not installed ($2)"
}

if command -v docker-compose >/dev/null 2>&1; then
  docker-compose -f docker-compose.yml config -q
  echo "check-deploy: docker-compose.yml is valid"
else
  missing docker-compose "apt-get install docker-compose" "docker-compose.yml"
fi

# Every Kubernetes manifest against the API schemas (kubernetes-validate, from make tools), then
# the stop timings with the same tools' Python (it has PyYAML).
tools="${RUNCAST_TOOLS_DIR:-.tools}"
validate="$tools/bin/kubernetes-validate"
manifests=(deploy/kubernetes/*.yaml)
if [[ -x "$validate" ]]; then
  "$validate" --strict --quiet "${manifests[@]}"
  echo "check-deploy: ${manifests[*]} are valid"
  "$tools/venv/bin/python" deploy/kubernetes/check_shutdown.py
else
  missing "$validate" "make tools installs it" "the Kubernetes manifests"
fi

# The dashboard: JSON, then its structure and the metric names of it and of the alerts (python3,
# which make tools needs anyway).
python3 -m json.tool deploy/grafana/runcast.json >/dev/null
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python3 deploy/check_operator_views.py --promql "$scratch/dashboard-queries.json"

# The alert rules and the dashboard's PromQL with promtool.
if command -v promtool >/dev/null 2>&1; then
  promtool check rules deploy/prometheus/alerts.yml >/dev/null
  promtool test rules deploy/prometheus/alerts_test.yml >/dev/null
  promtool check rules "$scratch/dashboard-queries.json" >/dev/null
  echo "check-deploy: deploy/prometheus/alerts.yml is valid and passes alerts_test.yml; the dashboard's PromQL parses"
else
  missing promtool "apt-get install prometheus" "the alert rules and the dashboard's PromQL"
fi
