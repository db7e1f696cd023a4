"""Prometheus metrics for the server, in a private registry.

A private ``CollectorRegistry`` (not prometheus-client's global one) so two servers or a test
suite in one process never clash over metric names, and the health request shows only lorafx's
own series. Job counts and memory are read at scrape time from their sources of truth (the job
database, torch / the kernel), so they can never drift from reality; timings and cache counters
are pushed by the queue and the adapter cache as they happen.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
from typing import TYPE_CHECKING, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import start_http_server as _prom_start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .store import JobStore

log = logging.getLogger("lorafx.jobs.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A training step on the 14B model is ~1-30 s; on tiny test stacks, milliseconds.
_STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
# A render of one window: tens of seconds to tens of minutes.
_RENDER_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


def process_rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes


def memory_samples() -> list[tuple[str, str, int]]:
    """(source, device, bytes): CUDA peak allocated per device when CUDA is up, else RSS."""
    torch = sys.modules.get("torch")  # never import torch just to scrape metrics
    if torch is not None and torch.cuda.is_available():
        return [("cuda_max_allocated", f"cuda:{i}", int(torch.cuda.max_memory_allocated(i)))
                for i in range(torch.cuda.device_count())]
    return [("process_rss", "cpu", process_rss_bytes())]


class _ScrapeTimeCollector(Collector):
    """Queue length, jobs by kind/state and memory, computed when scraped."""

    def __init__(self, metrics: "LorafxMetrics"):
        self._metrics = metrics

    def collect(self) -> Iterable[GaugeMetricFamily]:
        store = self._metrics.store
        counts = None
        if store is not None:
            try:
                counts = store.count_by_state()
            except Exception:  # a scrape must still answer (memory) if the database does not
                log.exception("metrics: could not read job counts")
        if counts is not None:
            queued = sum(n for (_, state), n in counts.items() if state == "queued")
            yield GaugeMetricFamily("lorafx_queue_length", "Jobs waiting to run.", value=queued)
            by_state = GaugeMetricFamily("lorafx_jobs", "Jobs in the database by kind and state.",
                                         labels=["kind", "state"])
            for (kind, state), n in sorted(counts.items()):
                by_state.add_metric([kind, state], n)
            yield by_state
        mem = GaugeMetricFamily(
            "lorafx_memory_bytes",
            "torch.cuda.max_memory_allocated per device when CUDA is available, else process RSS.",
            labels=["source", "device"])
        for source, device, value in memory_samples():
            mem.add_metric([source, device], value)
        yield mem


class LorafxMetrics:
    """All lorafx series. Hand one instance to JobQueue and AdapterCache."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.store: JobStore | None = None
        r = self.registry
        self.train_step_seconds = Histogram(
            "lorafx_train_step_seconds", "Wall time of one training step.", registry=r,
            buckets=_STEP_BUCKETS)
        self.render_seconds = Histogram(
            "lorafx_render_seconds", "Wall time of a successful render job.", registry=r,
            buckets=_RENDER_BUCKETS)
        self.jobs_finished = Counter(
            "lorafx_jobs_finished", "Jobs that reached a final state in this process.",
            ["kind", "state"], registry=r)
        self.lora_cache_hits = Counter(
            "lorafx_lora_cache_hits", "Adapter activations served by an adapter already loaded.",
            registry=r)
        self.lora_cache_misses = Counter(
            "lorafx_lora_cache_misses", "Adapter activations that had to load from disk.",
            registry=r)
        self.lora_cache_evictions = Counter(
            "lorafx_lora_cache_evictions", "Adapters removed from the model to make room.",
            registry=r)
        self.lora_cache_loaded = Gauge(
            "lorafx_lora_cache_loaded", "Adapters currently loaded on the resident model.",
            registry=r)
        r.register(_ScrapeTimeCollector(self))

    def bind_store(self, store: "JobStore") -> None:
        """Read queue length and job counts from this store at scrape time."""
        self.store = store

    def render(self) -> bytes:
        """The Prometheus text exposition (what the health request returns)."""
        return generate_latest(self.registry)

    def start_http(self, port: int, addr: str = "0.0.0.0"):
        """Serve /metrics on a daemon thread. Returns the HTTP server (call .shutdown())."""
        server, _thread = _prom_start_http_server(port, addr=addr, registry=self.registry)
        return server


_default: LorafxMetrics | None = None
_default_lock = threading.Lock()


def get_metrics() -> LorafxMetrics:
    """The process-wide metrics the server wires into its queue and cache."""
    global _default
    with _default_lock:
        if _default is None:
            _default = LorafxMetrics()
        return _default


def render_metrics(metrics: LorafxMetrics | None = None) -> bytes:
    return (metrics or get_metrics()).render()


def start_metrics_http(port: int, addr: str = "0.0.0.0", metrics: LorafxMetrics | None = None):
    return (metrics or get_metrics()).start_http(port, addr)
