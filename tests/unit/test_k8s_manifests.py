"""deploy/kubernetes/: schema-valid offline, and consistent with agentlatd itself.

Schemas: the Kubernetes JSON schemas shipped inside the kubernetes-validate
package (PyPI kubernetes-validate 1.37.0: kubernetes-json-schema
v1.25.0 .. v1.37.0, "-local-strict" = unknown fields are errors), checked with
jsonschema, no network. Validated against the oldest and the newest version
it ships, so a field that exists only in new releases is caught.

Beyond the schema: the ConfigMap's policy loads with agentlatd's own policy
loader; the DaemonSet has what the daemon needs (privileged, hostPID,
hostNetwork, /sys, the state dir and socket on a hostPath agent pods mount,
probes on the metrics port, a grace period that covers rollback); its
command parses with agentlatd's CLI; and the Prometheus job, relabelled the
way Prometheus does, selects exactly the agentlatd pod's metrics port.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from agentlatd import policy as policy_mod
from agentlatd.metrics import parse_listen

try:
    import yaml
except ImportError:  # comes with kubernetes-validate
    yaml = None

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
K8S_VERSIONS = ("1.25.0", "1.37.0")


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed: it is a dev dependency "
                    "(pyproject [project.optional-dependencies] dev)")
    pytest.skip(f"{what} not installed (pip install kubernetes-validate)")


def _kv() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate")
    return kubernetes_validate


def _docs(name: str) -> list[dict[str, Any]]:
    if yaml is None:
        _missing("PyYAML")
    with open(DEPLOY / name, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _all() -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for p in sorted(DEPLOY.glob("*.yaml")):
        if p.name == "prometheus-scrape.yaml":
            continue
        for d in _docs(p.name):
            out[(d["kind"], d["metadata"]["name"])] = d
    return out


def _daemonset() -> dict[str, Any]:
    return _all()[("DaemonSet", "agentlatd")]


def _container() -> dict[str, Any]:
    (c,) = _daemonset()["spec"]["template"]["spec"]["containers"]
    return c


def _policy() -> policy_mod.Policy:
    cm = _all()[("ConfigMap", "agentlatd-policy")]
    return policy_mod.loads(cm["data"]["agentlatd.toml"], "configmap.yaml:agentlatd.toml")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schema(version: str) -> None:
    kv = _kv()
    docs = _all()
    assert {k for k, _ in docs} >= {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Pod"}
    for (kind, name), d in docs.items():
        try:
            kv.validate(d, version, strict=True)
        except kv.ValidationError as e:
            where = "/".join(str(p) for p in e.path)
            pytest.fail(f"{kind}/{name} invalid for Kubernetes {version} at {where}: {e.message}")


def test_schema_check_can_fail() -> None:
    """A misspelt field and a wrong type are caught (the validation is not a no-op)."""
    kv = _kv()
    ds = _daemonset()
    bad = yaml.safe_load(yaml.safe_dump(ds))
    bad["spec"]["template"]["spec"]["hostPid"] = True  # camel-case typo of hostPID
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSIONS[-1], strict=True)
    bad = yaml.safe_load(yaml.safe_dump(ds))
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "90"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_configmap_policy_loads_with_agentlatds_own_loader() -> None:
    pol = _policy()
    assert pol.daemon.state_dir == "/run/agentlatd"
    assert os.path.dirname(pol.daemon.socket) == pol.daemon.state_dir
    listen = parse_listen(pol.metrics.listen)
    assert listen is not None and listen[1] == 9641


def test_daemonset_has_what_the_daemon_needs() -> None:
    ds = _daemonset()
    spec = ds["spec"]["template"]["spec"]
    c = _container()
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    assert c["securityContext"]["privileged"] is True
    assert spec["automountServiceAccountToken"] is False
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # the tolerations put it on every node
    assert {"operator": "Exists"} in spec["tolerations"]
    # no CPU limit (throttling stalls ticks); a memory limit
    assert "cpu" not in c["resources"].get("limits", {}) and "memory" in c["resources"]["limits"]
    # SIGTERM rollback needs time
    assert spec["terminationGracePeriodSeconds"] >= 60

    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    pol = _policy()
    run = mounts[pol.daemon.state_dir]
    assert vols[run["name"]]["hostPath"]["path"] == pol.daemon.state_dir  # survives the pod
    assert not run.get("readOnly", False)
    assert vols[mounts["/sys"]["name"]]["hostPath"]["path"] == "/sys"
    assert not mounts["/sys"].get("readOnly", False)
    cfg = mounts["/etc/agentlatd"]
    assert vols[cfg["name"]]["configMap"]["name"] == "agentlatd-policy"


def test_daemonset_command_parses_with_the_cli_and_names_the_mounted_policy() -> None:
    from agentlatd import cli

    c = _container()
    argv = c["command"]
    assert argv[0] == "/usr/bin/agentlatd"
    assert "/etc/agentlatd/agentlatd.toml" in argv
    if "run" not in cli.COMMANDS or cli._load("run") is None:
        pytest.skip("agentlatd run is not in this build yet")
    args = cli.build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.config == "/etc/agentlatd/agentlatd.toml"


def test_probes_and_port_match_the_metrics_listener() -> None:
    c = _container()
    port = parse_listen(_policy().metrics.listen)
    assert port is not None
    (p,) = [p for p in c["ports"] if p["name"] == "metrics"]
    assert p["containerPort"] == port[1]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    ann = _daemonset()["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == str(port[1])


def test_agent_example_reaches_the_socket() -> None:
    pod = _all()[("Pod", "agent-example")]
    pol = _policy()
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["AGENTLATD_SOCKET"] == pol.daemon.socket
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    m = mounts[os.path.dirname(pol.daemon.socket)]
    assert vols[m["name"]]["hostPath"]["path"] == pol.daemon.state_dir
    # the socket is 0660 group agentlatd, GID 9641 in the image
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    gid = re.search(r"--gid (\d+) " + re.escape(pol.daemon.socket_group), dockerfile)
    assert gid is not None
    assert int(gid.group(1)) in pod["spec"]["securityContext"]["supplementalGroups"]


# -- the Prometheus job, relabelled as Prometheus would ---------------------------

def _relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus relabel_config semantics for keep/drop/replace (RE2 regex, fully anchored)."""
    out = dict(labels)
    for r in rules:
        action = r.get("action", "replace")
        src = r.get("separator", ";").join(out.get(s, "") for s in r.get("source_labels", []))
        m = re.fullmatch(r.get("regex", "(.*)"), src)
        if action == "keep" and m is None:
            return None
        if action == "drop" and m is not None:
            return None
        if action == "replace" and m is not None:
            out[r["target_label"]] = m.expand(r.get("replacement", "$1").replace("$", "\\"))
    return out


def test_prometheus_job_selects_the_metrics_port_of_agentlatd_pods_only() -> None:
    (job,) = [j for j in _docs("prometheus-scrape.yaml")[0]["scrape_configs"]
              if j["job_name"] == "agentlatd"]
    assert job["metrics_path"] == "/metrics"
    ds = _daemonset()
    labels = ds["spec"]["template"]["metadata"]["labels"]
    port = _container()["ports"][0]

    def target(pod_labels: dict[str, str], port_name: str) -> dict[str, str] | None:
        meta = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v
                for k, v in pod_labels.items()}
        meta |= {"__meta_kubernetes_pod_container_port_name": port_name,
                 "__meta_kubernetes_pod_node_name": "node-a",
                 "__meta_kubernetes_pod_name": "agentlatd-x1",
                 "__address__": f"10.0.0.5:{port['containerPort']}"}
        return _relabel(job["relabel_configs"], meta)

    t = target(labels, port["name"])
    assert t is not None and t["node"] == "node-a" and t["__address__"] == "10.0.0.5:9641"
    assert target({"app.kubernetes.io/name": "something-else"}, "metrics") is None
    assert target(labels, "http") is None
