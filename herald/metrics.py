"""Prometheus metrics shared by the API and the workers."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACCEPTED = Counter(
    "herald_accepted_total", "Notifications accepted by the send API", ["channel", "category"]
)
SENT = Counter(
    "herald_sent_total", "Notifications a provider accepted", ["channel", "category", "provider"]
)
FAILED = Counter("herald_failed_total", "Permanent failures", ["channel", "category", "provider"])
RETRIED = Counter(
    "herald_retried_total", "Sends scheduled for a retry", ["channel", "category", "provider"]
)
DEAD_LETTERED = Counter(
    "herald_dead_lettered_total",
    "Notifications that ended undelivered, by reason",
    ["channel", "category", "reason"],
)
DUPLICATES_SKIPPED = Counter(
    "herald_duplicates_skipped_total", "Redeliveries recognised as already handled", ["reason"]
)
DEFERRED = Counter(
    "herald_deferred_total",
    "Deliveries put back to wait without being charged an attempt",
    ["reason"],
)
PROVIDER_LATENCY = Histogram(
    "herald_provider_call_seconds",
    "Time spent in one provider call",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ACCEPT_LATENCY = Histogram(
    "herald_accept_seconds",
    "Send API: request received to 202",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
QUEUE_DEPTH = Gauge("herald_queue_depth", "Messages ready in a RabbitMQ queue", ["queue"])
OUTBOX_BACKLOG = Gauge("herald_outbox_backlog", "Accepted notifications not yet confirmed")
CRASHES = Counter(
    "herald_delivery_crashes_total",
    "Deliveries our code raised on (poison messages), by exception type",
    ["error"],
)
DEAD_LETTER_STORE_PAUSES = Counter(
    "herald_dead_letter_store_pauses_total",
    "Dead letters put back on herald.dlq because the database could not store them",
)
BATCH_SIZE = Histogram(
    "herald_delivery_batch_size",
    "Messages per delivery batch: started together, or settled together",
    ["stage"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_WAIT = Histogram(
    "herald_delivery_batch_wait_seconds",
    "Time a received message waited for its delivery batch to start",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
