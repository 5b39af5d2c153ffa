"""Prometheus metrics (``[metrics] listen``), with prometheus_client.

Counters and histograms are module-level, as prometheus_client intends; recording them is a
few nanoseconds, and nothing is exported unless a listen address is configured.
"""

from __future__ import annotations

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

from milter import metrics_dir

TRANSACTIONS = Counter("skot_transactions_total", "Messages decided, by direction and action",
                       ["front", "direction", "action"])
RULE_HITS = Counter("skot_rule_hits_total", "Rules that fired, by rule id and mode",
                    ["rule", "mode"])
NEXT_HOP_ERRORS = Counter("skot_next_hop_errors_total", "Next hop unavailable or failing",
                          ["stage"])
EVALUATION_SECONDS = Histogram("skot_evaluation_seconds",
                               "Parse, inspection and policy time per message")
LATENCY_SECONDS = Histogram("skot_transaction_seconds",
                            "End of DATA to our answer, per message (SMTP front)")
AUDIT_WRITE_SECONDS = Histogram("skot_audit_write_seconds",
                                "Durable audit append (one commit per batch)")
MILTER_PACKETS = Counter("skot_milter_packets", "Packets read from the MTA on milter "
                         "connections (per message: divide by the milter front's messages)")
QUARANTINE_MESSAGES = Gauge("skot_quarantine_messages", "Messages held in quarantine",
                            multiprocess_mode="livesum")
# The directory copy in use (LDAP source): when it was read, and its age at the last refresh
# attempt (alert on time() - skot_directory_fetched_timestamp_seconds for the live age).
DIRECTORY_FETCHED_TIMESTAMP = Gauge("skot_directory_fetched_timestamp_seconds",
                                    "When the directory copy in use was read from its source",
                                    multiprocess_mode="max")
DIRECTORY_AGE_SECONDS = Gauge("skot_directory_age_seconds",
                              "Age of the directory copy in use at the last refresh attempt",
                              multiprocess_mode="max")
DIRECTORY_REFRESH_FAILURES = Counter("skot_directory_refresh_failures_total",
                                     "Directory refreshes that failed (the last good copy "
                                     "stayed in use)")


def record_verdict(front: str, direction: str, action: str,
                   rules: list[tuple[str, str]]) -> None:
    TRANSACTIONS.labels(front, direction or "unknown", action).inc()
    for rule_id, mode in rules:
        RULE_HITS.labels(rule_id, mode).inc()


def serve(listen: str) -> None:
    """Export on ``listen``; with several workers, the sum of all of them."""
    host, _, port = listen.rpartition(":")
    registry: CollectorRegistry = REGISTRY
    if metrics_dir.active():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(int(port), addr=host.strip("[]"), registry=registry)


def worker_gone(pid: int) -> None:
    """A worker exited: its live gauges no longer count (its counters still do)."""
    if metrics_dir.active():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
