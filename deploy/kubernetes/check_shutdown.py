#!/usr/bin/env python3
"""Checks that every pod in the Kubernetes manifests can stop gracefully before the kubelet kills it
(run by scripts/check-deploy.sh with the tools' Python, which has PyYAML, from the repo root).

The kubelet runs preStop, then sends SIGTERM, and sends SIGKILL terminationGracePeriodSeconds after
it started preStop. A Runcast service given RUNCAST_SHUTDOWN_GRACE drains for at most that long
after SIGTERM, so the period must cover the preStop sleep + RUNCAST_SHUTDOWN_GRACE + MARGIN_SECONDS
(process exit, last log lines). Also: every Runcast container sets RUNCAST_SHUTDOWN_GRACE
explicitly (its default, 10s, would hide in the binary), and its preStop, if any, is a plain sleep.
And ws-gateway's minReadySeconds exceeds RUNCAST_WS_DRAIN_RECONNECT_WINDOW: in a rolling update the
next replica drains only after the clients of the previous one have reconnected.
Also parses deploy/nats/values.yaml (the Helm chart's values: not rendered offline).
"""

import pathlib
import re
import sys

import yaml

MARGIN_SECONDS = 5
# ws-gateway's default (crates/ws-gateway/src/lib.rs).
DRAIN_RECONNECT_WINDOW = "5s"
UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def seconds(value):
    """A humantime duration as the services accept it ("20s", "1m 30s", "500ms")."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", value)
    if not parts or re.sub(r"[\d.\sa-z]", "", value):
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * UNITS[u] for n, u in parts)


def check(path, errors):
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    configmaps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in docs if doc.get("kind") == "ConfigMap"}
    for doc in docs:
        if not doc or doc.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        name = f"{path}: {doc['kind']} {doc['metadata']['name']}"
        pod = doc["spec"]["template"]["spec"]
        config = configmaps.get("runcast-config", {})
        if doc["metadata"]["name"] == "ws-gateway":
            window = seconds(config.get("RUNCAST_WS_DRAIN_RECONNECT_WINDOW", DRAIN_RECONNECT_WINDOW))
            if doc["spec"].get("minReadySeconds", 0) <= window:
                errors.append(
                    f"{name}: minReadySeconds must exceed RUNCAST_WS_DRAIN_RECONNECT_WINDOW ({window:g} s), so a"
                    " rolling update drains the next replica only after the last one's clients reconnected"
                )
        period = pod.get("terminationGracePeriodSeconds", 30)
        for container in pod["containers"]:
            if container.get("image", "").split(":")[0].split("/")[-1] != "runcast":
                continue
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if "RUNCAST_SHUTDOWN_GRACE" not in env:
                errors.append(f"{name}: set RUNCAST_SHUTDOWN_GRACE next to terminationGracePeriodSeconds")
                continue
            grace = seconds(env["RUNCAST_SHUTDOWN_GRACE"])
            pre_stop = container.get("lifecycle", {}).get("preStop")
            sleep = 0.0
            if pre_stop:
                command = pre_stop.get("exec", {}).get("command", [])
                if len(command) != 2 or command[0] != "sleep":
                    errors.append(f"{name}: preStop must be [sleep, N] (got {command})")
                    continue
                sleep = float(command[1])
            needed = sleep + grace + MARGIN_SECONDS
            if period < needed:
                errors.append(
                    f"{name}: terminationGracePeriodSeconds {period} < preStop sleep {sleep:g} + "
                    f"RUNCAST_SHUTDOWN_GRACE {grace:g} + {MARGIN_SECONDS} s margin = {needed:g}"
                )
            else:
                print(f"check-shutdown: {name}: {sleep:g} + {grace:g} + {MARGIN_SECONDS} <= {period} s")


def main():
    errors = []
    for path in sorted(pathlib.Path("deploy/kubernetes").glob("*.yaml")):
        check(path, errors)
    values = yaml.safe_load(pathlib.Path("deploy/nats/values.yaml").read_text(encoding="utf-8"))
    cluster, jetstream = values["config"]["cluster"], values["config"]["jetstream"]
    if not (cluster["enabled"] and cluster["replicas"] == 3 and jetstream["enabled"] and jetstream["fileStore"]["enabled"]):
        errors.append("deploy/nats/values.yaml: expected a 3-node cluster with JetStream file storage")
    for error in errors:
        print(f"check-shutdown: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
