"""The Helm chart (deploy/helm/flowwarden), rendered and validated as far as this machine allows.

Helm itself cannot be installed here (no Debian package; the PyPI bindings need Python 3.12
and cannot ``template``), so ``tests/support/helm_render.py`` renders the chart (the subset of
Go templates it uses; anything else fails by name) and every manifest is validated against
the Kubernetes OpenAPI schema with ``kubernetes-validate --strict``, as ``helm template |
kubernetes-validate --strict`` would. The Prometheus Operator's kinds have no schema there:
the PrometheusRule's rules go through ``promtool check rules``, the ServiceMonitor is checked
against the Services it must select. The Kustomize base (deploy/kubernetes) is compared with
the chart on what both must agree on: image, ports, commands, RBAC.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from flowwarden.dashboards.catalog import load_committed
from flowwarden.settings import load_settings
from tests.support.helm_render import TemplateError, render_chart

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "flowwarden"
K8S_DIR = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.37.0"
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
EVERYTHING_ON = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "runbookBaseUrl": "https://example.org/flowwarden/"},
    "enforcer": {"backendRoles": {b: {"enabled": True} for b in ("calico", "cilium", "adminnetworkpolicy")}},
}
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def chart() -> list[Doc]:
    return render_chart(CHART, EVERYTHING_ON)


@pytest.fixture(scope="module")
def kustomize() -> list[Doc]:
    docs: list[Doc] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _one(docs: list[Doc], kind: str, name: str, namespace: str | None = None) -> Doc:
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and d["metadata"]["name"] == name
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _pod(workload: Doc) -> Doc:
    return dict(workload["spec"]["template"]["spec"])


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run scripts/install-system-deps.sh"
    return path


# --------------------------------------------------------------------------- lint


def test_chart_metadata_and_values_lint() -> None:
    """What ``helm lint`` checks first: Chart.yaml, values.yaml, every template renders."""
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == CHART.name == "flowwarden"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]) and meta["type"] == "application"
    assert isinstance(yaml.safe_load((CHART / "values.yaml").read_text()), dict)
    for variant in (
        {},
        EVERYTHING_ON,
        {"networkPolicy": {"enabled": False}, "grafanaDashboards": {"enabled": False}},
    ):
        assert render_chart(CHART, variant)
    off = render_chart(CHART, {"collector": {"enabled": False}, "namespaces": {"create": False}})
    assert not any(d["kind"] in ("DaemonSet", "Namespace") for d in off)


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    shutil.copytree(CHART, tmp_path / "flowwarden")
    (tmp_path / "flowwarden" / "templates" / "x.yaml").write_text("a: {{ sha256sum .Values.image.tag }}\n")
    with pytest.raises(TemplateError, match="sha256sum"):
        render_chart(tmp_path / "flowwarden")


def test_every_manifest_validates_against_the_kubernetes_schema(chart: list[Doc]) -> None:
    kinds = set()
    for doc in chart:
        kinds.add(doc["kind"])
        if doc["kind"] in OPERATOR_KINDS:
            continue  # a CRD: checked below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {
        "Namespace",
        "DaemonSet",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ConfigMap",
        "Role",
        "ClusterRole",
        *OPERATOR_KINDS,
    } <= kinds
    broken = copy.deepcopy(_one(chart, "Deployment", "flowwarden-pipeline"))
    _pod(broken)["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------- pod security


def _restricted_problems(pod: Doc) -> list[str]:
    """Pod Security Standards, level restricted (the checks of kubernetes.io's table)."""
    problems = []
    psc = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(flag)
    for vol in pod.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= {
            "configMap",
            "secret",
            "emptyDir",
            "projected",
            "downwardAPI",
            "persistentVolumeClaim",
        }:
            problems.append(f"volume {vol['name']}: {kinds}")
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile")
        if any("hostPort" in p for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def test_collector_alone_in_a_privileged_namespace_the_rest_restricted(chart: list[Doc]) -> None:
    namespaces = {d["metadata"]["name"]: d["metadata"]["labels"] for d in chart if d["kind"] == "Namespace"}
    assert namespaces["flowwarden-collector"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert namespaces["flowwarden"]["pod-security.kubernetes.io/enforce"] == "restricted"
    workloads = [d for d in chart if d["kind"] in ("DaemonSet", "Deployment")]
    by_ns = {d["metadata"]["name"]: d["metadata"]["namespace"] for d in workloads}
    assert by_ns == {
        "flowwarden-collector": "flowwarden-collector",
        "flowwarden-pipeline": "flowwarden",
        "flowwarden-enforcer": "flowwarden",
    }
    for name in ("flowwarden-pipeline", "flowwarden-enforcer"):
        assert _restricted_problems(_pod(_one(chart, "Deployment", name))) == [], name
    collector = _pod(_one(chart, "DaemonSet", "flowwarden-collector"))
    assert _restricted_problems(collector), "the collector would not pass restricted: it needs its namespace"
    (container,) = collector["containers"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]}
    assert container["securityContext"]["privileged"] is False


# --------------------------------------------------------------------------- readiness, PDBs


def test_readiness_means_kafka_and_the_store(chart: list[Doc]) -> None:
    """The probe is /ready on the port the process serves it on (tests/integration/test_readiness.py)."""
    from typer.testing import CliRunner

    from flowwarden.cli import app

    for name in ("flowwarden-pipeline", "flowwarden-enforcer"):
        (c,) = _pod(_one(chart, "Deployment", name))["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "ready"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ready"}
        args = c["args"]
        assert int(args[args.index("--ready-port") + 1]) == ports["ready"] != ports["metrics"]
        assert CliRunner().invoke(app, [*args, "--help"]).exit_code == 0, args


def test_disruption_budgets_select_their_deployments(chart: list[Doc]) -> None:
    for name in ("flowwarden-pipeline", "flowwarden-enforcer"):
        pdb = _one(chart, "PodDisruptionBudget", name)
        labels = _one(chart, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["maxUnavailable"] == 1  # a drain can always move the one enforcer


# --------------------------------------------------------------------------- network policy


def test_network_policy_allows_only_the_configured_peers(chart: list[Doc]) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]
    policy = _one(chart, "NetworkPolicy", "flowwarden", "flowwarden")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    selected = set(policy["podSelector"]["matchExpressions"][0]["values"])
    assert selected == {"flowwarden-pipeline", "flowwarden-enforcer"}
    expected = [values[k] for k in ("dns", "kafka", "store", "apiServer")] + values["notifiers"]
    assert policy["egress"] == [{"to": e["to"], "ports": e["ports"]} for e in expected]
    assert policy["ingress"] == [
        {"from": values["metricsFrom"], "ports": [{"port": "metrics", "protocol": "TCP"}]}
    ]
    # Another Kafka is another peer: the rule follows the values.
    other = render_chart(
        CHART, {"networkPolicy": {"kafka": {"to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}]}}}
    )
    egress = _one(other, "NetworkPolicy", "flowwarden")["spec"]["egress"]
    assert {"ipBlock": {"cidr": "192.0.2.10/32"}} in egress[1]["to"]
    assert not any(
        d["kind"] == "NetworkPolicy" for d in render_chart(CHART, {"networkPolicy": {"enabled": False}})
    )


# --------------------------------------------------------------------------- Prometheus Operator


def test_prometheus_rule_is_the_compose_rules_with_runbooks(chart: list[Doc], tmp_path: Path) -> None:
    compose = (ROOT / "deploy" / "compose" / "rules.yml").read_text()
    assert (CHART / "files" / "rules.yml").read_text() == compose, (
        "cp deploy/compose/rules.yml deploy/helm/flowwarden/files/rules.yml"
    )
    spec = _one(chart, "PrometheusRule", "flowwarden")["spec"]
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump(spec))
    check = subprocess.run(
        [_tool("promtool"), "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", runbooks, re.M)
    }
    alerts = [r for g in spec["groups"] for r in g["rules"]]
    names = {r["alert"] for r in alerts}
    assert {"FlowwardenFlowsDropped", "FlowwardenNotifierFailing"} <= names
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        assert url == f"https://example.org/flowwarden/docs/runbooks.md#{rule['alert'].lower()}", url
        assert rule["alert"].lower() in anchors, f"docs/runbooks.md has no section for {rule['alert']}"
    assert "flowwarden_collector_dropped_flows_total" in json.dumps(spec)
    assert 'flowwarden_pipeline_notifications_total{status=~"failed|dropped"}' in json.dumps(spec).replace(
        "\\", ""
    )


def test_service_monitor_scrapes_every_stage_with_the_cluster_label(chart: list[Doc]) -> None:
    sm = _one(chart, "ServiceMonitor", "flowwarden")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = sm["spec"]
    services = [d for d in chart if d["kind"] == "Service"]
    picked = [
        s
        for s in services
        if s["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
        and spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert sorted(s["metadata"]["name"] for s in picked) == [
        "flowwarden-collector-metrics",
        "flowwarden-enforcer-metrics",
        "flowwarden-pipeline-metrics",
    ]
    (endpoint,) = spec["endpoints"]
    assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in picked)
    cluster = load_settings(None, cluster={"name": "production"}).cluster.name
    assert {"targetLabel": "cluster", "replacement": cluster} in endpoint["relabelings"]


# --------------------------------------------------------------------------- settings, dashboards


def test_settings_configmap_loads_in_both_namespaces(chart: list[Doc], tmp_path: Path) -> None:
    maps = [d for d in chart if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "flowwarden-settings"]
    assert sorted(m["metadata"]["namespace"] for m in maps) == ["flowwarden", "flowwarden-collector"]
    path = tmp_path / "flowwarden.yaml"
    path.write_text(maps[0]["data"]["flowwarden.yaml"])
    settings = load_settings(path)
    assert settings.bus.kind == "kafka" and settings.enforcement.mode == "dry_run"
    roles = [d for d in chart if d["kind"] == "Role" and d["metadata"]["name"] == "flowwarden-enforcer"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(settings.enforcement.kube_namespaces)


def test_dashboards_ship_as_sidecar_configmaps(chart: list[Doc]) -> None:
    maps = {
        d["metadata"]["name"]: d
        for d in chart
        if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"
    }
    committed = load_committed()
    assert set(maps) == {f"flowwarden-dashboard-{n}" for n in committed}
    for name, board in committed.items():
        assert json.loads(maps[f"flowwarden-dashboard-{name}"]["data"][f"{name}.json"]) == board


# --------------------------------------------------------------------------- Kustomize agrees


def _containers(docs: list[Doc]) -> dict[str, Doc]:
    return {
        d["metadata"]["name"]: _pod(d)["containers"][0]
        for d in docs
        if d["kind"] in ("DaemonSet", "Deployment")
    }


def _rules(docs: list[Doc], kind: str, suffix: str) -> list[Any]:
    (found,) = [d["rules"] for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return list(found)


def test_kustomize_base_and_chart_agree_on_the_essentials(chart: list[Doc], kustomize: list[Doc]) -> None:
    mine, theirs = _containers(chart), _containers(kustomize)
    assert set(mine) == set(theirs) == {"flowwarden-collector", "flowwarden-pipeline", "flowwarden-enforcer"}
    for name in mine:
        assert mine[name]["image"] == theirs[name]["image"], name
        assert {(p["name"], p["containerPort"]) for p in mine[name]["ports"]} == {
            (p["name"], p["containerPort"]) for p in theirs[name]["ports"]
        }, name
        assert mine[name]["args"][:4] == theirs[name]["args"][:4], name
        for probe in ("readinessProbe", "livenessProbe"):
            assert mine[name][probe]["httpGet"] == theirs[name][probe]["httpGet"], (name, probe)
        assert (
            mine[name]["securityContext"]["capabilities"] == theirs[name]["securityContext"]["capabilities"]
        )
    for kind, suffix in (
        ("ClusterRole", "pipeline-inventory"),
        ("ClusterRole", "enforcer-inventory"),
        ("Role", "flowwarden-enforcer"),
    ):
        assert _rules(chart, kind, suffix) == _rules(kustomize, kind, suffix), (kind, suffix)
    # Every cluster-wide role of a backend in the base is in the chart, with the same rules.
    backends = {
        d["metadata"]["name"].removeprefix("flowwarden-enforcer-")
        for d in kustomize
        if d["kind"] == "ClusterRole" and d["metadata"]["name"].startswith("flowwarden-enforcer-")
    } - {"inventory"}
    roles = yaml.safe_load((CHART / "values.yaml").read_text())["enforcer"]["backendRoles"]
    assert set(roles) == backends
    for backend in backends:
        assert _rules(chart, "ClusterRole", f"enforcer-{backend}") == _rules(
            kustomize, "ClusterRole", f"enforcer-{backend}"
        ), backend
    chart_settings = yaml.safe_load(
        _one(chart, "ConfigMap", "flowwarden-settings", "flowwarden")["data"]["flowwarden.yaml"]
    )
    kustomize_settings = yaml.safe_load(
        _one(kustomize, "ConfigMap", "flowwarden-settings")["data"]["flowwarden.yaml"]
    )
    for section in ("bus", "kafka", "kubernetes", "pipeline", "collector"):
        assert chart_settings[section] == kustomize_settings[section], section


# --------------------------------------------------------------------------- scale-out


SCALE_OUT = {"pipeline": {"scaleOut": {"enabled": True}}}
SCALE_OUT_HPA = {"pipeline": {"scaleOut": {"enabled": True, "autoscaling": {"enabled": True}}}}
ENRICH = "flowwarden-pipeline-enrich"


def _merge(*layers: Doc) -> Doc:
    out: Doc = {}
    for layer in layers:
        for k, v in layer.items():
            out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def scale_out() -> list[Doc]:
    return render_chart(CHART, _merge(EVERYTHING_ON, SCALE_OUT))


def test_scale_out_off_renders_exactly_as_before(chart: list[Doc], scale_out: list[Doc]) -> None:
    """Default values take none of the scale-out path; switched on, the only changes are the
    enrich stage's objects and the pipeline Deployment's --stage detect and replicas."""
    assert render_chart(CHART, _merge(EVERYTHING_ON, {"pipeline": {"scaleOut": {"enabled": False}}})) == chart
    assert render_chart(CHART, {}) == render_chart(CHART, {"pipeline": {"scaleOut": {"enabled": False}}})
    added = [
        d for d in scale_out if d["metadata"]["name"] == ENRICH or d["metadata"]["name"].startswith(ENRICH)
    ]
    assert sorted(d["kind"] for d in added) == [
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    ]
    rest = copy.deepcopy([d for d in scale_out if d not in added])
    detect = _one(rest, "Deployment", "flowwarden-pipeline")
    args = _pod(detect)["containers"][0]["args"]
    assert args[2:4] == ["--stage", "detect"] and detect["spec"]["replicas"] == 2
    del args[2:4]
    detect["spec"]["replicas"] = 1
    assert rest == chart


def test_scale_out_runs_an_enrich_stage_and_detect_workers(scale_out: list[Doc]) -> None:
    from typer.testing import CliRunner

    from flowwarden.cli import app

    for doc in scale_out:
        if doc["kind"] not in OPERATOR_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    enrich, detect = (
        _one(scale_out, "Deployment", ENRICH),
        _one(scale_out, "Deployment", "flowwarden-pipeline"),
    )
    assert enrich["spec"]["replicas"] == 1 and detect["spec"]["replicas"] == 2
    (e,), (d,) = _pod(enrich)["containers"], _pod(detect)["containers"]
    assert e["args"][:4] == ["pipeline", "run", "--stage", "enrich"]
    assert d["args"][:4] == ["pipeline", "run", "--stage", "detect"]
    for args in (e["args"], d["args"]):
        assert CliRunner().invoke(app, [*args, "--help"]).exit_code == 0, args
    for workload in (enrich, detect):
        assert _restricted_problems(_pod(workload)) == [], workload["metadata"]["name"]
    # The detect stage is ready when Kafka and the store answer; the enrich stage never
    # touches the store: no Secret, and its /ready checks Kafka only.
    for c in (d, e):
        assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "ready"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ready"}
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert int(c["args"][c["args"].index("--ready-port") + 1]) == ports["ready"] != ports["metrics"]
    assert not any("valueFrom" in v for v in e["env"])
    assert _pod(enrich)["serviceAccountName"] == "flowwarden-pipeline"  # list and watch on pods
    # Replicas follow the values.
    sized = render_chart(
        CHART,
        _merge(SCALE_OUT, {"pipeline": {"scaleOut": {"detect": {"replicas": 5}, "enrich": {"replicas": 3}}}}),
    )
    assert _one(sized, "Deployment", "flowwarden-pipeline")["spec"]["replicas"] == 5
    assert _one(sized, "Deployment", ENRICH)["spec"]["replicas"] == 3


def test_scale_out_agrees_with_the_kustomize_overlay(scale_out: list[Doc], kustomize: list[Doc]) -> None:
    from tests.integration.test_deploy import scale_out_manifests

    overlay = scale_out_manifests(kustomize)
    for name in (ENRICH, "flowwarden-pipeline"):
        mine, theirs = _containers(scale_out)[name], _containers(overlay)[name]
        assert mine["args"] == theirs["args"], name
        assert mine["image"] == theirs["image"], name
        assert {(p["name"], p["containerPort"]) for p in mine["ports"]} == {
            (p["name"], p["containerPort"]) for p in theirs["ports"]
        }, name
        assert (
            _one(scale_out, "Deployment", name)["spec"]["replicas"]
            == _one(overlay, "Deployment", name)["spec"]["replicas"]
        ), name


def test_scale_out_budgets_policies_and_scrapes_each_stage(scale_out: list[Doc]) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]
    for name in (ENRICH, "flowwarden-pipeline"):
        pdb = _one(scale_out, "PodDisruptionBudget", name)
        labels = _one(scale_out, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        assert pdb["spec"]["maxUnavailable"] == 1
    # The detect stage stays under the shared policy (store, notifiers); the enrich stage has
    # its own: DNS, Kafka and the API server's pod watch, nothing else.
    shared = _one(scale_out, "NetworkPolicy", "flowwarden")["spec"]
    assert ENRICH not in shared["podSelector"]["matchExpressions"][0]["values"]
    assert "flowwarden-pipeline" in shared["podSelector"]["matchExpressions"][0]["values"]
    own = _one(scale_out, "NetworkPolicy", ENRICH)["spec"]
    enrich_labels = _one(scale_out, "Deployment", ENRICH)["spec"]["template"]["metadata"]["labels"]
    assert own["podSelector"]["matchLabels"].items() <= enrich_labels.items()
    assert own["egress"] == [
        {"to": values[k]["to"], "ports": values[k]["ports"]} for k in ("dns", "kafka", "apiServer")
    ]
    assert own["ingress"] == [
        {"from": values["metricsFrom"], "ports": [{"port": "metrics", "protocol": "TCP"}]}
    ]
    # The ServiceMonitor picks up the enrich stage's metrics Service too.
    sm = _one(scale_out, "ServiceMonitor", "flowwarden")["spec"]
    service = _one(scale_out, "Service", f"{ENRICH}-metrics")
    assert sm["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= enrich_labels.items()
    (endpoint,) = sm["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    off = render_chart(CHART, _merge(SCALE_OUT, {"networkPolicy": {"enabled": False}}))
    assert not any(d["kind"] == "NetworkPolicy" for d in off)


def test_scale_out_autoscales_detect_on_topic_lag() -> None:
    assert not any(d["kind"] == "HorizontalPodAutoscaler" for d in render_chart(CHART, SCALE_OUT))
    docs = render_chart(CHART, SCALE_OUT_HPA)
    hpa = _one(docs, "HorizontalPodAutoscaler", "flowwarden-pipeline", "flowwarden")
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "flowwarden-pipeline",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    (metric,) = spec["metrics"]
    assert metric["type"] == "Pods"
    from flowwarden.pipeline.runtime import metrics as pipeline_metrics

    assert '"flowwarden_pipeline_topic_lag"' in Path(pipeline_metrics.__file__).read_text()
    topic = load_settings(None).kafka.topics.flows_by_workload
    assert metric["pods"]["metric"] == {
        "name": "flowwarden_pipeline_topic_lag",
        "selector": {"matchLabels": {"topic": topic}},
    }
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "200"}
    # The HPA owns the detect stage's replicas; the enrich stage keeps its own.
    assert "replicas" not in _one(docs, "Deployment", "flowwarden-pipeline")["spec"]
    assert _one(docs, "Deployment", ENRICH)["spec"]["replicas"] == 1
    # Off with scale-out off: autoscaling alone changes nothing.
    alone = render_chart(CHART, {"pipeline": {"scaleOut": {"autoscaling": {"enabled": True}}}})
    assert alone == render_chart(CHART, {})
