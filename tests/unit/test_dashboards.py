"""The dashboards as code: committed JSON matches the code, every reference resolves."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flowwarden.dashboards.catalog import (
    JSON_DIR,
    PROVISIONING_DIR,
    build_all,
    generate,
    load_committed,
    stale,
)
from flowwarden.dashboards.model import (
    ALL_VALUE,
    CLUSTER_ALL,
    GRID_WIDTH,
    POSTGRES_TYPE,
    POSTGRES_UID,
    PROMETHEUS_TYPE,
    PROMETHEUS_UID,
)
from flowwarden.dashboards.push import datasources, plan
from flowwarden.dashboards.queries import (
    QueryContext,
    interpolate_promql,
    interpolate_sql,
    label_values_query,
    panel_queries,
)
from flowwarden.dashboards.render import render
from flowwarden.errors import ConfigError

EXPECTED = {
    "overview": "flowwarden / Overview",
    "exfiltration": "flowwarden / Exfiltration",
    "lateral-movement": "flowwarden / Lateral movement",
    "enforcement": "flowwarden / Enforcement",
    "pipeline-health": "flowwarden / Pipeline health",
    "service-graph": "flowwarden / Service graph",
    "dns": "flowwarden / DNS",
}
GRAFANA_ENV = {
    "FLOWWARDEN_GRAFANA_PG_HOST": "postgres:5432",
    "FLOWWARDEN_GRAFANA_PG_USER": "grafana_reader",
    "FLOWWARDEN_GRAFANA_PG_DATABASE": "flowwarden",
    "FLOWWARDEN_GRAFANA_PG_PASSWORD": "secret",
    "FLOWWARDEN_GRAFANA_PROMETHEUS_URL": "http://prometheus:9090",
}


@pytest.fixture(scope="module")
def committed() -> dict[str, dict]:
    return load_committed()


def provisioned_uids() -> set[str]:
    doc = yaml.safe_load((PROVISIONING_DIR / "datasources" / "flowwarden.yaml").read_text())
    return {ds["uid"] for ds in doc["datasources"]}


def test_committed_json_is_not_stale() -> None:
    assert stale() == [], "run `flowwarden dashboards generate` and commit dashboards/json"


def test_stale_detects_an_edited_and_an_extra_file(tmp_path: Path) -> None:
    generate(tmp_path)
    assert stale(tmp_path) == []
    board = tmp_path / "overview.json"
    board.write_text(board.read_text().replace("Overview", "Overvue"))
    (tmp_path / "old.json").write_text("{}")
    problems = stale(tmp_path)
    assert any("overview.json: differs" in p for p in problems)
    assert any("old.json: no dashboard" in p for p in problems)


def test_seven_dashboards_with_their_titles(committed: dict[str, dict]) -> None:
    assert {name: b["title"] for name, b in committed.items()} == EXPECTED
    assert len({b["uid"] for b in committed.values()}) == 7


VARIABLE_FOR = {PROMETHEUS_TYPE: "${datasource}", POSTGRES_TYPE: "${store}"}


def _datasource_refs(node: object, path: str = "") -> list[tuple[str, dict]]:
    """Every data-source reference anywhere in a dashboard's JSON, with where it is."""
    found: list[tuple[str, dict]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                found.append((f"{path}.{key}", value))
            elif key == "datasource" and value is not None:
                found.append((f"{path}.{key}", {"uid": value}))  # a legacy name or uid string
            else:
                found += _datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _datasource_refs(value, f"{path}[{i}]")
    return found


def test_no_panel_names_a_datasource_uid(committed: dict[str, dict]) -> None:
    """Walk the whole JSON: every data-source reference is a template variable of its type."""
    for name, board in committed.items():
        refs = _datasource_refs(board)
        assert len(refs) > 10, name
        for where, ref in refs:
            if ref.get("type") == "grafana":
                assert ref["uid"] == "-- Grafana --", where  # Grafana's own built-in annotations
                continue
            assert ref.get("type") in VARIABLE_FOR, f"{name}{where}: {ref}"
            assert ref["uid"] == VARIABLE_FOR[ref["type"]], f"{name}{where}: names {ref['uid']!r}"
        text = json.dumps(board)
        for uid in provisioned_uids():
            assert uid not in text, f"{name}: the provisioned uid {uid} appears in the dashboard"
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel["targets"], f"{name}: panel {panel['title']!r} has no query"


def test_datasource_cluster_namespace_and_workload_variables(committed: dict[str, dict]) -> None:
    for name, board in committed.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert list(variables) == ["datasource", "store", "cluster", "namespace", "workload"], name
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == PROMETHEUS_TYPE
        assert variables["store"]["type"] == "datasource" and variables["store"]["query"] == POSTGRES_TYPE
        assert variables["datasource"]["current"] == {} == variables["store"]["current"]  # no uid
        cluster = variables["cluster"]
        assert cluster["datasource"]["uid"] == "${datasource}"
        assert label_values_query(cluster["query"]) == ('{__name__=~"flowwarden_.+"}', "cluster")
        assert cluster["multi"] and cluster["includeAll"] and cluster["allValue"] == CLUSTER_ALL
        for var in (variables["namespace"], variables["workload"]):
            assert var["multi"] and var["includeAll"] and var["allValue"] == ALL_VALUE
        assert "${namespace:sqlstring}" in variables["workload"]["query"], "workload must follow namespace"


def test_every_promql_query_is_narrowed_to_the_cluster(committed: dict[str, dict]) -> None:
    import re

    for name, board in committed.items():
        for q in panel_queries(name, board):
            if q.datasource_type != PROMETHEUS_TYPE or q.panel_type == "variable":
                continue
            after = [q.text[m.end() :] for m in re.finditer(r"flowwarden_\w+", q.text)]
            assert after, (name, q.panel)
            assert all(a.startswith('{cluster=~"${cluster}"') for a in after), (name, q.panel, q.text)


def test_sql_panels_apply_the_scope_variables(committed: dict[str, dict]) -> None:
    for q in (q for name, b in committed.items() for q in panel_queries(name, b)):
        if (
            q.datasource_type == POSTGRES_TYPE
            and q.panel_type not in ("variable",)
            and "flow_rollups" in q.text
        ):
            if q.panel.startswith("Workload edges") and q.ref == "nodes":
                continue  # the nodes come from the (already scoped) edges
            assert "${namespace:sqlstring}" in q.text and "${workload:sqlstring}" in q.text, q.panel


def test_alerts_are_annotations(committed: dict[str, dict]) -> None:
    for name, board in committed.items():
        anns = [a for a in board["annotations"]["list"] if a.get("name") == "Alerts"]
        assert len(anns) == 1, name
        assert "FROM alerts" in anns[0]["target"]["rawSql"]
        assert anns[0]["enable"] is True


def test_panels_fit_the_grid_without_overlap(committed: dict[str, dict]) -> None:
    for name, board in committed.items():
        cells: set[tuple[int, int]] = set()
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in board["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= GRID_WIDTH, (name, p["title"])
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, f"{name}: {p['title']!r} overlaps another panel"
            cells |= mine


def test_every_query_expands_with_only_supported_macros(committed: dict[str, dict]) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ctx = QueryContext(
        now - timedelta(hours=1), now, {"namespace": ["shop"], "workload": None, "cluster": ["prod"]}
    )
    count = 0
    for name, board in committed.items():
        for q in panel_queries(name, board):
            if q.panel == "variable: cluster":
                continue  # label_values(), not PromQL: run as a label query
            text = (
                interpolate_sql(q.text, ctx)
                if q.datasource_type == POSTGRES_TYPE
                else interpolate_promql(q.text, ctx)
            )
            assert "$" not in text, (name, q.panel, text)
            count += 1
    assert count >= 50


def test_interpolation_matches_grafana() -> None:
    t0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    ctx = QueryContext(t0, t0 + timedelta(hours=1), {"namespace": ["a", "o'b"], "workload": None})
    out = interpolate_sql(
        "SELECT $__timeGroupAlias(minute, '5m') FROM t WHERE $__timeFilter(minute)"
        " AND ns IN (${namespace:sqlstring}) AND wl IN (${workload:sqlstring}) AND x > $__timeFrom()",
        ctx,
    )
    assert out == (
        'SELECT floor(extract(epoch from minute)/300)*300 AS "time" FROM t WHERE minute BETWEEN'
        " '2026-01-01T10:00:00Z' AND '2026-01-01T11:00:00Z' AND ns IN ('a', 'o''b') AND wl IN ('__all__')"
        " AND x > '2026-01-01T10:00:00Z'"
    )
    with pytest.raises(ValueError, match="timeEpoch"):
        interpolate_sql("SELECT $__timeEpoch(x)", ctx)
    with pytest.raises(ValueError, match="nope"):
        interpolate_sql("SELECT ${nope:sqlstring}", ctx)
    assert interpolate_promql("rate(x[$__rate_interval])", ctx) == "rate(x[1m])"
    # The cluster variable, as Grafana formats it for Prometheus: a regex; "All" is .*
    expr = 'sum(flowwarden_x{cluster=~"${cluster}"})'
    assert interpolate_promql(expr, ctx) == 'sum(flowwarden_x{cluster=~".*"})'
    two = QueryContext(t0, t0 + timedelta(hours=1), {"cluster": ["eu-1", "us.2"]})
    assert interpolate_promql(expr, two) == r'sum(flowwarden_x{cluster=~"(eu-1|us\\.2)"})'
    with pytest.raises(ValueError, match="label_values"):
        label_values_query("query_result(up)")


def test_datasources_expand_the_environment_and_name_a_missing_variable() -> None:
    found = {d["uid"]: d for d in datasources(env=GRAFANA_ENV)}
    assert found[POSTGRES_UID]["url"] == "postgres:5432"
    assert found[POSTGRES_UID]["secureJsonData"]["password"] == "secret"
    assert found[PROMETHEUS_UID]["url"] == "http://prometheus:9090"
    partial = {k: v for k, v in GRAFANA_ENV.items() if k != "FLOWWARDEN_GRAFANA_PG_PASSWORD"}
    with pytest.raises(ConfigError, match="FLOWWARDEN_GRAFANA_PG_PASSWORD"):
        datasources(env=partial)


def test_push_plan_uploads_every_dashboard_into_the_folder() -> None:
    todo = plan(env=GRAFANA_ENV)
    assert sorted(b["dashboard"]["uid"] for b in todo.dashboards) == sorted(
        b["uid"] for b in build_all().values()
    )
    assert all(b["folderUid"] == todo.folder["uid"] and b["overwrite"] for b in todo.dashboards)
    assert all(b["dashboard"]["id"] is None for b in todo.dashboards)
    assert {d["uid"] for d in todo.datasources} == provisioned_uids()


def test_render_draws_every_panel_title(tmp_path: Path, committed: dict[str, dict]) -> None:
    board = committed["lateral-movement"]
    first = render(board, tmp_path / "a.svg").read_text()
    second = render(board, tmp_path / "b.svg").read_text()
    assert first == second, "the SVG must be reproducible"
    for p in board["panels"]:
        assert p["title"].split(" (")[0].split()[0] in first


def test_docs_pictures_are_current(tmp_path: Path, committed: dict[str, dict]) -> None:
    img = Path(__file__).resolve().parents[2] / "docs" / "img"
    for name, board in committed.items():
        committed_svg = img / f"dashboard-{name}.svg"
        assert committed_svg.is_file(), f"run `flowwarden dashboards render` ({name})"
        fresh = render(board, tmp_path / committed_svg.name).read_text()
        assert fresh == committed_svg.read_text(), (
            f"{committed_svg.name} is stale: run `flowwarden dashboards render`"
        )


def test_cli_check_and_generate(tmp_path: Path) -> None:
    from flowwarden.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["dashboards", "check"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["dashboards", "generate", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "overview.json").read_text())["uid"] == "flowwarden-overview"
    (tmp_path / "overview.json").write_text("{}")
    result = runner.invoke(app, ["dashboards", "check", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError) and "stale" in str(result.exception)
    assert JSON_DIR.is_dir()


class _Grafana:
    """Grafana's HTTP API for what ``push`` calls, on loopback, with Grafana's rule for the
    default data source: a data source written with ``isDefault: true`` takes it from the others,
    and a create or a replacing update without it is not the default."""

    def __init__(self, datasources: list[dict]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.datasources = {d["uid"]: dict(d) for d in datasources}
        self.folders: set[str] = set()
        self.dashboards: dict[str, dict] = {}
        self.writes: list[tuple[str, str, dict]] = []
        grafana = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _reply(self, code: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts[:2] == ["api", "folders"] and parts[2] in grafana.folders:
                    return self._reply(200, {"uid": parts[2]})
                if parts[:3] == ["api", "datasources", "uid"] and parts[3] in grafana.datasources:
                    return self._reply(200, grafana.datasources[parts[3]])
                return self._reply(404, {"message": "not found"})

            def do_POST(self) -> None:
                body = self._body()
                grafana.writes.append(("POST", self.path, body))
                if self.path == "/api/folders":
                    grafana.folders.add(body["uid"])
                    return self._reply(200, {"uid": body["uid"]})
                if self.path == "/api/datasources":
                    grafana.store(body)
                    return self._reply(200, {"datasource": body})
                if self.path == "/api/dashboards/db":
                    grafana.dashboards[body["dashboard"]["uid"]] = body["dashboard"]
                    return self._reply(200, {"status": "success"})
                return self._reply(404, {"message": "not found"})

            def do_PUT(self) -> None:
                body = self._body()
                grafana.writes.append(("PUT", self.path, body))
                grafana.store(body)
                return self._reply(200, {"datasource": body})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def store(self, ds: dict) -> None:
        if ds.get("isDefault"):
            for other in self.datasources.values():
                other["isDefault"] = False
        self.datasources[ds["uid"]] = {**ds, "isDefault": bool(ds.get("isDefault"))}

    def default(self) -> list[str]:
        return [uid for uid, d in self.datasources.items() if d.get("isDefault")]


@pytest.mark.parametrize("ours_before", [None, "not default", "default"])
def test_push_leaves_the_default_datasource_alone(
    ours_before: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into a Grafana with a default data source of its own, whatever state ours are in."""
    import threading

    from flowwarden.dashboards.push import push

    for key, value in GRAFANA_ENV.items():
        monkeypatch.setenv(key, value)
    existing = [{"uid": "corp-prometheus", "type": "prometheus", "isDefault": ours_before != "default"}]
    if ours_before is not None:
        existing.append({"uid": PROMETHEUS_UID, "type": "prometheus", "isDefault": ours_before == "default"})
    grafana = _Grafana(existing)
    thread = threading.Thread(target=grafana.server.serve_forever, daemon=True)
    thread.start()
    try:
        before = grafana.default()
        done = push(grafana.url, "token")
    finally:
        grafana.server.shutdown()
        grafana.server.server_close()
    assert grafana.default() == before  # the same default as before the push
    assert set(grafana.dashboards) == {b["uid"] for b in build_all().values()}
    assert any("datasource flowwarden-postgres created" in line for line in done)
    for method, path, body in grafana.writes:
        if method == "POST" and path == "/api/datasources":
            assert "isDefault" not in body, body  # a new data source never claims the default
