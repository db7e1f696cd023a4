"""Jobs: the durable queue, crash recovery, progress, cancellation and the LoRA store.

    store       JobStore       -- SQLite records of shots and jobs (WAL, crash-safe)
    queue       JobQueue       -- fair per-client scheduling, one worker per GPU; JobContext
    lora_store  LoraStore      -- atomic, verified safetensors adapters and training checkpoints
                AdapterCache   -- LRU bookkeeping of adapters loaded on the resident model
    metrics     LorafxMetrics  -- Prometheus series in a private registry
"""

from importlib import import_module

from .metrics import LorafxMetrics, get_metrics, render_metrics, start_metrics_http
from .queue import JobContext, JobQueue
from .store import (JOB_KINDS, JOB_STATES, TERMINAL_STATES, Checkpoint, Job, JobStore,
                    RecoveryReport, Shot)

__all__ = [
    "AdapterCache", "Checkpoint", "CorruptFile", "JOB_KINDS", "JOB_STATES", "Job", "JobContext",
    "JobQueue", "JobStore", "LoraInfo", "LoraStore", "LorafxMetrics", "RecoveryReport", "Shot",
    "StoredLora", "TERMINAL_STATES", "TrainCheckpoint", "adapter_name", "capture_rng_state",
    "get_metrics", "render_metrics", "restore_rng_state", "settings_hash", "start_metrics_http",
    "tensors_sha256",
]

# lora_store imports torch (~2 s); load it on first use so the queue, the store and a metrics
# scrape start without it.
_LORA_STORE_NAMES = {"AdapterCache", "CorruptFile", "LoraInfo", "LoraStore", "StoredLora",
                     "TrainCheckpoint", "adapter_name", "capture_rng_state", "restore_rng_state",
                     "settings_hash", "tensors_sha256"}


def __getattr__(name: str):
    if name in _LORA_STORE_NAMES:
        return getattr(import_module(".lora_store", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
