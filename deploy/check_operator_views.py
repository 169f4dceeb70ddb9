#!/usr/bin/env python3
"""Lints the operators' views against the code (run by scripts/check-deploy.sh, from the repo root).

- deploy/grafana/runcast.json: valid JSON, a Grafana dashboard (uid, title, panels with unique ids,
  a grid position, a Prometheus datasource and at least one PromQL target each);
- every series name in the dashboard's PromQL and in deploy/prometheus/alerts.yml is one the
  services export (a "runcast_*" string literal in crates/*/src), a process metric every service
  exports, or one of the few named below from elsewhere (kube-state-metrics);
- histograms are rendered as Prometheus summaries by metrics-exporter-prometheus: a query reads
  their `quantile` label or their `_sum` / `_count`, never `_bucket` (there is none);
- with --promql FILE: writes every dashboard query as a recording rule to FILE (template variables
  replaced), so that `promtool check rules FILE` checks the PromQL syntax.

Names in PENDING are used by the dashboard but not exported yet (issue 15 asks for them): they are
reported, not failed, until the code exports them.
"""

import json
import pathlib
import re
import sys

DASHBOARD = pathlib.Path("deploy/grafana/runcast.json")
ALERTS = pathlib.Path("deploy/prometheus/alerts.yml")

# From the metrics-process collector every service installs (runcast-runtime ops.rs).
PROCESS = {
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
}
# Not Runcast's: kube-state-metrics (RuncastReadinessFlapping).
EXTERNAL = {"kube_pod_status_ready"}
# Used by the dashboard, not exported yet.
PENDING: dict[str, str] = {}

NAME = re.compile(r"\b((?:runcast|process|kube)_[a-z0-9_]+)\b")


def exported():
    """Every runcast_* name in the services' code, and which of them are histograms."""
    names, histograms = set(), set()
    for path in pathlib.Path("crates").glob("*/src/**/*.rs"):
        text = path.read_text(encoding="utf-8")
        names.update(re.findall(r'"(runcast_[a-z0-9_]+)"', text))
        histograms.update(re.findall(r'histogram!\(\s*"(runcast_[a-z0-9_]+)"', text))
    return names, histograms


def strip_strings(expr):
    """PromQL without its quoted label values (a value may look like a name)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def check_names(where, text, names, histograms, errors, pending_used):
    for name in sorted(set(NAME.findall(strip_strings(text)))):
        base = re.sub(r"_(sum|count|bucket)$", "", name)
        if name in PENDING:
            pending_used.add(name)
        if name.endswith("_bucket") and base in histograms:
            errors.append(f"{where}: {name}: histograms are summaries here (quantile label), there is no _bucket")
        elif name in names or name in PROCESS or name in EXTERNAL:
            if name in histograms and not re.search(rf'{name}\{{[^}}]*quantile\s*=', text):
                errors.append(f"{where}: {name} is a summary: select a quantile or use _sum/_count")
        elif base in histograms and name != base:
            pass
        elif name not in PENDING:
            errors.append(f"{where}: {name} is not a metric the services export")


def dashboard_targets(dashboard, errors):
    """(panel title, expr) of every target; structural errors appended."""
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dashboard:
            errors.append(f"{DASHBOARD}: no {key!r}")
    panels = list(dashboard.get("panels", []))
    for panel in list(panels):
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    ids = [panel.get("id") for panel in panels]
    if len(ids) != len(set(ids)) or None in ids:
        errors.append(f"{DASHBOARD}: panel ids must be present and unique")
    for panel in panels:
        title = panel.get("title", f"panel {panel.get('id')}")
        if "gridPos" not in panel:
            errors.append(f"{DASHBOARD}: {title!r} has no gridPos")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("type") != "prometheus":
            errors.append(f"{DASHBOARD}: {title!r} does not use the Prometheus datasource")
        targets = [t for t in panel.get("targets", []) if t.get("expr", "").strip()]
        if not targets:
            errors.append(f"{DASHBOARD}: {title!r} has no PromQL target")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)):
            errors.append(f"{DASHBOARD}: {title!r} repeats a refId")
        for target in targets:
            expr = target["expr"]
            if not NAME.search(strip_strings(expr)):
                errors.append(f"{DASHBOARD}: {title!r}: {expr!r} reads no metric")
            yield title, expr


def main(argv):
    promql_out = argv[argv.index("--promql") + 1] if "--promql" in argv else None
    errors, pending_used = [], set()
    names, histograms = exported()
    if not names:
        errors.append("no runcast_* metric found in crates/*/src: run from the repository root")
    try:
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        print(f"check-operator-views: {DASHBOARD}: {err}", file=sys.stderr)
        return 1
    targets = list(dashboard_targets(dashboard, errors))
    for title, expr in targets:
        check_names(f"{DASHBOARD}: {title!r}", expr, names, histograms, errors, pending_used)
    # The alert rules: every expr line (annotations may name metrics in prose: checked too).
    alerts = "\n".join(line for line in ALERTS.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#"))
    check_names(str(ALERTS), alerts, names, histograms, errors, set())
    if set(NAME.findall(strip_strings(alerts))) & set(PENDING):
        errors.append(f"{ALERTS}: alerts must not rely on metrics not exported yet")

    if promql_out:
        # Grafana's variables, replaced by something PromQL accepts, one rule per query.
        def plain(expr):
            expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
            return re.sub(r"\$\{?[a-z_]+\}?", ".*", expr)

        rules = [{"record": f"dashboard:query_{i}", "expr": plain(expr)} for i, (_, expr) in enumerate(targets)]
        # JSON is YAML: promtool reads it as a rules file.
        pathlib.Path(promql_out).write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))

    for name in sorted(set(PENDING) - pending_used):
        print(f"check-operator-views: {name} is listed as pending but the dashboard does not use it", file=sys.stderr)
    for name in sorted(pending_used):
        state = "now exported: remove it from PENDING" if name in names else "not exported yet"
        print(f"check-operator-views: note: the dashboard uses {name} ({PENDING[name]}), {state}")
    for error in errors:
        print(f"check-operator-views: {error}", file=sys.stderr)
    if errors:
        return 1
    print(f"check-operator-views: {DASHBOARD} ({len(targets)} queries) and {ALERTS} name only exported metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
