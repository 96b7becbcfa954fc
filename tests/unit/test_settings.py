"""Settings: YAML, environment overrides, clear errors; ``flowwarden config`` on top."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flowwarden.cli import app
from flowwarden.errors import ConfigError
from flowwarden.settings import Settings, dump_settings, load_settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_ambient_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own FLOWWARDEN_* variables must not change these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("FLOWWARDEN_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flowwarden.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_mode():
    s = load_settings(None)
    assert s.bus.kind == "memory"
    assert s.store.url.startswith("sqlite:")
    assert s.enforcement.mode == "dry_run"
    assert s.kafka.topics.flows_dlq == "flows.dlq"
    cp = s.control_plane
    assert (cp.api_server_port, cp.etcd_ports, cp.kubelet_port) == (6443, [2379, 2380], 10250)
    assert (cp.scheduler_port, cp.controller_manager_port, cp.nodeport_range, cp.dns_port) == (
        10259,
        10257,
        (30000, 32767),
        53,
    )


def test_yaml_file_is_read_and_normalised(tmp_path: Path):
    path = write(
        tmp_path,
        """
bus: {kind: kafka}
kafka:
  bootstrap_servers: ["kafka-0:9092", "kafka-1:9092"]
  partitions: 12
  topics: {flows: prod.flows}
cluster:
  pod_cidrs: ["10.244.1.7/16", "fd00:10:244::/56"]
""",
    )
    s = load_settings(path)
    assert s.bus.kind == "kafka"
    assert s.kafka.bootstrap_servers == ["kafka-0:9092", "kafka-1:9092"]
    assert s.kafka.partitions == 12
    assert s.kafka.topics.flows == "prod.flows" and s.kafka.topics.alerts == "alerts"
    assert s.cluster.pod_cidrs == ["10.244.0.0/16", "fd00:10:244::/56"]


def test_environment_overrides_the_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = write(tmp_path, "kafka:\n  partitions: 12\n  client_id: from-yaml\nbus:\n  kind: kafka\n")
    monkeypatch.setenv("FLOWWARDEN_KAFKA__PARTITIONS", "3")
    monkeypatch.setenv("FLOWWARDEN_KAFKA__BOOTSTRAP_SERVERS", '["env-kafka:9092"]')
    s = load_settings(path)
    assert s.kafka.partitions == 3, "environment wins over the file"
    assert s.kafka.bootstrap_servers == ["env-kafka:9092"]
    assert s.kafka.client_id == "from-yaml", "keys the environment does not set come from the file"
    assert s.bus.kind == "kafka"


def test_unknown_key_names_its_path_and_the_nearest_valid_name(tmp_path: Path):
    path = write(tmp_path, "kafka:\n  bootstrap_server: ['x:9092']\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    msg = str(err.value)
    assert "unknown key 'kafka.bootstrap_server'" in msg
    assert "did you mean 'kafka.bootstrap_servers'?" in msg
    assert str(path) in msg


def test_unknown_section_is_rejected_with_a_suggestion(tmp_path: Path):
    path = write(tmp_path, "enforcment:\n  mode: enforce\n")
    with pytest.raises(ConfigError, match=r"unknown key 'enforcment'; did you mean 'enforcement'\?"):
        load_settings(path)


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [
        ("pipeline.inventory_path", "kubernetes.inventory_path", "/var/lib/pods.json"),
        ("pipeline.inventory_source", "kubernetes.inventory_source", "kubernetes"),
        ("pipeline.kubernetes_in_cluster", "kubernetes.in_cluster", "false"),
        ("kubernetes.backoff_max_s", "retry.max_s", "10.0"),
    ],
)
def test_a_moved_key_is_rejected_naming_its_new_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str, value: str
):
    section, key = old.split(".")
    path = write(tmp_path, f"{section}:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"{old} moved to {new}"):
        load_settings(path)
    env_old = "FLOWWARDEN_" + old.upper().replace(".", "__")
    env_new = "FLOWWARDEN_" + new.upper().replace(".", "__")
    monkeypatch.setenv(env_old, value)
    with pytest.raises(ConfigError, match=rf"{old} moved to {new} \(environment: set {env_new} instead"):
        load_settings()
    monkeypatch.delenv(env_old)
    monkeypatch.setenv(env_new, value)
    moved = load_settings()
    new_section, new_key = new.split(".")
    got = getattr(getattr(moved, new_section), new_key)
    assert str(got).lower() == value


def test_the_kubernetes_section_checks_the_watch_s_knobs(tmp_path: Path):
    path = write(tmp_path, "retry:\n  initial_s: 5\n  max_s: 1\n")  # the watch's back-off: settings.retry
    with pytest.raises(ConfigError, match="max_s must be at least initial_s"):
        load_settings(path)
    with pytest.raises(ConfigError, match=r"'kubernetes\.page_size'"):
        load_settings(write(tmp_path, "kubernetes:\n  page_size: 0\n"))


def test_bad_value_names_the_key(tmp_path: Path):
    path = write(tmp_path, "kafka:\n  partitions: 0\n")
    with pytest.raises(ConfigError, match=r"'kafka\.partitions': .*greater than or equal to 1"):
        load_settings(path)
    path = write(tmp_path, "cluster:\n  pod_cidrs: ['10.244.0.0/33']\n")
    with pytest.raises(ConfigError, match=r"'cluster\.pod_cidrs"):
        load_settings(path)


def test_sasl_needs_a_mechanism_and_user(tmp_path: Path):
    path = write(tmp_path, "kafka:\n  security_protocol: SASL_SSL\n")
    with pytest.raises(ConfigError, match="sasl_mechanism"):
        load_settings(path)


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "kafka: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"))


def test_dump_masks_secrets_and_round_trips(tmp_path: Path):
    s = Settings.model_validate(
        {
            "kafka": {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "fw",
                "sasl_password": "hunter2",
            }
        }
    )
    text = dump_settings(s)
    assert "hunter2" not in text
    data = yaml.safe_load(text)
    data["kafka"]["sasl_password"] = "hunter2"
    again = load_settings(write(tmp_path, yaml.safe_dump(data)))
    assert again.kafka.sasl_password is not None
    assert again.kafka.sasl_password.get_secret_value() == "hunter2"


def test_config_check_prints_effective_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = write(tmp_path, "kafka:\n  partitions: 9\n")
    monkeypatch.setenv("FLOWWARDEN_BUS__KIND", "kafka")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    body = yaml.safe_load(result.output)
    assert body["kafka"]["partitions"] == 9
    assert body["bus"]["kind"] == "kafka"


def test_config_check_reports_one_clear_error(tmp_path: Path):
    path = write(tmp_path, "pipeline:\n  windw_s: 5\n")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert "did you mean 'pipeline.window_s'?" in str(result.exception)


def test_config_example_is_commented_and_passes_check(tmp_path: Path):
    result = runner.invoke(app, ["config", "example"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.count("\n#") >= 5, "it explains itself"
    assert "FLOWWARDEN_" in text
    for section in Settings.model_fields:
        assert f"\n{section}:" in text, f"section {section} is in the example"
    path = write(tmp_path, text)
    loaded = load_settings(path)
    defaults = Settings().model_dump(mode="json")
    assert loaded.model_dump(mode="json") == defaults
    check = runner.invoke(app, ["config", "check", str(path)])
    assert check.exit_code == 0, check.output
