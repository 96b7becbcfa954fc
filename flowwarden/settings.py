"""One typed configuration object for every process.

Loaded once (:func:`load_settings`) from an optional YAML file, then overridden by
``FLOWWARDEN_…`` environment variables (nested keys joined by ``__``, e.g.
``FLOWWARDEN_KAFKA__BOOTSTRAP_SERVERS='["kafka:9092"]'``), validated at start and passed
down explicitly. Unknown keys are rejected with their path and the nearest valid name.
Each stage owns one section; the defaults are the embedded mode (in-memory bus, SQLite,
enforcement in dry-run).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from flowwarden.errors import ConfigError

ENV_PREFIX = "FLOWWARDEN_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _cidrs(values: list[str]) -> list[str]:
    return [str(ipaddress.ip_network(v, strict=False)) for v in values]


def _ips(values: list[str]) -> list[str]:
    return [str(ipaddress.ip_address(v)) for v in values]


class ClusterSettings(Section):
    """The cluster's address plan: direction and guardrails are derived from it."""

    name: str = "cluster"
    pod_cidrs: list[str] = ["10.244.0.0/16"]
    service_cidrs: list[str] = ["10.96.0.0/12"]
    node_cidrs: list[str] = ["10.0.0.0/16"]
    node_ips: list[str] = []  # explicit node addresses (never blocked)
    cluster_dns: list[str] = ["10.96.0.10"]
    metadata_api: list[str] = ["169.254.169.254", "fd00:ec2::254"]

    # Namespaces as trust boundaries (README, "How detection works"): levels lowest first,
    # a level per namespace (unlabelled ones take ``namespace_trust_default``; "": no part),
    # and how much more a never-seen edge across namespaces weighs than one inside.
    trust_levels: list[str] = ["dmz", "internal", "restricted"]
    namespace_trust: dict[str, str] = {}
    namespace_trust_default: str = ""
    cross_namespace_weight: float = Field(1.25, ge=1.0, le=10.0)
    namespace_pair_weights: dict[str, float] = {}  # "src-ns->dst-ns": weight

    _v_cidrs = field_validator("pod_cidrs", "service_cidrs", "node_cidrs")(_cidrs)
    _v_ips = field_validator("node_ips", "cluster_dns", "metadata_api")(_ips)

    @model_validator(mode="after")
    def _trust(self) -> ClusterSettings:
        levels = self.trust_levels
        if len(set(levels)) != len(levels) or not all(levels):
            raise ValueError(f"trust_levels must be distinct non-empty names, lowest first (got {levels})")
        bad = {ns: lv for ns, lv in self.namespace_trust.items() if lv not in levels}
        if self.namespace_trust_default and self.namespace_trust_default not in levels:
            bad["namespace_trust_default"] = self.namespace_trust_default
        if bad:
            raise ValueError(
                f"unknown trust level in namespace_trust: {bad}; use one of trust_levels {levels} "
                "or add the level there"
            )
        for pair, weight in self.namespace_pair_weights.items():
            src, sep, dst = pair.partition("->")
            if not sep or not src or not dst or not 1.0 <= weight <= 10.0:
                raise ValueError(
                    f"namespace_pair_weights: '{pair}: {weight}' must read 'src-namespace->dst-namespace' "
                    "with a weight from 1 to 10"
                )
        return self

    def internal_cidrs(self) -> list[str]:
        return [*self.pod_cidrs, *self.service_cidrs, *self.node_cidrs]


class ControlPlaneSettings(Section):
    """Control-plane endpoints: detectors watch them, guardrails never block them."""

    api_server_ips: list[str] = []  # empty: any node address
    api_server_port: int = 6443
    etcd_ports: list[int] = [2379, 2380]
    kubelet_port: int = 10250
    scheduler_port: int = 10259
    controller_manager_port: int = 10257
    nodeport_range: tuple[int, int] = (30000, 32767)
    dns_port: int = 53
    # Namespaces whose pods legitimately talk to the API server (operators, controllers).
    api_clients_namespaces: list[str] = ["kube-system", "monitoring", "flowwarden"]

    _v_ips = field_validator("api_server_ips")(_ips)

    def ports(self) -> list[int]:
        """Every control-plane port, API server first."""
        return [
            self.api_server_port,
            *self.etcd_ports,
            self.kubelet_port,
            self.scheduler_port,
            self.controller_manager_port,
        ]


class TopicSettings(Section):
    flows: str = "flows"
    alerts: str = "alerts"
    decisions: str = "decisions"
    flows_dlq: str = "flows.dlq"
    alerts_dlq: str = "alerts.dlq"  # alerts the enforcer could not read, with the reason in headers
    # Scale-out (docs/scale-out.md): enriched flows keyed by workload, from the enrich stage to
    # the detect stage; and the cluster-wide memory every detect worker reads in full.
    flows_by_workload: str = "flows-by-workload"
    global_memory: str = "flowwarden-global-memory"


class KafkaSettings(Section):
    bootstrap_servers: list[str] = ["127.0.0.1:9092"]
    client_id: str = "flowwarden"
    topics: TopicSettings = TopicSettings()
    partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    linger_ms: int = Field(20, ge=0)
    batch_size: int = Field(1_048_576, ge=1024)
    max_request_size: int = Field(8_388_608, ge=1024)
    connect_timeout_s: float = Field(30.0, gt=0)
    # Bus client tuning (flowwarden/bus_kafka.py). Batches are already zstd inside (wire.py),
    # so Kafka-level compression is off by default.
    compression_type: Literal["none", "gzip", "lz4", "zstd"] = "none"
    acks: Literal["0", "1", "all"] = "all"
    idempotence: bool = True  # needs acks=all; off for brokers that forget producer ids on restart
    max_in_flight: int = Field(5, ge=1)  # requests per connection; 1 keeps order without idempotence
    delivery_timeout_ms: int = Field(120_000, ge=1000)
    request_timeout_ms: int = Field(30_000, ge=1000)
    session_timeout_ms: int = Field(10_000, ge=1000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    fetch_max_bytes: int = Field(52_428_800, ge=1024)
    # How long a fetch may wait for data. Apache Kafka answers as soon as data arrives; some
    # brokers (the test broker) hold the fetch this long, which then bounds delivery latency.
    fetch_max_wait_ms: int = Field(100, ge=0, le=10_000)

    @model_validator(mode="after")
    def _sasl(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (self.sasl_mechanism and self.sasl_username):
            raise ValueError("security_protocol SASL_* needs sasl_mechanism and sasl_username")
        return self


class BusSettings(Section):
    kind: Literal["memory", "kafka"] = "memory"


class StoreSettings(Section):
    url: str = "sqlite:///flowwarden.db"  # postgresql+psycopg://user@host/db in production
    # How long a transaction keeps being retried (with back-off) while the database refuses
    # connections, drops them, shuts down or aborts for a deadlock or a serialization
    # failure, before the process gives up (a restart or failover of the database).
    retry_deadline_s: float = Field(60.0, ge=0)
    # Retention (flowwarden/retention.py; 0 keeps forever). Rollups feed the dashboards and
    # ``policy recommend --since``; batch marks only need to outlive the flows topic's own
    # retention (a batch still in Kafka may be replayed and must be recognised).
    rollup_retention_days: float = Field(30.0, ge=0)
    batch_mark_retention_days: float = Field(7.0, ge=0)
    # How often a running pipeline prunes (every worker may; the deletes are idempotent).
    prune_interval_s: float = Field(3600.0, gt=0)


class CollectorSettings(Section):
    node: str = Field(default_factory=lambda: os.uname().nodename)
    # Interface names or globs ("cali*", "lxc*", "veth*", "eth0"); empty or ["auto"]: the
    # node's CNI's pod interfaces plus the default-route uplink (collectors/interfaces.py).
    interfaces: list[str] = []
    # How often interfaces are re-read when no netlink event arrives (pods come and go).
    interface_poll_s: float = Field(2.0, gt=0, le=60)
    bpf: str = ""
    # Bytes kept per packet: enough for the longest DNS name (253) behind Ethernet, VLAN, an
    # IPv6 header and an overlay's outer headers, so a tunnel's names are read whole.
    snaplen: int = Field(512, ge=64, le=262144)
    idle_timeout_s: float = Field(15.0, gt=0)
    active_timeout_s: float = Field(10.0, gt=0)
    # After both FINs a TCP flow waits this long for its last ACK, then ends (reason "fin").
    fin_grace_s: float = Field(0.5, ge=0, le=5)
    # A SYN with no answer yet waits this long before its first record says "syn_only".
    handshake_wait_s: float = Field(1.0, ge=0, le=10)
    max_flows: int = Field(1_000_000, ge=1)
    # Seed of each record's Community ID (v1); set the seed Zeek or Suricata use (0 there too
    # by default) so that their logs join the records on community_id.
    community_id_seed: int = Field(0, ge=0, le=65535)
    batch_max_flows: int = Field(5_000, ge=1)
    batch_interval_ms: int = Field(1_000, ge=1)
    queue_max_batches: int = Field(256, ge=1)
    spool_dir: Path = Path("/var/lib/flowwarden/spool")
    spool_max_bytes: int = Field(512 * 1024 * 1024, ge=0)
    exclude_kafka_traffic: bool = True
    app_names: bool = True  # dissect DNS / TLS SNI / HTTP Host with tshark (candidate packets only)
    metrics_port: int = Field(9101, ge=0, le=65535)  # 0: no /metrics endpoint
    # dumpcap runs with only NET_RAW+NET_ADMIN; tcpdump also needs SETUID/SETGID (collectors/capture.py).
    capture_tool: Literal["dumpcap", "tcpdump"] = "dumpcap"
    # Capture inside this network namespace (``ip netns exec``), e.g. a pod's, from the node.
    netns: str = Field("", pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$")
    publish_flush_timeout_s: float = Field(10.0, gt=0)  # wait for delivery of each batch
    spool_retry_s: float = Field(2.0, gt=0)  # how often a non-empty spool tries the bus again

    @field_validator("interfaces")
    @classmethod
    def _interface_patterns(cls, v: list[str]) -> list[str]:
        """Names or globs of at most 15 safe characters: nothing else may reach a capture."""
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@-*?")
        bad = [p for p in v if not 1 <= len(p) <= 15 or not set(p) <= allowed]
        if bad:
            raise ValueError(f"not interface names or patterns (A-Z a-z 0-9 _.:@- * ?, 15 at most): {bad}")
        return v


class KubernetesSettings(Section):
    """The pod inventory: enrichment and the enforcer's guardrails read the same pods."""

    # Where pods come from: "file" reads inventory_path (no pods when unset) and reloads it when
    # it changes, "kubernetes" lists and watches pods through the API (needs list and watch on
    # pods cluster-wide), "none" knows no pods.
    inventory_source: Literal["file", "kubernetes", "none"] = "file"
    inventory_path: Path | None = None  # the JSON of `kubectl get pods -A -o json`
    in_cluster: bool = True  # true: the service account of the pod; false: the local kubeconfig ($KUBECONFIG)
    # The watch: a deleted pod keeps its address this long, for flows that arrive late.
    deleted_retention_s: float = Field(120.0, ge=0)
    min_refresh_s: float = Field(2.0, ge=0)  # a new snapshot at most this often (a rebuild reads every pod)
    watch_timeout_s: int = Field(300, ge=1)  # the server ends each watch request after this; it is reopened
    request_timeout_s: float = Field(30.0, gt=0)  # connect and read timeout of one API request
    page_size: int = Field(500, ge=1, le=10_000)  # pods per page of a list


class PipelineSettings(Section):
    group_id: str = "flowwarden-pipeline"
    window_s: float = Field(10.0, gt=0)
    model_dir: Path | None = None  # model registry; None: the model shipped with the package
    allowlist_sources: list[str] = []  # CIDRs, "namespace/", or "namespace/workload"
    baseline_half_life_h: float = Field(6.0, gt=0)
    seen_edges_ttl_days: float = Field(7.0, gt=0)
    max_entities: int = Field(200_000, ge=1)
    max_edges: int = Field(2_000_000, ge=1)
    checkpoint_interval_s: float = Field(60.0, gt=0)
    # Flow batches (messages) taken and decoded per poll. Fewer hold fewer flows in flight and
    # make smaller engine calls: 10 instead of 50 cut a worker's peak RSS from ~1.2 GB to
    # ~0.9 GB in bench_pipeline (10k), for the same flows per CPU-second (see the README).
    max_poll_batches: int = Field(10, ge=1, le=10_000)
    # Flows held back to merge the partitions in event-time order; past it they go on unmerged.
    max_buffered_flows: int = Field(2_000_000, ge=1_000)
    # Enriched flows kept for the store's rollups before a write (else every store_flush_s).
    store_flush_flows: int = Field(500_000, ge=1_000)
    # Rollups and batch marks are written at least this often.
    store_flush_s: float = Field(2.0, gt=0)
    # A partition that sent nothing for this long no longer holds the others back (event-time merge).
    align_idle_s: float = Field(2.0, gt=0)
    # No flow for this long: the event-time clock advances by the wall time, closing windows.
    idle_tick_s: float = Field(2.0, gt=0)
    # How often the model registry's active version is read (a promote takes effect within it).
    model_poll_s: float = Field(10.0, gt=0)
    # How long a checkpoint waits for the alerts topic to take every alert before it postpones.
    producer_flush_timeout_s: float = Field(30.0, gt=0)
    # Flows that start or end more than this ahead of the wall clock (a node with a broken
    # clock) go to the dead-letter topic: they would otherwise drag event time into the future.
    max_clock_skew_s: float = Field(300.0, gt=0)
    # How late (event time) a flow may arrive after its window ends and still count in it.
    allowed_lateness_s: float = Field(2.0, ge=0)
    # Rule detectors with conclusive evidence (scans, control-plane and metadata-API access,
    # a large upload to a new address) alert from the open window, before it closes.
    early_alerts: bool = True
    # After an entity's first early scoring in a window, score it again at most this often
    # (event time) to add the targets found since; the window's close has the final word.
    early_interval_s: float = Field(1.0, gt=0)
    # A pod's or workload's baseline that nothing updated for this long is forgotten.
    baseline_ttl_h: float = Field(24.0, gt=0)
    # A window is "learning" while the engine's memory or the entity's workload is younger
    # than this: its exfiltration findings do not pin their edges as new (a CronJob whose
    # first run alerted during learning is not alerted again on its next runs).
    learning_s: float = Field(300.0, ge=0)
    # The edges of an alerted lateral movement stay new to every other pod this long.
    alerted_edges_taint_h: float = Field(24.0, ge=0)
    # Connections to one external address before its regularity is scored (the beacon score's
    # persistence saturates at twice this); beaconing needs at least this many.
    beacon_min_conns: int = Field(6, ge=2)
    # Beacon history kept per (pod, address, port): a beacon slower than this divided by
    # beacon_min_conns goes unseen.
    beacon_horizon_s: float = Field(3600.0, gt=0)
    beacon_max_pairs: int = Field(100_000, ge=1)  # pairs with a beacon history; the least active go first
    # Spread of the intervals between connections (IQR / median) still scored as perfectly
    # regular: C2 frameworks jitter their sleep by 0-50 %.
    beacon_max_jitter: float = Field(0.5, ge=0, le=2)
    # Authentication ports: many short sessions to one of them is brute force (T1110).
    auth_ports: list[int] = [22, 3389, 5432, 3306, 6379, 6443]
    # The sliding "last minute" of the slow-scan features (recent new peers, failed hosts, ports).
    recent_horizon_s: float = Field(60.0, gt=0)
    recent_max_rows: int = Field(1_000_000, ge=1)  # connections kept for those features; the oldest go first
    # Strings (addresses, names) held as ids; past this the table is rebuilt from what is buffered.
    max_vocabulary: int = Field(2_000_000, ge=1)
    # Per-detector overrides of thresholds, each checked against the detector's range when the
    # settings are loaded: {"port_scan": {"min_ports": 30}}. Every threshold is listed below.
    detectors: dict[str, dict[str, float]] = {}
    disabled_detectors: list[str] = []
    metrics_port: int = Field(9102, ge=0, le=65535)


class RetrySettings(Section):
    """The back-off of every outbound call: Kafka, store, notifiers, webhooks, Kubernetes API, Grafana."""

    # How long each target keeps trying stays in its own section (kafka.connect_timeout_s,
    # store.retry_deadline_s, notifiers.retries, enforcement.webhook_retries; the pod watch
    # never gives up); every retry is counted in flowwarden_retries_total{target}.
    initial_s: float = Field(0.5, gt=0)  # the first wait; doubles per failed try
    max_s: float = Field(30.0, gt=0)  # the longest wait between two tries
    jitter: bool = True  # add up to initial_s at random, so clients that failed together spread out

    @model_validator(mode="after")
    def _bounds(self) -> RetrySettings:
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be at least initial_s")
        return self


class NotifierSettings(Section):
    webhook_urls: list[str] = []
    slack_webhook_url: str | None = None
    alertmanager_url: str | None = None  # e.g. http://alertmanager:9093
    min_severity: Literal["low", "medium", "high", "critical"] = "medium"
    timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(3, ge=0)  # after the first attempt, with the back-off of the retry section
    queue_max: int = Field(
        1000, ge=1
    )  # alert batches waiting per notifier; beyond it they are dropped (counted)


class AlertSettings(Section):
    """How alerts leave flowwarden for other tools (flowwarden.alert_formats)."""

    # native: flowwarden's own Alert JSON; ecs: Elastic Common Schema; ocsf: OCSF Detection
    # Finding (class 2004). Applies to the webhook notifier, `flowwarden detect --format` and,
    # when not native, to export_topic (the alerts topic stays native: the enforcer reads it).
    format: Literal["native", "ecs", "ocsf"] = "native"
    # Kafka topic of the exported alerts when format is ecs or ocsf ("": no exported topic).
    export_topic: str = "alerts.export"


class FeedExportSettings(Section):
    """The threat feeds exported by the running enforcer (enforcement/feeds_export.py), kept current."""

    nft: bool = False  # the nftables sets feed_v4 / feed_v6 in table inet <nft_table>_feeds
    calico_dir: Path | None = None  # GlobalNetworkSets written here (calico/feeds/); None: not written
    # How often the enforcer looks at the feeds: an edited file feed is exported at the next look;
    # a URL feed is asked again on its own rules.feeds[].refresh_s (conditionally).
    refresh_s: float = Field(60.0, gt=0)


class EnforcementSettings(Section):
    mode: Literal["dry_run", "approval", "enforce"] = "dry_run"
    mode_by_detector: dict[str, Literal["dry_run", "approval", "enforce"]] = {}
    # Among nftables, networkpolicy, calico, cilium, adminnetworkpolicy, exec, webhook (the registered
    # enforcement backends).
    backends: list[str] = ["nftables"]
    kinds: list[Literal["exfiltration", "lateral_movement"]] = ["exfiltration", "lateral_movement"]
    detectors: list[str] = []  # empty: every detector
    min_severity: Literal["low", "medium", "high", "critical"] = "high"
    min_score: float = Field(0.8, ge=0, le=1)
    # Act on alerts raised while their entity or workload was still learning (``learning: true``:
    # maybe the cluster's normal, not yet learned)? By default they are refused (guardrail "learning").
    act_on_learning: bool = False
    action: Literal["block", "quarantine"] = "block"
    ttl_s: int = Field(4 * 3600, ge=1)
    ttl_max_s: int = Field(7 * 24 * 3600, ge=1)
    escalation_factor: float = Field(2.0, ge=1)
    group_id: str = "flowwarden-enforcer"
    # Guardrails: the allowlist always wins.
    allow_cidrs: list[str] = []
    allow_namespaces: list[str] = ["kube-system"]
    allow_workloads: list[str] = []  # "namespace/workload"
    protected_ips: list[str] = []  # flowwarden's own components, its Kafka, anything else vital
    min_prefix_v4: int = Field(24, ge=0, le=32)
    min_prefix_v6: int = Field(64, ge=0, le=128)
    max_active_blocks: int = Field(200, ge=0)
    max_new_blocks_per_minute: int = Field(20, ge=0)
    max_workload_share: float = Field(0.5, ge=0, le=1)
    # Most targets one automatic block may carry; an alert with more (a sweep) becomes a quarantine
    # of its source that waits for a person's approval, never an automatic wide block.
    max_targets_per_block: int = Field(256, ge=1)
    # Backends.
    nft_table: str = Field("flowwarden", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    nft_netns: str = Field("", pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$")  # "": the enforcer's own
    nft_verdict: Literal["reject", "drop"] = "reject"
    reconcile_interval_s: float = Field(30.0, gt=0)
    expire_interval_s: float = Field(1.0, gt=0)  # how often blocks past their TTL are looked for
    gitops_dir: Path = Path("flowwarden-rules")
    kube_namespaces: list[str] = []  # namespaces the enforcer may write NetworkPolicies in
    # Priority of flowwarden's AdminNetworkPolicies (adminnetworkpolicy backend; lower wins): keep it
    # below (a larger number than) any AdminNetworkPolicy that must win over a block.
    anp_priority: int = Field(10, ge=0, le=1000)
    apply_to_cluster: bool = False
    exec_path: Path | None = None
    exec_timeout_s: float = Field(10.0, gt=0)
    webhook_url: str | None = None
    webhook_retries: int = Field(3, ge=0)
    metrics_port: int = Field(9103, ge=0, le=65535)
    feed_export: FeedExportSettings = FeedExportSettings()  # with rules.feeds: refreshed by the enforcer

    _v_cidrs = field_validator("allow_cidrs")(_cidrs)
    _v_ips = field_validator("protected_ips")(_ips)


class FeedSource(Section):
    """One threat feed: a file or an http(s) URL of addresses/CIDRs or domain names."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")  # names the feed in alerts and exports
    url: str = Field(min_length=1)  # http(s)://..., or a local file path
    # auto, lines (one entry per line, # comments), spamhaus_drop, feodo_csv, urlhaus_csv, hosts.
    format: Literal["auto", "lines", "spamhaus_drop", "feodo_csv", "urlhaus_csv", "hosts"] = "auto"
    refresh_s: float = Field(3600.0, ge=60)  # how often a URL is asked again (ETag / If-Modified-Since)
    enabled: bool = True


class RulesSettings(Section):
    """Declared policy and threat feeds (issue 17): detected by policy_violation and threat_feed."""

    policy_file: Path | None = None  # the policy YAML kept in git; None: no policy declared
    feeds: list[FeedSource] = []
    feed_cache_dir: Path = Path("flowwarden-feeds")  # last good copy of every URL feed
    feed_timeout_s: float = Field(30.0, gt=0)  # one download's connect and read timeout
    feed_max_bytes: int = Field(200_000_000, ge=1024)  # a larger download is refused (kept: last good copy)
    # A flow to an address the pod itself resolved stays allowed this long past the answer's TTL.
    dns_grace_s: float = Field(300.0, ge=0)
    dns_cache_max: int = Field(500_000, ge=1)  # (pod, address) answers kept; the oldest go first

    @field_validator("feeds")
    @classmethod
    def _unique(cls, v: list[FeedSource]) -> list[FeedSource]:
        names = [f.name for f in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"feed names must be unique: {', '.join(dup)}")
        return v


class Settings(BaseSettings):
    """Everything flowwarden can be told. Every field has a working default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    cluster: ClusterSettings = ClusterSettings()
    control_plane: ControlPlaneSettings = ControlPlaneSettings()
    bus: BusSettings = BusSettings()
    kafka: KafkaSettings = KafkaSettings()
    store: StoreSettings = StoreSettings()
    collector: CollectorSettings = Field(default_factory=CollectorSettings)
    kubernetes: KubernetesSettings = KubernetesSettings()
    pipeline: PipelineSettings = PipelineSettings()
    notifiers: NotifierSettings = NotifierSettings()
    alerts: AlertSettings = AlertSettings()
    enforcement: EnforcementSettings = EnforcementSettings()
    rules: RulesSettings = RulesSettings()
    retry: RetrySettings = RetrySettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # text: one line per record for people; json: one JSON object per line (stderr) for log shippers.
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides the YAML file, which arrives as init kwargs.
        return (env_settings, init_settings)


def _known_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    node: Any = model
    for part in path:
        fields = getattr(node, "model_fields", None)
        if not fields or part not in fields:
            return []
        node = fields[part].annotation
    fields = getattr(node, "model_fields", None)
    return list(fields) if fields else []


# Keys that moved to another section: rejected, naming where they live now.
MOVED_KEYS = {
    "pipeline.inventory_path": "kubernetes.inventory_path",
    "pipeline.inventory_source": "kubernetes.inventory_source",
    "pipeline.kubernetes_in_cluster": "kubernetes.in_cluster",
    "notifiers.backoff_s": "retry.initial_s",
    "kubernetes.backoff_initial_s": "retry.initial_s",
    "kubernetes.backoff_max_s": "retry.max_s",
}


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace(".", "__")


def _moved(key: str) -> str:
    """The error for a moved key, naming the environment variable too when that set it."""
    new = MOVED_KEYS[key]
    line = f"{key} moved to {new}"
    if any(name.upper() == _env_name(key) for name in os.environ):
        line += f" (environment: set {_env_name(new)} instead of {_env_name(key)})"
    return line


def _explain(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        if err["type"] == "extra_forbidden" and key in MOVED_KEYS:
            lines.append(_moved(key))
        elif err["type"] == "extra_forbidden":
            candidates = _known_keys(Settings, loc[:-1])
            close = difflib.get_close_matches(loc[-1], candidates, n=1)
            hint = f"; did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else ""
            lines.append(f"unknown key '{key}'{hint} (valid here: {', '.join(candidates)})")
        else:
            lines.append(f"'{key}': {err['msg']} (got {err.get('input')!r})")
    return ConfigError(f"{source}: " + "; ".join(lines))


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (if any), apply environment overrides, validate.

    ``overrides`` are top-level sections as dicts, merged over the file (for CLI flags).
    Raises :class:`ConfigError` naming the key and the fix.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"{p}: no such configuration file") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        data = loaded
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise _explain(exc, source) from exc


def dump_settings(settings: Settings) -> str:
    """The effective settings as YAML (secrets masked)."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
