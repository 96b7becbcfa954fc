"""Plugins wired one way: every family is a Registry; detector thresholds typed and range-checked."""

from __future__ import annotations

import subprocess
import sys
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

from flowwarden.cli import app
from flowwarden.cli.common import COMMANDS
from flowwarden.enforcement.backends import BACKENDS, make_backends
from flowwarden.errors import ConfigError
from flowwarden.pipeline.detection.detectors import (
    DETECTORS,
    Context,
    Detector,
    build_detectors,
    check_detector_settings,
)
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.runtime.notify import NOTIFIERS, build_hub
from flowwarden.plugins import Interval, Registry
from flowwarden.settings import Settings, load_settings

runner = CliRunner()


def _settings(**sections: Any) -> Settings:
    return load_settings(None, **sections)


# ---------------------------------------------------------------- the one mechanism


def test_registry_names_the_nearest_and_every_known_name() -> None:
    reg: Registry[int] = Registry("widget", "things.widgets")
    reg.register("alpha")(1)
    reg.register("beta")(2)
    assert reg.names() == ["alpha", "beta"] and reg.get("beta") == 2 and "alpha" in reg
    with pytest.raises(ConfigError) as exc:
        reg.get("alpah")
    assert str(exc.value) == (
        "things.widgets: unknown widget 'alpah'; did you mean 'alpha'? (known: alpha, beta)"
    )
    with pytest.raises(ValueError, match="two widgets named 'alpha'"):
        reg.register("alpha")(3)


def test_a_plugin_registered_under_another_name_than_its_own_is_refused() -> None:
    reg: Registry[type[Any]] = Registry("thing", "things")

    class Named:
        name = "one"

    with pytest.raises(ValueError, match="registered as 'two' but named 'one'"):
        reg.register("two")(Named)


def test_each_family_resolves_its_built_ins_through_its_registry() -> None:
    assert DETECTORS.names() == [
        "beaconing",
        "brute_force",
        "bulk_egress",
        "control_plane_access",
        "dns_tunnel",
        "fan_out",
        "ip_sweep",
        "isolation_forest",
        "metadata_api",
        "new_destination_volume",
        "policy_violation",
        "port_scan",
        "threat_feed",
        "trust_boundary",
    ]
    assert BACKENDS.names() == [
        "adminnetworkpolicy",
        "calico",
        "cilium",
        "exec",
        "networkpolicy",
        "nftables",
        "webhook",
    ]
    assert NOTIFIERS.names() == ["alertmanager", "slack", "webhook"]
    assert COMMANDS.names() == [
        "config",
        "simulate",
        "replay",
        "collect",
        "pipeline",
        "alerts",
        "policy",
        "feeds",
        "enforce",
        "models",
        "dashboards",
        "report",
        "store",
        "demo",
    ]
    for family in (DETECTORS, BACKENDS, NOTIFIERS):
        for name, cls in family.items():
            assert cls.name == name

    # Built from the settings through the registries, in the order the settings name them.
    s = _settings(
        enforcement={
            "backends": ["webhook", "exec", "nftables", "networkpolicy", "calico", "cilium"],
            "exec_path": "/bin/true",
            "webhook_url": "http://127.0.0.1:9/hook",
        }
    )
    assert [b.name for b in make_backends(s)] == [
        "webhook",
        "exec",
        "nftables",
        "networkpolicy",
        "calico",
        "cilium",
    ]
    n = _settings(
        notifiers={
            "webhook_urls": ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"],
            "slack_webhook_url": "http://127.0.0.1:9/s",
            "alertmanager_url": "http://127.0.0.1:9",
        }
    )
    hub = build_hub(n.notifiers)
    assert len(hub) == 4
    hub.close()
    assert len(build_hub(Settings().notifiers)) == 0
    assert [d.name for d in build_detectors(Settings())] == DETECTORS.names()
    groups = {g.name for g in app.registered_groups} | {c.name for c in app.registered_commands}
    assert {"config", "pipeline", "enforce", "models", "dashboards", "detect", "demo"} <= groups


def test_an_unknown_backend_is_refused_with_the_nearest_name() -> None:
    s = _settings(enforcement={"backends": ["nftable"]})
    with pytest.raises(ConfigError) as exc:
        make_backends(s)
    assert str(exc.value).startswith(
        "enforcement.backends: unknown backend 'nftable'; did you mean 'nftables'?"
    )


def test_a_command_module_that_fails_to_import_is_an_error_not_a_skipped_command() -> None:
    # A module set to None in sys.modules cannot be imported: the CLI must not start without it.
    code = (
        "import sys; sys.modules['flowwarden.cli.dashboards'] = None\n"
        "try:\n    import flowwarden.cli\nexcept ImportError as exc:\n    print('raised', exc.name)\n"
        "else:\n    print('imported', sorted(flowwarden.cli.common.COMMANDS.names()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "raised flowwarden.cli.dashboards", out.stdout + out.stderr


# ---------------------------------------------------------------- detector thresholds


def test_an_unknown_detector_is_rejected_with_the_nearest_name() -> None:
    s = _settings(pipeline={"detectors": {"port_scn": {"min_ports": 9}}})
    with pytest.raises(ConfigError) as exc:
        check_detector_settings(s)
    msg = str(exc.value)
    assert msg.startswith("pipeline.detectors: unknown detector 'port_scn'; did you mean 'port_scan'?")
    assert "fan_out" in msg  # every valid name is listed
    with pytest.raises(ConfigError, match="port_scn"):
        DetectionEngine(s)  # the engine checks when it is built


def test_an_unknown_threshold_is_rejected_with_the_nearest_name() -> None:
    s = _settings(pipeline={"detectors": {"port_scan": {"min_prots": 9}}})
    with pytest.raises(ConfigError) as exc:
        check_detector_settings(s)
    assert str(exc.value).startswith(
        "unknown key 'pipeline.detectors.port_scan.min_prots'; "
        "did you mean 'pipeline.detectors.port_scan.min_ports'?"
    )


@pytest.mark.parametrize(
    ("detector", "key", "value", "allowed"),
    [
        ("port_scan", "min_ports", 0, "an integer in [1, inf)"),
        ("port_scan", "min_ports", 8.5, "an integer in [1, inf)"),
        ("port_scan", "min_failed_share", 1.5, "a number in [0, 1]"),
        ("bulk_egress", "min_bytes", 0, "a number in (0, inf)"),
        ("fan_out", "include_nodes", 2, "an integer in [0, 1]"),
        ("new_destination_volume", "young_s", 7200, "a number in [0, 3600]"),
    ],
)
def test_an_out_of_range_threshold_names_its_key_path_and_range(
    detector: str, key: str, value: float, allowed: str
) -> None:
    s = _settings(pipeline={"detectors": {detector: {key: value}}})
    with pytest.raises(ConfigError) as exc:
        check_detector_settings(s)
    msg = str(exc.value)
    assert msg.startswith(f"'pipeline.detectors.{detector}.{key}': must be {allowed} (got {float(value)!r})")
    assert "or remove it for the default" in msg


def test_a_valid_override_is_kept_and_the_defaults_are_untouched() -> None:
    s = _settings(pipeline={"detectors": {"port_scan": {"min_ports": 30, "min_failed_share": 1}}})
    dets = {d.name: d for d in build_detectors(s)}
    assert dets["port_scan"].params == {"min_ports": 30.0, "min_total_ports": 30.0, "min_failed_share": 1.0}
    assert dets["fan_out"].params == {"min_new_peers": 5.0, "learn_s": 60.0, "include_nodes": 0.0}


def test_detector_names_elsewhere_in_the_settings_are_checked_too() -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"pipeline": {"disabled_detectors": ["dns_tunel"]}}, "pipeline.disabled_detectors", "dns_tunnel"),
        ({"enforcement": {"detectors": ["bulk_egres"]}}, "enforcement.detectors", "bulk_egress"),
        (
            {"enforcement": {"mode_by_detector": {"metadata_ap": "enforce"}}},
            "enforcement.mode_by_detector",
            "metadata_api",
        ),
    ]
    for sections, where, fix in cases:
        with pytest.raises(ConfigError) as exc:
            check_detector_settings(_settings(**sections))
        assert str(exc.value).startswith(f"{where}: unknown detector"), exc.value
        assert f"did you mean '{fix}'?" in str(exc.value)


def test_the_beacon_connection_count_is_one_pipeline_setting() -> None:
    s = _settings(pipeline={"detectors": {"beaconing": {"min_conns": 8}}})
    with pytest.raises(ConfigError) as exc:
        check_detector_settings(s)
    assert str(exc.value) == (
        "'pipeline.detectors.beaconing.min_conns' is now the setting 'pipeline.beacon_min_conns'"
    )
    with pytest.raises(ConfigError, match=r"pipeline\.beacon_min_conns"):
        _settings(pipeline={"beacon_min_conns": 1})


def test_config_check_runs_the_plugin_checks(tmp_path: Path) -> None:
    path = tmp_path / "flowwarden.yaml"
    path.write_text("pipeline:\n  detectors:\n    ip_sweep:\n      min_failed_hosts: 0\n")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert "'pipeline.detectors.ip_sweep.min_failed_hosts': must be an integer in [1, inf)" in str(
        result.exception
    )


def test_config_example_lists_every_threshold_with_its_range() -> None:
    text = runner.invoke(app, ["config", "example"]).output
    for name, cls in DETECTORS.items():
        assert f"#   {name}:" in text
        for key in cls.defaults:
            assert f"#     {key}: " in text
    assert "#     min_ports: 8  # an integer in [1, inf)" in text


def test_interval_bounds_and_kinds() -> None:
    share = Interval(Real, 0, 1)
    assert 0 in share and 1 in share and 0.5 in share and 1.01 not in share and -0.1 not in share
    assert float("nan") not in share and "0.5" not in share and True not in share
    count = Interval(Integral, 1, None, closed="left")
    assert 1 in count and 1.0 in count and 10**9 in count and 0 not in count and 1.5 not in count
    positive = Interval(Real, 0, None, closed="neither")
    assert 0 not in positive and 1e-9 in positive
    assert str(count) == "an integer in [1, inf)" and str(positive) == "a number in (0, inf)"


def test_a_detector_must_constrain_every_threshold_and_its_defaults_must_fit() -> None:
    with pytest.raises(TypeError, match="constraints must cover exactly"):

        class Unchecked(Detector):
            name = "unchecked"
            defaults: ClassVar[dict[str, float]] = {"min_x": 1.0}

    with pytest.raises(TypeError, match=r"default min_x=0\.0 is not an integer in"):

        class OutOfRange(Detector):
            name = "out_of_range"
            defaults: ClassVar[dict[str, float]] = {"min_x": 0.0}
            constraints: ClassVar[dict[str, Interval]] = {"min_x": Interval(Integral, 1, None, closed="left")}


# ---------------------------------------------------------------- the model hook


class _Plain(Detector):
    name = "plain"

    def score(self, ctx: Context) -> np.ndarray:
        return np.zeros(len(ctx.windows))


class _Modelled(Detector):
    name = "modelled"
    needs_model = True
    model: Any = None

    def set_model(self, model: Any) -> None:
        self.model = model

    def score(self, ctx: Context) -> np.ndarray:
        return np.zeros(len(ctx.windows))


def test_a_detector_that_declares_it_needs_a_model_gets_it_and_no_other_does() -> None:
    reg: Registry[type[Detector]] = Registry("detector", "pipeline.detectors")
    reg.register("plain")(_Plain)
    reg.register("modelled")(_Modelled)
    model = object()
    # _Plain keeps the base set_model, which refuses a model: building would fail if it got one.
    dets = {d.name: d for d in build_detectors(Settings(), model, registry=reg)}
    assert isinstance(dets["modelled"], _Modelled) and dets["modelled"].model is model
    with pytest.raises(TypeError, match="does not take a model"):
        dets["plain"].set_model(model)


def test_the_engine_hands_a_new_model_to_the_model_detector_only() -> None:
    eng = DetectionEngine(Settings())
    takers = [d for d in eng.detectors if d.needs_model]
    assert [d.name for d in takers] == ["isolation_forest"]

    class Model:
        version, feature_names, threshold, state = "m-7", ["bytes_out_ext"], 0.5, None

    m: Any = Model()
    eng.set_model(m)
    assert takers[0].model is m  # type: ignore[attr-defined]
    assert eng.alerts.model_version == "m-7"
    assert all(not hasattr(d, "model") for d in eng.detectors if not d.needs_model)


# ---------------------------------------------------------------- knobs


def test_the_engine_takes_its_knobs_from_the_settings() -> None:
    s = _settings(
        pipeline={
            "allowed_lateness_s": 5.0,
            "baseline_ttl_h": 2.0,
            "alerted_edges_taint_h": 3.0,
            "beacon_horizon_s": 1800.0,
            "beacon_max_pairs": 10,
            "recent_horizon_s": 120.0,
            "recent_max_rows": 20,
            "max_vocabulary": 30,
        }
    )
    eng = DetectionEngine(s)
    assert eng.buffer.lateness_s == 5.0
    assert eng.entity_base.ttl_s == eng.workload_base.ttl_s == 7200.0
    assert eng.taint_s == 10800.0
    assert (eng.connections.horizon_s, eng.connections.max_pairs) == (1800.0, 10)
    assert (eng.recent.horizon_s, eng.recent.max_rows) == (120.0, 20)
    assert eng.vocab_max == 30
    # The defaults are the values the constants had.
    d = DetectionEngine(Settings())
    assert (d.buffer.lateness_s, d.entity_base.ttl_s, d.taint_s) == (2.0, 86400.0, 86400.0)
    assert (d.connections.horizon_s, d.connections.max_pairs) == (3600.0, 100_000)
    assert (d.recent.horizon_s, d.recent.max_rows, d.vocab_max) == (60.0, 1_000_000, 2_000_000)
    assert Settings().pipeline.beacon_min_conns == 6 and Settings().enforcement.expire_interval_s == 1.0
