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
from flowwarden.dashboards.model import ALL_VALUE, GRID_WIDTH, POSTGRES_UID, PROMETHEUS_UID
from flowwarden.dashboards.push import datasources, plan
from flowwarden.dashboards.queries import QueryContext, interpolate_promql, interpolate_sql, panel_queries
from flowwarden.dashboards.render import render
from flowwarden.errors import ConfigError

EXPECTED = {
    "overview": "flowwarden / Overview",
    "exfiltration": "flowwarden / Exfiltration",
    "lateral-movement": "flowwarden / Lateral movement",
    "enforcement": "flowwarden / Enforcement",
    "pipeline-health": "flowwarden / Pipeline health",
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


def test_five_dashboards_with_their_titles(committed: dict[str, dict]) -> None:
    assert {name: b["title"] for name, b in committed.items()} == EXPECTED
    assert len({b["uid"] for b in committed.values()}) == 5


def test_every_datasource_uid_is_provisioned(committed: dict[str, dict]) -> None:
    uids = provisioned_uids()
    assert uids == {POSTGRES_UID, PROMETHEUS_UID}
    for name, board in committed.items():
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in uids, (name, panel["title"])
            assert panel["targets"], f"{name}: panel {panel['title']!r} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids, (name, panel["title"], target["refId"])
        for var in board["templating"]["list"]:
            assert var["datasource"]["uid"] in uids
        for ann in board["annotations"]["list"]:
            assert ann["datasource"]["uid"] in uids | {"-- Grafana --"}


def test_namespace_and_workload_variables_on_every_dashboard(committed: dict[str, dict]) -> None:
    for name, board in committed.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert set(variables) == {"namespace", "workload"}, name
        for var in variables.values():
            assert var["multi"] and var["includeAll"] and var["allValue"] == ALL_VALUE
        assert "${namespace:sqlstring}" in variables["workload"]["query"], "workload must follow namespace"


def test_sql_panels_apply_the_scope_variables(committed: dict[str, dict]) -> None:
    for q in (q for name, b in committed.items() for q in panel_queries(name, b)):
        if (
            q.datasource_uid == POSTGRES_UID
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
    ctx = QueryContext(now - timedelta(hours=1), now, {"namespace": ["shop"], "workload": None})
    count = 0
    for name, board in committed.items():
        for q in panel_queries(name, board):
            text = (
                interpolate_sql(q.text, ctx)
                if q.datasource_uid == POSTGRES_UID
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
