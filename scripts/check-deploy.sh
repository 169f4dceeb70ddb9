#!/usr/bin/env bash
# Validates the deployment files that cannot be run here (no Docker engine, no cluster): the
# compose file with docker-compose's own parser, the Kubernetes manifest against its schemas. CI installs Debian's docker-compose; elsewhere the check is
# skipped with a note rather than failing a laptop without it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if command -v docker-compose >/dev/null 2>&1; then
  docker-compose -f docker-compose.yml config -q
  echo "check-deploy: docker-compose.yml is valid"
elif [[ "${CI:-}" == "true" ]]; then
  echo "check-deploy: docker-compose is required in CI (apt-get install docker-compose)" >&2
  exit 1
else
  echo "check-deploy: skipped, docker-compose not installed (apt-get install docker-compose)"
fi

# The Kubernetes manifest against the API schemas (kubernetes-validate, from make tools).
validate="${RUNCAST_TOOLS_DIR:-.tools}/bin/kubernetes-validate"
if [[ -x "$validate" ]]; then
  "$validate" --strict --quiet deploy/kubernetes/runcast.yaml
  echo "check-deploy: deploy/kubernetes/runcast.yaml is valid"
elif [[ "${CI:-}" == "true" ]]; then
  echo "check-deploy: $validate is missing (make tools installs it)" >&2
  exit 1
else
  echo "check-deploy: Kubernetes manifest not checked, run make tools first"
fi
