"""deploy/kubernetes/: schema-valid offline, and consistent with agentlatd itself.

Schemas: the Kubernetes JSON schemas shipped inside the kubernetes-validate
package (PyPI kubernetes-validate 1.37.0: kubernetes-json-schema
v1.25.0 .. v1.37.0, "-local-strict" = unknown fields are errors), checked with
jsonschema, no network. Validated against the oldest and the newest version
it ships, so a field that exists only in new releases is caught.

The PodMonitor (a CRD, not in those schemas) is validated against the
PodMonitor CRD's own openAPIV3Schema, vendored in
tests/fixtures/crds/podmonitor-v1.schema.json (its "_source" names the
prometheus-operator commit), made strict the way the API server's field
validation is (an unknown field is an error, not silently pruned).

Beyond the schema: the ConfigMap's policy loads with agentlatd's own policy
loader; the DaemonSet has what the daemon needs (privileged, hostPID,
hostNetwork, /sys, the state dir and socket on a hostPath agent pods mount,
probes on the loopback metrics listener, a grace period that covers
rollback); metrics leave the node only through kube-rbac-proxy, which alone
holds an API token; its command parses with agentlatd's CLI; the images are
named once (kustomization.yaml); and the PodMonitor and the Prometheus job,
relabelled the way Prometheus does, select exactly the proxy's port.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from agentlatd import cli
from agentlatd import policy as policy_mod
from agentlatd.metrics import parse_listen

try:
    import yaml
except ImportError:  # comes with kubernetes-validate
    yaml = None

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
CRD_SCHEMA = REPO / "tests" / "fixtures" / "crds" / "podmonitor-v1.schema.json"
CRD_KINDS = {"PodMonitor"}
NOT_MANIFESTS = {"prometheus-scrape.yaml", "kustomization.yaml"}
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
        if p.name in NOT_MANIFESTS:
            continue
        for d in _docs(p.name):
            out[(d["kind"], d["metadata"]["name"])] = d
    return out


def _daemonset() -> dict[str, Any]:
    return _all()[("DaemonSet", "agentlatd")]


def _containers() -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in _daemonset()["spec"]["template"]["spec"]["containers"]}


def _container() -> dict[str, Any]:
    return _containers()["agentlatd"]


def _proxy() -> dict[str, Any]:
    return _containers()["kube-rbac-proxy"]


def _policy() -> policy_mod.Policy:
    cm = _all()[("ConfigMap", "agentlatd-policy")]
    return policy_mod.loads(cm["data"]["agentlatd.toml"], "configmap.yaml:agentlatd.toml")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schema(version: str) -> None:
    kv = _kv()
    docs = _all()
    assert {k for k, _ in docs} >= {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Pod",
                                    "ClusterRole", "ClusterRoleBinding", "Secret", "PodMonitor"}
    for (kind, name), d in docs.items():
        if kind in CRD_KINDS:
            continue
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
    c = _container()
    argv = c["command"]
    assert argv[0] == "/usr/bin/agentlatd"
    assert "/etc/agentlatd/agentlatd.toml" in argv
    args = cli.build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.config == "/etc/agentlatd/agentlatd.toml"


def test_metrics_stay_on_loopback_and_probes_reach_them_there() -> None:
    c = _container()
    listen = parse_listen(_policy().metrics.listen)
    assert listen is not None and ipaddress.ip_address(listen[0]).is_loopback
    # nothing of the agentlatd container is published on the node's address
    assert not c.get("ports")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"host": listen[0], "path": path, "port": listen[1]}, probe


def test_kube_rbac_proxy_fronts_the_metrics_and_alone_holds_a_token() -> None:
    spec = _daemonset()["spec"]["template"]["spec"]
    listen = parse_listen(_policy().metrics.listen)
    assert listen is not None
    p = _proxy()
    args = dict(a.split("=", 1) for a in p["args"])
    assert args["--upstream"] == f"http://{listen[0]}:{listen[1]}/"
    (port,) = p["ports"]
    assert port["name"] == "https"
    assert args["--secure-listen-address"] == f"[$(IP)]:{port['containerPort']}"
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in p["env"]} == {
        "IP": "status.podIP"}
    assert args["--allow-paths"] == "/metrics"
    # the pod mounts no token by default; the proxy mounts the projected one
    assert spec["automountServiceAccountToken"] is False
    vols = {v["name"]: v for v in spec["volumes"]}
    token_vols = {n for n, v in vols.items()
                  if any("serviceAccountToken" in src for src in v.get("projected", {}).get(
                      "sources", []))}
    assert token_vols == {"kube-api-access"}
    sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert {m["name"]: m["mountPath"] for m in p["volumeMounts"]} == {"kube-api-access": sa_dir}
    assert all(m["name"] not in token_vols for m in _container()["volumeMounts"])
    sc = p["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True


def _bound_rules(sa: str) -> list[dict[str, Any]]:
    docs = _all()
    rules: list[dict[str, Any]] = []
    for (kind, _), b in docs.items():
        if kind != "ClusterRoleBinding":
            continue
        if any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == "agentlatd"
               for s in b["subjects"]):
            rules += docs[("ClusterRole", b["roleRef"]["name"])]["rules"]
    return rules


def test_rbac_grants_the_proxy_reviews_and_the_scraper_metrics_only() -> None:
    ds = _daemonset()
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == "agentlatd"
    proxy = _bound_rules("agentlatd")
    assert sorted((r["apiGroups"][0], r["resources"][0], tuple(r["verbs"])) for r in proxy) == [
        ("authentication.k8s.io", "tokenreviews", ("create",)),
        ("authorization.k8s.io", "subjectaccessreviews", ("create",))]
    assert _bound_rules("agentlatd-scraper") == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused, as `kubectl apply` with the API
    server's strict field validation does (the CRD itself relies on pruning)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _podmonitor() -> dict[str, Any]:
    return _all()[("PodMonitor", "agentlatd")]


def test_podmonitor_is_valid_against_the_crd_schema_and_a_typo_is_caught() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads(CRD_SCHEMA.read_text())
    assert "prometheus-operator" in doc["_source"]
    schema = _strict(doc["schema"])
    pm = _podmonitor()
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    jsonschema.validate(pm, schema)
    bad = yaml.safe_load(yaml.safe_dump(pm))
    bad["spec"]["podMetricsEndpoints"][0]["bearerTokenFile"] = "/x"  # not in PodMonitor
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = yaml.safe_load(yaml.safe_dump(pm))
    bad["spec"]["podMetricsEndpoints"][0]["interval"] = 15
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_podmonitor_scrapes_the_proxy_port_as_job_agentlatd_with_a_node_label() -> None:
    pm = _podmonitor()["spec"]
    pod_labels = _daemonset()["spec"]["template"]["metadata"]["labels"]
    assert pm["selector"]["matchLabels"].items() <= pod_labels.items()
    # job="agentlatd": what deploy/prometheus/agentlatd.rules.yml and the dashboard select
    assert pod_labels[pm["jobLabel"]] == "agentlatd"
    rules = (REPO / "deploy" / "prometheus" / "agentlatd.rules.yml").read_text()
    assert 'job="agentlatd"' in rules
    (ep,) = pm["podMetricsEndpoints"]
    assert ep["port"] == _proxy()["ports"][0]["name"] and ep["scheme"] == "https"
    assert ep["path"] == "/metrics"
    secret = _all()[("Secret", ep["authorization"]["credentials"]["name"])]
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.name"] == \
        "agentlatd-scraper"
    assert secret["metadata"]["namespace"] == _podmonitor()["metadata"]["namespace"]
    node = _relabel([{"source_labels": r["sourceLabels"], "target_label": r["targetLabel"],
                      "action": r["action"]} for r in ep["relabelings"]],
                    {"__meta_kubernetes_pod_node_name": "node-a"})
    assert node is not None and node["node"] == "node-a"


def test_rollout_and_placement_cover_the_fleet() -> None:
    ds = _daemonset()
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"
    assert ds["spec"]["template"]["spec"]["tolerations"] == [{"operator": "Exists"}]


def test_images_are_named_in_one_place() -> None:
    kz = _docs("kustomization.yaml")[0]
    names = {i["name"]: i for i in kz["images"]}
    for c in _daemonset()["spec"]["template"]["spec"]["containers"]:
        # no tag and no registry in the DaemonSet: kustomization.yaml sets them
        assert ":" not in c["image"].rsplit("/", 1)[-1], c["image"]
        assert c["image"] in names, c["image"]
        assert names[c["image"]].get("newTag"), c["image"]
    assert names["agentlatd"]["newName"].count("/") >= 1  # a registry, not a bare name
    assert sorted(kz["resources"]) == sorted(
        p.name for p in DEPLOY.glob("*.yaml") if p.name not in NOT_MANIFESTS
        and p.name != "agent-example.yaml")


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
    port = _proxy()["ports"][0]

    def target(pod_labels: dict[str, str], port_name: str) -> dict[str, str] | None:
        meta = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v
                for k, v in pod_labels.items()}
        meta |= {"__meta_kubernetes_pod_container_port_name": port_name,
                 "__meta_kubernetes_pod_node_name": "node-a",
                 "__meta_kubernetes_pod_name": "agentlatd-x1",
                 "__address__": f"10.0.0.5:{port['containerPort']}"}
        return _relabel(job["relabel_configs"], meta)

    assert job["scheme"] == "https"
    t = target(labels, port["name"])
    assert t is not None and t["node"] == "node-a" and t["__address__"] == "10.0.0.5:9641"
    assert target({"app.kubernetes.io/name": "something-else"}, "https") is None
    assert target(labels, "http") is None
