"""The service's figures, one set per process (Prometheus's default registry): served on
/metrics where DELIBERATION_METRICS_PORT is set, and the same counts in the fleet API's
GetStatus and the NATS services API's $SRV.STATS (`counts`).

A front counts what it took in, a runner what it ran and the model calls its flow runs
made; Prometheus adds the processes up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

SUBMITTED = Counter(
    "deliberation_submitted", "Deliberations taken in (new ids), by the API they came by.", ["via"]
)
AGENTS = Counter("deliberation_agents_submitted", "Agents of the deliberations taken in, by role.", ["role"])
RUNNING = Gauge("deliberation_running", "Deliberations this process runs now.")
CONCLUDED = Counter("deliberation_concluded", "Deliberations this process concluded, by status.", ["status"])
DURATION = Histogram(
    "deliberation_duration_seconds",
    "How long the deliberations this process concluded took, from their start.",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)
MODEL_CALL = Histogram(
    "deliberation_model_call_seconds",
    "Latency of the model calls that answered, by stage (proposal, critique, revision, ranking, synthesis).",
    ["stage"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
)
IN_FLIGHT = Gauge(
    "deliberation_model_calls_in_flight",
    "Model calls submitted and not finished, by model server URL.",
    ["endpoint"],
)
INTAKE_PENDING = Gauge("deliberation_intake_pending", "Requests in the intake no runner has taken yet.")
INTAKE_UNACKED = Gauge("deliberation_intake_unacked", "Requests runners have taken and not finished.")


def _total(metric: Counter | Gauge | Histogram, suffix: str = "") -> float:
    """A metric's samples of one kind (`_total`, `_sum`, `_count`, or its value), summed over
    its labels."""
    return sum(
        s.value for family in metric.collect() for s in family.samples if s.name == family.name + suffix
    )


def counts() -> dict[str, Any]:
    """This process's counts, as GetStatus and $SRV.STATS report them."""
    concluded = _by_label(CONCLUDED, "status")
    finished = _total(DURATION, "_count")
    return {
        "submitted": int(_total(SUBMITTED, "_total")),
        "running": int(_total(RUNNING)),
        "concluded": concluded,
        "mean_duration_ms": round(1000 * _total(DURATION, "_sum") / finished, 1) if finished else 0.0,
        "model_calls_in_flight": int(_total(IN_FLIGHT)),
        "intake_pending": int(_total(INTAKE_PENDING)),
    }


def roles_submitted() -> dict[str, int]:
    return _by_label(AGENTS, "role")


def _by_label(counter: Counter, label: str) -> dict[str, int]:
    """A counter's totals by one of its labels."""
    return {
        sample.labels[label]: int(sample.value)
        for family in counter.collect()
        for sample in family.samples
        if sample.name == family.name + "_total"
    }


@contextlib.contextmanager
def metrics_server(host: str, port: int) -> Iterator[int]:
    """/metrics on `host:port` (0: a free port) while the block runs; yields the port."""
    server, thread = start_http_server(port, addr=host)
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
