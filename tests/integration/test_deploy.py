"""The docker-compose stack, the image and the Kubernetes manifests, checked as far as this
machine allows: no Docker engine, no cluster, but the real docker-compose parser, the real
Kubernetes OpenAPI schemas (kubernetes-validate, offline), promtool and amtool."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from flowwarden.dashboards.catalog import load_committed
from flowwarden.settings import Settings, load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.37.0"
FLOWWARDEN_SERVICES = {
    "collector",
    "pipeline-enrich",
    "pipeline",
    "pipeline-detect-2",
    "enforcer",
    "simulate",
    "replay",
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run scripts/install-system-deps.sh"
    return path


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (interpolated with .env)."""
    out = subprocess.run(
        [_tool("docker-compose"), "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _raw_service_blocks() -> dict[str, str]:
    """Each service's text in docker-compose.yml, comments included."""
    text = (ROOT / "docker-compose.yml").read_text()
    body = text.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    blocks = re.split(r"\n(?=  [a-z][a-z0-9_-]*:\n)", "\n" + body)
    return {b.strip().split(":", 1)[0]: b for b in blocks if b.strip()}


def test_compose_config_succeeds_with_every_service(compose: dict[str, Any]) -> None:
    expected = {"kafka", "postgres", "prometheus", "alertmanager", "grafana", *FLOWWARDEN_SERVICES}
    assert set(compose["services"]) == expected


def test_every_image_tag_is_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: image tag {tag!r} is not a version"
    for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            assert re.search(r":\d+\.\d+\.\d+-", line), line


def test_every_service_has_a_healthcheck_or_says_why_not(compose: dict[str, Any]) -> None:
    blocks = _raw_service_blocks()
    without = []
    for name, svc in compose["services"].items():
        if "healthcheck" in svc:
            assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
            continue
        without.append(name)
        comments = " ".join(line for line in blocks[name].splitlines() if line.strip().startswith("#"))
        assert "healthcheck" in comments.lower(), f"{name}: no healthcheck and no comment saying why"
    assert sorted(without) == ["replay", "simulate"]


def test_named_volumes_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol["source"]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: bind mount {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    assert {"kafka-data", "postgres-data", "grafana-data", "prometheus-data"} <= declared


def test_collector_has_host_network_and_only_two_capabilities(compose: dict[str, Any]) -> None:
    collector = compose["services"]["collector"]
    assert collector["network_mode"] == "host"
    assert set(collector["cap_add"]) == {"NET_RAW", "NET_ADMIN"}
    assert collector["cap_drop"] == ["ALL"]
    assert not collector.get("privileged", False)


def test_flowwarden_services_settings_load(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FLOWWARDEN_SERVICES:
        env = compose["services"][name]["environment"]
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, str(value))
            settings = load_settings()
        assert settings.bus.kind == "kafka", name
        assert settings.store.url.startswith("postgresql+psycopg://"), name
        if name == "enforcer":
            assert settings.enforcement.mode == "dry_run", "the enforcer must default to dry-run"
        if name == "collector":
            assert settings.kafka.bootstrap_servers == ["127.0.0.1:9094"]
        else:
            assert settings.kafka.bootstrap_servers == ["kafka:9092"], name


def test_grafana_is_provisioned_for_anonymous_viewers(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("/")}
    provider = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/flowwarden.yaml").read_text())
    dash_path = provider["providers"][0]["options"]["path"]
    assert Path(mounts[dash_path]) == ROOT / "dashboards" / "json"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "dashboards" / "json" / Path(home).name).is_file() and home.startswith(dash_path)
    # Every ${VAR} of the data-source file is set in Grafana's environment.
    text = (ROOT / "dashboards/provisioning/datasources/flowwarden.yaml").read_text()
    for var in set(re.findall(r"\$\{(\w+)\}", text.split("apiVersion", 1)[1])):
        assert var in env, f"grafana's environment lacks {var}"


def test_provisioning_offers_what_the_dashboards_datasource_variables_pick() -> None:
    """Panels name a data-source variable per type; the provisioning offers one of each type,
    and none is made Grafana's default (a push must not replace someone's default)."""
    doc = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/flowwarden.yaml").read_text())
    provisioned = {d["type"] for d in doc["datasources"]}
    assert not any("isDefault" in d for d in doc["datasources"])
    used: dict[str, set[str]] = {}
    for board in load_committed().values():
        variables = {v["name"]: v for v in board["templating"]["list"] if v["type"] == "datasource"}
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                used.setdefault(t["datasource"]["type"], set()).add(t["datasource"]["uid"])
        for kind, refs in used.items():
            for ref in refs:
                assert variables[ref.strip("${}")]["query"] == kind, f"{ref} does not pick a {kind}"
    assert set(used) == provisioned


def test_dashboards_ship_as_configmaps_for_the_grafana_sidecar(manifests: list[dict[str, Any]]) -> None:
    import json

    maps = {
        m["metadata"]["name"]: m
        for m in manifests
        if m["kind"] == "ConfigMap" and m["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    }
    committed = load_committed()
    assert set(maps) == {f"flowwarden-dashboard-{name}" for name in committed}
    for name, board in committed.items():
        assert json.loads(maps[f"flowwarden-dashboard-{name}"]["data"][f"{name}.json"]) == board
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert "grafana-dashboards.yaml" in kustomization["resources"]


def test_prometheus_and_alertmanager_configs_are_valid() -> None:
    prom = subprocess.run(
        [_tool("promtool"), "check", "config", "deploy/compose/prometheus.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert prom.returncode == 0, prom.stdout + prom.stderr
    assert "SUCCESS: 8 rules found" in prom.stdout + prom.stderr
    am = subprocess.run(
        [_tool("amtool"), "check-config", "deploy/compose/alertmanager.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert am.returncode == 0, am.stdout + am.stderr
    targets = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())["scrape_configs"]
    ports = {t.split(":")[1] for job in targets for sc in job["static_configs"] for t in sc["targets"]}
    assert {"9101", "9102", "9103"} <= ports


def test_manifests_validate_against_the_kubernetes_schema(manifests: list[dict[str, Any]]) -> None:
    kinds = []
    for doc in manifests:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        kinds.append(doc["kind"])
    assert {"DaemonSet", "Deployment", "ConfigMap", "Service", "Role", "RoleBinding", "ClusterRole"} <= set(
        kinds
    )
    broken = copy.deepcopy(next(d for d in manifests if d["kind"] == "DaemonSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilitiez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _flowwarden_container(workload: dict[str, Any]) -> dict[str, Any]:
    """The one flowwarden container of a DaemonSet or Deployment (sidecars aside)."""
    (container,) = [
        c for c in workload["spec"]["template"]["spec"]["containers"] if c["image"].startswith("flowwarden/")
    ]
    return container


def _one(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in manifests if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def test_every_manifest_image_is_pinned(manifests: list[dict[str, Any]]) -> None:
    images = [
        c["image"]
        for d in manifests
        if d["kind"] in ("DaemonSet", "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        + d["spec"]["template"]["spec"].get("initContainers", [])
    ]
    assert len(images) >= 3
    for image in images:
        tag = image.rpartition(":")[2]
        assert tag != "latest" and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{image}: not a pinned version"


def _configmap_settings(manifests: list[dict[str, Any]], tmp_path: Path) -> Settings:
    """The settings file the ConfigMap mounts, loaded as the stages load it."""
    cm = _one(manifests, "ConfigMap", "flowwarden-settings")
    path = tmp_path / "flowwarden.yaml"
    path.write_text(cm["data"]["flowwarden.yaml"])
    return load_settings(path)


def test_pipeline_watches_pods_with_list_and_watch_only(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    assert _configmap_settings(manifests, tmp_path).kubernetes.inventory_source == "kubernetes"
    pod = _one(manifests, "Deployment", "flowwarden-pipeline")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["pipeline"], "no kubectl sidecar: the pipeline watches"
    assert not pod.get("initContainers")
    assert pod["serviceAccountName"] == "flowwarden-pipeline"
    assert pod.get("automountServiceAccountToken", True), "the watch needs the service account token"
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "FLOWWARDEN_KUBERNETES__INVENTORY_PATH" not in env
    rules = _one(manifests, "ClusterRole", "flowwarden-pipeline-inventory")["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    binding = _one(manifests, "ClusterRoleBinding", "flowwarden-pipeline-inventory")
    assert binding["roleRef"]["name"] == "flowwarden-pipeline-inventory"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "flowwarden-pipeline", "namespace": "flowwarden"}
    ]


def test_collector_daemonset_is_least_privilege(manifests: list[dict[str, Any]]) -> None:
    ds = _one(manifests, "DaemonSet", "flowwarden-collector")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    (container,) = pod["containers"]  # no sidecar may share the host network's capabilities
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]}
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_pipeline_and_enforcer_run_as_non_root(manifests: list[dict[str, Any]]) -> None:
    for name in ("flowwarden-pipeline", "flowwarden-enforcer"):
        pod = _one(manifests, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, container["name"]
            assert "limits" in container["resources"], container["name"]


def test_configmap_settings_load_and_enforcer_rbac_matches_its_namespaces(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    settings = _configmap_settings(manifests, tmp_path)
    assert settings.enforcement.mode == "dry_run"
    roles = [d for d in manifests if d["kind"] == "Role" and d["metadata"]["name"] == "flowwarden-enforcer"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(settings.enforcement.kube_namespaces)
    for role in roles:
        assert role["rules"] == [
            {
                "apiGroups": ["networking.k8s.io"],
                "resources": ["networkpolicies"],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
        ]
        binding = _one(
            [d for d in manifests if d["metadata"].get("namespace") == role["metadata"]["namespace"]],
            "RoleBinding",
            "flowwarden-enforcer",
        )
        assert binding["subjects"][0]["name"] == "flowwarden-enforcer"
    calico = _one(manifests, "ClusterRole", "flowwarden-enforcer-calico")
    assert [r["resources"] for r in calico["rules"]] == [
        ["tiers"],
        ["globalnetworkpolicies", "tier.globalnetworkpolicies"],
        ["globalnetworksets"],
    ]
    assert calico["rules"][1]["resourceNames"] == ["flowwarden.*"]
    assert calico["rules"][2]["verbs"] == ["delete"]
    cilium = _one(manifests, "ClusterRole", "flowwarden-enforcer-cilium")
    assert [r["resources"] for r in cilium["rules"]] == [["ciliumclusterwidenetworkpolicies"]]
    anp = _one(manifests, "ClusterRole", "flowwarden-enforcer-adminnetworkpolicy")
    assert [r["resources"] for r in anp["rules"]] == [["adminnetworkpolicies"]]
    bound = {
        d["roleRef"]["name"]
        for d in manifests
        if d["kind"] == "ClusterRoleBinding" and d["subjects"][0]["name"] == "flowwarden-enforcer"
    }
    assert bound == {
        "flowwarden-enforcer-adminnetworkpolicy",
        "flowwarden-enforcer-calico",
        "flowwarden-enforcer-cilium",
        "flowwarden-enforcer-inventory",
    }, "the enforcer must hold no other cluster-wide role"
    inventory = _one(manifests, "ClusterRole", "flowwarden-enforcer-inventory")["rules"]
    assert inventory == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]


def test_metrics_services_select_their_pods(manifests: list[dict[str, Any]]) -> None:
    for stage, port in (("collector", 9101), ("pipeline", 9102), ("enforcer", 9103)):
        svc = _one(manifests, "Service", f"flowwarden-{stage}-metrics")
        assert svc["spec"]["ports"][0]["port"] == port
        workload = next(
            d
            for d in manifests
            if d["kind"] in ("DaemonSet", "Deployment") and d["metadata"]["name"] == f"flowwarden-{stage}"
        )
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        ports = _flowwarden_container(workload)["ports"]
        assert [p["containerPort"] for p in ports if p["name"] == "metrics"] == [port]


def test_dockerfile_is_multi_stage_from_the_lock_and_non_root() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, flags=re.M)
    assert stages == ["build", "runtime"]
    assert "pip install -r requirements.lock" in text and (ROOT / "requirements.lock").is_file()
    for source in re.findall(r"^COPY (?!--from)(\S+) ", text, flags=re.M):
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    runtime = text.split(" AS runtime", 1)[1]
    assert re.search(r"^USER 10001:10001$", runtime, flags=re.M), "the runtime stage must not run as root"
    for package in ("tshark", "libnftables1"):
        assert package in runtime
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# Commands the deployment runs that the CLI does not have yet (the lead wires them); the test
# fails when one appears, so this list cannot go stale.
NOT_WIRED_YET: set[str] = set()


def _cli_accepts(args: list[str]) -> bool:
    """True when the flowwarden CLI parses ``args`` (``--help`` stops it before running)."""
    from typer.testing import CliRunner

    from flowwarden.cli import app

    return CliRunner().invoke(app, [*args, "--help"]).exit_code == 0


def test_every_container_command_is_a_flowwarden_command(
    compose: dict[str, Any], manifests: list[dict[str, Any]]
) -> None:
    commands = {f"compose {n}": compose["services"][n]["command"] for n in sorted(FLOWWARDEN_SERVICES)}
    for doc in manifests:
        if doc["kind"] in ("DaemonSet", "Deployment"):
            commands[f"{doc['kind']} {doc['metadata']['name']}"] = _flowwarden_container(doc)["args"]
    assert len(commands) == len(FLOWWARDEN_SERVICES) + 3  # manifests: collector, pipeline, enforcer
    for doc in scale_out_manifests(manifests):
        if doc["kind"] == "Deployment" and doc["metadata"]["name"].startswith("flowwarden-pipeline"):
            commands[f"scale-out {doc['metadata']['name']}"] = _flowwarden_container(doc)["args"]
    for where, args in commands.items():
        if args[0] in NOT_WIRED_YET:
            assert not _cli_accepts(args), f"`flowwarden {args[0]}` exists now: drop it from NOT_WIRED_YET"
            continue
        assert _cli_accepts(args), f"{where}: `flowwarden {' '.join(args)}` is not a valid command line"


def scale_out_manifests(base: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``kubectl apply -k deploy/kubernetes/scale-out`` applies: the base, its resources,
    and its JSON-patch ``replace`` operations (the only kind it uses; anything else fails)."""
    kustomization = yaml.safe_load((K8S_DIR / "scale-out" / "kustomization.yaml").read_text())
    docs = copy.deepcopy(base)
    for res in kustomization["resources"]:
        if res != "../":
            docs.extend(d for d in yaml.safe_load_all((K8S_DIR / "scale-out" / res).read_text()) if d)
    for patch in kustomization["patches"]:
        target = _one(docs, patch["target"]["kind"], patch["target"]["name"])
        for op in yaml.safe_load(patch["patch"]):
            assert op["op"] == "replace", op
            *parents, leaf = [int(k) if k.isdigit() else k for k in op["path"].strip("/").split("/")]
            node: Any = target
            for k in parents:
                node = node[k]
            assert isinstance(node, list) or leaf in node, op["path"]  # replace: the path exists
            node[leaf] = op["value"]
    return docs


def test_the_scale_out_overlay_runs_an_enrich_stage_and_detect_workers(
    manifests: list[dict[str, Any]],
) -> None:
    docs = scale_out_manifests(manifests)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    enrich = _flowwarden_container(_one(docs, "Deployment", "flowwarden-pipeline-enrich"))
    detect = _one(docs, "Deployment", "flowwarden-pipeline")
    assert enrich["args"][:4] == ["pipeline", "run", "--stage", "enrich"]
    assert _flowwarden_container(detect)["args"][:4] == ["pipeline", "run", "--stage", "detect"]
    assert detect["spec"]["replicas"] == 2
    # The base stays one process doing both (the chart's too).
    assert (
        "--stage" not in _flowwarden_container(_one(manifests, "Deployment", "flowwarden-pipeline"))["args"]
    )


def _am_route(labels: dict[str, str]) -> str:
    args = [_tool("amtool"), "config", "routes", "test", "--config.file=deploy/compose/alertmanager.yml"]
    out = subprocess.run(
        [*args, *(f"{k}={v}" for k, v in labels.items() if v)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_alertmanager_routes_detections_and_health_apart() -> None:
    from datetime import UTC, datetime

    from flowwarden.pipeline.runtime.notify.alertmanager import AlertmanagerNotifier
    from flowwarden.records import Alert, Entity

    t = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    alert = Alert(
        kind="exfiltration", detector="bulk_egress", score=0.9, severity="critical",
        entity=Entity(ip="10.244.1.5", namespace="shop", workload="api"), window_start=t, window_end=t,
    )  # fmt: skip
    (doc,) = AlertmanagerNotifier("http://alertmanager:9093").payload([alert])
    assert _am_route(doc["labels"]) == "detections"
    assert (
        _am_route({"alertname": "FlowwardenStageDown", "job": "flowwarden-pipeline"}) == "flowwarden-health"
    )


def test_alert_rules_use_only_metrics_the_dashboards_query() -> None:
    """The dashboards' metric names are proven against running stages; the rules reuse them."""
    used = set()
    for board in load_committed().values():
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                used |= set(re.findall(r"flowwarden_\w+", t.get("expr", "")))
    rules = yaml.safe_load((ROOT / "deploy/compose/rules.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    in_rules = {m for e in exprs for m in re.findall(r"flowwarden_\w+", e)}
    assert in_rules and in_rules <= used, f"unknown metrics in rules.yml: {in_rules - used}"
