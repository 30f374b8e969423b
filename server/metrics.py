"""Prometheus metrics, one registry per app (several apps in one process, as in tests, never collide).

Task labels only ever carry names of tasks that exist in the store: requests for unknown names are
counted under `_unknown`, so a client cannot grow the label set without bound.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UNKNOWN_TASK = "_unknown"
# latency buckets in seconds: sub-millisecond CPU forwards up to multi-second overloads
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("promptserve_classify_requests", "Classify requests by task and HTTP status",
                                ["task", "status"], registry=r)
        self.images = Counter("promptserve_classify_images", "Images classified, by task", ["task"], registry=r)
        self.queue_seconds = Histogram("promptserve_queue_seconds", "Time an image waited for its batch",
                                       ["task"], buckets=LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("promptserve_compute_seconds", "Forward time of the batch an image rode in",
                                         ["task"], buckets=LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("promptserve_request_seconds", "Whole classify request, decoding included",
                                         ["task"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("promptserve_batch_size", "Images per forward", buckets=SIZE_BUCKETS, registry=r)
        self.batch_tasks = Histogram("promptserve_batch_tasks", "Distinct tasks per forward", buckets=SIZE_BUCKETS,
                                     registry=r)
        self.queue_depth = Gauge("promptserve_queue_depth", "Images waiting for the engine", registry=r)
        self.queue_full = Counter("promptserve_queue_full", "Requests refused with 503 because the queue was full",
                                  registry=r)
        self.resident_tasks = Gauge("promptserve_resident_tasks", "Tasks held in the prompt bank", registry=r)
        self.resident_bytes = Gauge("promptserve_resident_bytes", "Bytes of the resident tasks' prompt sets",
                                    registry=r)
        self.bank_bytes = Gauge("promptserve_bank_bytes", "Bytes the padded prompt bank holds", registry=r)
        self.evictions = Counter("promptserve_evictions", "Tasks dropped from the bank to stay within budget",
                                 registry=r)
        self.cold_loads = Counter("promptserve_cold_loads", "Tasks loaded from the store on first use", ["task"],
                                  registry=r)
        self.cold_load_seconds = Histogram("promptserve_cold_load_seconds", "Store read + validation + bank insert",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.swaps = Counter("promptserve_swaps", "Bank rows replaced by a new version (upload, rollback, store event)",
                             ["task"], registry=r)
        self.uploads = Counter("promptserve_uploads", "Prompt-set uploads accepted", ["task"], registry=r)
        self.refusals = Counter("promptserve_upload_refusals", "Uploads (and rollbacks) refused, by reason",
                                ["reason"], registry=r)

    def watch(self, queue_depth: Callable[[], float], resident_tasks: Callable[[], float],
              resident_bytes: Callable[[], float], bank_bytes: Callable[[], float]) -> None:
        """Gauges read live at scrape time, so they can never drift from the state they describe."""
        self.queue_depth.set_function(queue_depth)
        self.resident_tasks.set_function(resident_tasks)
        self.resident_bytes.set_function(resident_bytes)
        self.bank_bytes.set_function(bank_bytes)
