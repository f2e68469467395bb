"""Prometheus metrics of the controller (its own registry, served on /metrics)."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from reconciler import __version__


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # the hosts that have series, kept here: reading them back from prometheus_client means
        # collecting every sample (thousands at thousands of hosts), each pass
        self.host_states_shown: dict[str, str] = {}  # host -> the state its _host_state series show
        self.drift_shown: set[str] = set()  # hosts with a _drift series
        self.passes = Counter(
            "consul_reconciler_passes", "Reconcile passes by outcome", ["outcome"], registry=r
        )
        self.pass_duration = Histogram(
            "consul_reconciler_pass_duration_seconds",
            "Duration of a reconcile pass",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.actions = Counter(
            "consul_reconciler_actions", "Actions by kind and final status", ["kind", "status"], registry=r
        )
        self.drift = Gauge(
            "consul_reconciler_drift", "Planned changes per host at the last pass", ["host"], registry=r
        )
        self.hosts_unreachable = Gauge(
            "consul_reconciler_hosts_unreachable",
            "Hosts whose engine could not be reached at their last try (backing off or not)",
            registry=r,
        )
        self.host_state = Gauge(
            "consul_reconciler_host_state",
            "Each host's state after the last pass: 1 on its state (ok, unreachable, backoff, degraded), "
            "0 on the others",
            ["host", "state"],
            registry=r,
        )
        self.build_info = Gauge(
            "consul_reconciler_build_info",
            "The running controller's version (always 1)",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.hosts_degraded = Gauge(
            "consul_reconciler_hosts_degraded", "Hosts marked degraded (crash loop)", registry=r
        )
        self.hosts_backoff = Gauge(
            "consul_reconciler_hosts_backoff", "Hosts waiting out a backoff", registry=r
        )
        self.last_success = Gauge(
            "consul_reconciler_last_success_timestamp_seconds",
            "Unix time the last successful pass ended",
            registry=r,
        )
        self.triggers = Counter(
            "consul_reconciler_triggers", "Requests for a pass, by source", ["source"], registry=r
        )
        self.desired_state_source_up = Gauge(
            "consul_reconciler_desired_state_source_up",
            "1 if the desired state source could be read",
            registry=r,
        )
        self.rollout_paused = Gauge(
            "consul_reconciler_rollout_paused",
            "1 while a server rollout is paused after a failed gate",
            registry=r,
        )
        self.leader = Gauge(
            "consul_reconciler_leader",
            "1 while this controller holds the leader lock (Consul source)",
            registry=r,
        )
        self.leadership_lost = Counter(
            "consul_reconciler_leadership_lost",
            "Times this controller held the leader lock and lost it (Consul source)",
            registry=r,
        )
        self.resync_interval = Gauge(
            "consul_reconciler_resync_interval_seconds",
            "The full resync interval (--interval): alert rules count missed passes in it",
            registry=r,
        )
        self.resync_slices = Gauge(
            "consul_reconciler_resync_slices",
            "The slices of the hosts the resync is spread over: one looked at every interval / slices",
            registry=r,
        )
        self.pass_hosts = Gauge(
            "consul_reconciler_last_pass_hosts",
            "Hosts the last pass looked at: all, a Docker event's host and the servers' hosts, or a slice",
            registry=r,
        )
        self.desired_state_valid = Gauge(
            "consul_reconciler_desired_state_valid",
            "1 if the last read of the desired state was valid",
            registry=r,
        )
