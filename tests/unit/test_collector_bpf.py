"""The capture filter: the user's expression minus the collector's own Kafka traffic."""

from __future__ import annotations

import pytest

from flowwarden.collectors.capture import build_bpf, check_interfaces, parse_host_port
from flowwarden.errors import ConfigError


def test_kafka_servers_are_left_out_of_the_capture() -> None:
    assert build_bpf("", ["10.0.0.5:9092", "[fd00::5]:9093", "kafka.flowwarden.svc:9094"]) == (
        "not (host 10.0.0.5 and tcp port 9092) and not (host fd00::5 and tcp port 9093)"
        " and not (host kafka.flowwarden.svc and tcp port 9094)"
    )
    assert (
        build_bpf("tcp or udp", ["127.0.0.1:9092"])
        == "(tcp or udp) and not (host 127.0.0.1 and tcp port 9092)"
    )
    assert build_bpf("  ", []) == ""


@pytest.mark.parametrize(
    "server",
    ["1.2.3.4 or port 1:9092", "kafka:99999", "kafka", "host;rm:9092", "[not-v6]:9092", "-i:9092"],
)
def test_only_validated_host_port_pairs_reach_the_filter(server: str) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_servers"):
        parse_host_port(server)


def test_a_missing_interface_lists_those_that_exist() -> None:
    with pytest.raises(ConfigError, match=r"interface 'nope0' does not exist; interfaces: .*\blo\b"):
        check_interfaces(["nope0"])
    with pytest.raises(ConfigError, match="at least one --interface"):
        check_interfaces([])
