"""Per-shot LoRA adapters and training checkpoints on disk, plus the in-memory adapter cache.

On-disk layout (``<root>`` is the store root; ``<shot>`` a shot name; ``<key>`` normally
``settings_hash(training settings)``, so retraining with other settings never overwrites)::

    <root>/<shot>/<key>/adapter.safetensors           the trained adapter
    <root>/<shot>/<key>/checkpoints/step-00000120/    one training checkpoint (a directory):
        lora.safetensors   LoRA tensors at that step (same format and metadata as an adapter)
        train_state.pt     torch.save({"format": 1, "step": int,
                                       "optimizer": optimizer.state_dict(),
                                       "rng": rng_state})   -- loaded with weights_only=True,
                           so rng_state must hold only tensors / Python primitives
                           (capture_rng_state() produces exactly that)
        manifest.json      {"format": 1, "shot", "key", "step", "created", "lorafx_version",
                            "files": {"lora.safetensors": sha256, "train_state.pt": sha256}}

Adapter safetensors metadata (all strings): ``lorafx.format`` ("1"), ``lorafx.kind``
("adapter" | "checkpoint"), ``lorafx.shot``, ``lorafx.settings_hash`` (the key),
``lorafx.step``, ``lorafx.version``, ``lorafx.created`` (Unix seconds) and
``lorafx.tensors_sha256`` (sha256 over name, dtype, shape and bytes of every tensor in name
order), then the caller's own keys (non-string values JSON-encoded).

Crash safety: every file is written to a ``.tmp-*`` sibling, fsynced, then renamed over the final
name (checkpoints: the whole directory is renamed), and the directory is fsynced. A crash at any
point leaves either the old file or the new one, never a torn one; leftover ``.tmp-*`` entries
are invisible to list()/load() and swept on startup. Loads recompute the tensor hash, so
truncation or bit rot is an error (CorruptFile), never a silently wrong adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import lorafx
from lorafx import errors
from lorafx.errors import InvalidInput, LorafxError, NotFound

from .metrics import LorafxMetrics

log = logging.getLogger("lorafx.jobs.lora_store")

FORMAT_VERSION = 1
ADAPTER_FILE = "adapter.safetensors"
CHECKPOINT_DIR = "checkpoints"
CKPT_LORA, CKPT_STATE, CKPT_MANIFEST = "lora.safetensors", "train_state.pt", "manifest.json"
_RESERVED_PREFIX = "lorafx."
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STEP_DIR_RE = re.compile(r"^step-(\d{8,})$")
_TEMP_PREFIXES = (".tmp-", ".trash-")


CorruptFile = errors.CorruptFile  # one class, so the wire code maps back to it (errors.ERRORS_BY_CODE)


# ---------------------------------------------------------------------- settings hash
def _canonical(value: Any, where: str = "settings") -> Any:
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                # json would turn 1 into "1" and let {1: a, "1": b} collide
                raise InvalidInput(f"{where}: keys must be strings, got {k!r}")
            out[k] = _canonical(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, os.PathLike):
        return Path(value).as_posix()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        if f != f or f in (float("inf"), float("-inf")):
            raise InvalidInput(f"{where}: {f} is not a usable setting")
        # 100 and 100.0 are the same setting; hashing them apart would retrain for nothing.
        return int(f) if f.is_integer() else f
    raise InvalidInput(f"{where}: {type(value).__name__} cannot be part of a settings hash")


def settings_hash(settings: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``settings``: key order, tuple-vs-list and 1-vs-1.0
    do not change it. Pass only the training-relevant settings (rank, alpha, lr, steps, config,
    mask mode, frame range, seed, base model id...), not render-only ones."""
    canon = json.dumps(_canonical(settings), sort_keys=True, separators=(",", ":"),
                       ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Content hash of a state dict: name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode("utf-8") + b"\0" + str(t.dtype).encode() + b"\0"
                 + ",".join(map(str, t.shape)).encode() + b"\0")
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def adapter_name(shot: str, key: str) -> str:
    """A peft-safe adapter name (no dots: peft uses it as a module-dict key)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", shot) + "__" + key[:16]


# ---------------------------------------------------------------------- rng state
def capture_rng_state() -> dict:
    """torch (CPU + every CUDA device), Python and NumPy global RNG states, in a form that
    torch.load(weights_only=True) accepts."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss),
                          float(cached))
    except ImportError:
        pass
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of capture_rng_state(); parts missing from ``state`` are left alone."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d; "
                        "CUDA RNG not restored", len(state["cuda"]), torch.cuda.device_count())
    if "numpy" in state:
        import numpy as np
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))


# ---------------------------------------------------------------------- file helpers
def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | Path) -> None:
    # Makes the rename itself durable: without it a power cut can undo the os.replace.
    with suppress(OSError):
        _fsync_file(path)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(final: Path, write: Callable[[str], None]) -> None:
    """write(tmp_path) into a same-directory temp file, fsync, rename over ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + final.name, dir=final.parent)
    os.close(fd)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(final.parent)


def _remove_tree(path: Path) -> None:
    """Rename aside, then delete: a crash mid-delete leaves a hidden .trash-* (swept later),
    not a half-deleted directory that still looks valid."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    _fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------------- records
@dataclass(frozen=True)
class StoredLora:
    """A verified adapter (or checkpoint LoRA) read back from disk."""

    shot: str
    key: str
    step: int | None
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str]  # the caller's own metadata (lorafx.* keys stripped)
    tensors_sha256: str
    version: str
    path: Path


@dataclass(frozen=True)
class LoraInfo:
    """What list() reports per adapter (header only; the tensors are not read or verified)."""

    shot: str
    key: str
    path: Path
    size_bytes: int
    step: int | None
    created: float | None
    metadata: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the header could not be read: the file is damaged


@dataclass(frozen=True)
class TrainCheckpoint:
    shot: str
    key: str
    step: int
    lora_state: dict[str, torch.Tensor]
    optimizer_state: Any
    rng_state: Any
    metadata: dict[str, str]
    path: Path


# ---------------------------------------------------------------------- the store
class LoraStore:
    """Adapters and training checkpoints under ``root``. Thread-safe.

    ``keep_checkpoints`` (>= 2 recommended, the default) keeps the previous checkpoint while a
    new one is written and recorded, so the one a job last recorded in the job database always
    still exists when a crash hits in between.
    """

    def __init__(self, root: str | os.PathLike, *, keep_checkpoints: int = 2,
                 sweep_temp_older_than_s: float = 600.0):
        if keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be >= 1")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_checkpoints = keep_checkpoints
        self._lock = threading.RLock()
        self.sweep_temp(sweep_temp_older_than_s)

    # ------------------------------------------------------------------ paths
    @staticmethod
    def _check_name(value: str, what: str) -> str:
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise InvalidInput(f"{what} {value!r} is not usable as a file name: use letters, "
                               f"digits, '.', '_', '-' (max 128, not starting with '.')")
        return value

    def key_dir(self, shot: str, key: str) -> Path:
        return self.root / self._check_name(shot, "shot") / self._check_name(key, "LoRA key")

    def path_for(self, shot: str, key: str) -> Path:
        """Where the adapter for (shot, key) lives (whether or not it exists yet)."""
        return self.key_dir(shot, key) / ADAPTER_FILE

    def checkpoint_path(self, shot: str, key: str, step: int) -> Path:
        return self.key_dir(shot, key) / CHECKPOINT_DIR / f"step-{int(step):08d}"

    def exists(self, shot: str, key: str) -> bool:
        return self.path_for(shot, key).is_file()

    # ------------------------------------------------------------------ adapters
    def save(self, shot: str, key: str, state_dict: Mapping[str, torch.Tensor],
             metadata: Mapping[str, Any] | None = None, *, step: int | None = None) -> Path:
        """Write the adapter atomically (replacing any previous one for this key)."""
        path = self.path_for(shot, key)
        with self._lock:
            self._write_lora(path, shot, key, state_dict, metadata, step, kind="adapter")
        log.info("saved LoRA %s/%s (step %s) -> %s", shot, key[:12], step, path)
        return path

    def load(self, shot: str, key: str, *, device: str | torch.device = "cpu") -> StoredLora:
        """Read and verify the adapter. NotFound if absent, CorruptFile if damaged."""
        path = self.path_for(shot, key)
        if not path.is_file():
            raise NotFound(f"no LoRA for shot {shot!r} with settings {key[:12]}… ({path})",
                           shot=shot, key=key)
        return self._read_lora(path, shot, key, device)

    def list(self, shot: str | None = None) -> list[LoraInfo]:
        """Every stored adapter (optionally of one shot), sorted by shot then key."""
        infos = []
        shots = [self.root / self._check_name(shot, "shot")] if shot else sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for shot_dir in shots:
            if not shot_dir.is_dir():
                continue
            for key_dir in sorted(p for p in shot_dir.iterdir()
                                  if p.is_dir() and not p.name.startswith(".")):
                path = key_dir / ADAPTER_FILE
                if path.is_file():
                    infos.append(self._info(shot_dir.name, key_dir.name, path))
        return infos

    def delete(self, shot: str, key: str | None = None) -> bool:
        """Delete one adapter with its checkpoints, or (key=None) everything of a shot. Unload
        it from any AdapterCache first (AdapterCache.invalidate)."""
        target = self.key_dir(shot, key) if key is not None else (
            self.root / self._check_name(shot, "shot"))
        with self._lock:
            if not target.exists():
                return False
            _remove_tree(target)
        log.info("deleted LoRA store entry %s", target)
        return True

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, shot: str, key: str, step: int,
                        lora_state: Mapping[str, torch.Tensor], optimizer_state: Any,
                        rng_state: Any = None, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write a training checkpoint atomically (a directory renamed into place) and prune
        older ones beyond ``keep_checkpoints``. Returns its directory, which is what
        JobContext.checkpoint(path, step) should record."""
        step = int(step)
        final = self.checkpoint_path(shot, key, step)
        with self._lock:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", suffix=f"-{final.name}", dir=final.parent))
            try:
                self._write_lora_file(tmp / CKPT_LORA, shot, key, lora_state, metadata, step,
                                      kind="checkpoint")
                torch.save({"format": FORMAT_VERSION, "step": step, "optimizer": optimizer_state,
                            "rng": rng_state}, tmp / CKPT_STATE)
                manifest = {"format": FORMAT_VERSION, "shot": shot, "key": key, "step": step,
                            "created": time.time(), "lorafx_version": lorafx.__version__,
                            "files": {n: _file_sha256(tmp / n) for n in (CKPT_LORA, CKPT_STATE)}}
                (tmp / CKPT_MANIFEST).write_text(json.dumps(manifest, indent=1))
                for name in (CKPT_LORA, CKPT_STATE, CKPT_MANIFEST):
                    _fsync_file(tmp / name)
                _fsync_dir(tmp)
                if final.exists():  # re-saving a step (after a resume): swap the old one out
                    _remove_tree(final)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _fsync_dir(final.parent)
            self._prune_checkpoints(shot, key, keep_step=step)
        return final

    def list_checkpoints(self, shot: str, key: str) -> list[int]:
        """Steps of the checkpoints present (complete directories only), ascending."""
        d = self.key_dir(shot, key) / CHECKPOINT_DIR
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir()
                      if p.is_dir() and (m := _STEP_DIR_RE.match(p.name)))

    def load_checkpoint(self, shot: str, key: str, step: int | None = None, *,
                        device: str | torch.device = "cpu") -> TrainCheckpoint:
        """Load checkpoint ``step``, or (step=None) the newest one that verifies; a damaged
        newer one is skipped with a warning. NotFound if none exist; CorruptFile if none is
        intact."""
        steps = self.list_checkpoints(shot, key)
        if step is not None:
            if int(step) not in steps:
                raise NotFound(f"no checkpoint at step {step} for {shot}/{key[:12]}…",
                               shot=shot, key=key, step=int(step))
            return self.load_checkpoint_dir(self.checkpoint_path(shot, key, step), device=device)
        if not steps:
            raise NotFound(f"no training checkpoint for {shot}/{key[:12]}…", shot=shot, key=key)
        errors = []
        for s in reversed(steps):
            try:
                return self.load_checkpoint_dir(self.checkpoint_path(shot, key, s), device=device)
            except CorruptFile as e:
                log.warning("skipping damaged checkpoint: %s", e.message)
                errors.append(e.message)
        raise CorruptFile(f"every checkpoint of {shot}/{key[:12]}… is damaged: "
                          + "; ".join(errors), shot=shot, key=key)

    def load_checkpoint_dir(self, path: str | os.PathLike, *,
                            device: str | torch.device = "cpu") -> TrainCheckpoint:
        """Load and verify the checkpoint directory ``path`` (as recorded by a job)."""
        path = Path(path)
        if not path.is_dir():
            raise NotFound(f"checkpoint {path} does not exist", path=str(path))
        try:
            manifest = json.loads((path / CKPT_MANIFEST).read_text())
            expected = manifest["files"]
            shot, key, step = manifest["shot"], manifest["key"], int(manifest["step"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptFile(f"checkpoint {path}: manifest unreadable ({e})",
                              path=str(path)) from e
        for name in (CKPT_LORA, CKPT_STATE):
            f = path / name
            if not f.is_file() or _file_sha256(f) != expected.get(name):
                raise CorruptFile(f"checkpoint {path}: {name} is missing or does not match its "
                                  f"recorded checksum", path=str(path))
        lora = self._read_lora(path / CKPT_LORA, shot, key, device)
        try:
            state = torch.load(path / CKPT_STATE, map_location=device, weights_only=True)
        except Exception as e:  # checksum matched, so this is a format problem, not rot
            raise CorruptFile(f"checkpoint {path}: {CKPT_STATE} does not load ({e})",
                              path=str(path)) from e
        if state.get("step") != step:
            raise CorruptFile(f"checkpoint {path}: step mismatch ({state.get('step')} vs {step})",
                              path=str(path))
        return TrainCheckpoint(shot=shot, key=key, step=step, lora_state=lora.state_dict,
                               optimizer_state=state["optimizer"], rng_state=state.get("rng"),
                               metadata=lora.metadata, path=path)

    def delete_checkpoints(self, shot: str, key: str) -> int:
        """Remove every checkpoint of (shot, key), e.g. once the final adapter is saved."""
        with self._lock:
            steps = self.list_checkpoints(shot, key)
            for s in steps:
                _remove_tree(self.checkpoint_path(shot, key, s))
        return len(steps)

    # ------------------------------------------------------------------ housekeeping
    def sweep_temp(self, older_than_s: float = 600.0) -> int:
        """Remove ``.tmp-*`` / ``.trash-*`` leftovers of crashed writes older than the given
        age (the age guard spares a write in progress in another thread)."""
        now, removed = time.time(), 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in list(dirnames) + filenames:
                if not name.startswith(_TEMP_PREFIXES):
                    continue
                p = Path(dirpath) / name
                try:
                    if now - p.lstat().st_mtime < older_than_s:
                        continue
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                        dirnames.remove(name)
                    else:
                        p.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
        if removed:
            log.info("removed %d leftover temporary file(s) under %s", removed, self.root)
        return removed

    def _prune_checkpoints(self, shot: str, key: str, keep_step: int) -> None:
        steps = [s for s in self.list_checkpoints(shot, key) if s != keep_step]
        # keep the newest (keep_checkpoints - 1) others besides the one just written
        for s in steps[:max(0, len(steps) - (self.keep_checkpoints - 1))]:
            _remove_tree(self.checkpoint_path(shot, key, s))

    # ------------------------------------------------------------------ lora files
    def _write_lora(self, path: Path, shot: str, key: str, state_dict, metadata, step, kind):
        tensors, meta = self._prepare(shot, key, state_dict, metadata, step, kind)
        _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    def _write_lora_file(self, path: Path, shot, key, state_dict, metadata, step, kind):
        # Inside a checkpoint's temp directory: the directory rename provides atomicity.
        tensors, meta = self._prepare(shot, key, state_dict, metadata, step, kind)
        save_file(tensors, path, metadata=meta)

    def _prepare(self, shot, key, state_dict, metadata, step, kind):
        self._check_name(shot, "shot")
        self._check_name(key, "LoRA key")
        if not state_dict:
            raise InvalidInput(f"refusing to save an empty LoRA state dict for {shot}")
        tensors = {}
        for name, t in state_dict.items():
            if not isinstance(t, torch.Tensor):
                raise InvalidInput(f"LoRA state dict entry {name!r} is not a tensor")
            tensors[name] = t.detach().to("cpu").contiguous()
        meta: dict[str, str] = {}
        for k, v in (metadata or {}).items():
            if k.startswith(_RESERVED_PREFIX):
                raise InvalidInput(f"metadata key {k!r}: the 'lorafx.' prefix is reserved")
            meta[str(k)] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        meta.update({
            "lorafx.format": str(FORMAT_VERSION), "lorafx.kind": kind, "lorafx.shot": shot,
            "lorafx.settings_hash": key, "lorafx.step": "" if step is None else str(int(step)),
            "lorafx.version": lorafx.__version__, "lorafx.created": f"{time.time():.3f}",
            "lorafx.tensors_sha256": tensors_sha256(tensors)})
        return tensors, meta

    def _read_lora(self, path: Path, shot: str, key: str, device) -> StoredLora:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as e:  # any failure to parse is damage, whatever the library calls it
            raise CorruptFile(f"LoRA file {path} is unreadable (truncated or corrupted): {e}",
                              path=str(path)) from e
        expected = meta.get("lorafx.tensors_sha256")
        if expected is None:
            raise CorruptFile(f"{path} is not a lorafx LoRA (no lorafx metadata)", path=str(path))
        if tensors_sha256(tensors) != expected:
            raise CorruptFile(f"LoRA file {path} failed its integrity check (tensor checksum "
                              f"mismatch); it will not be used", path=str(path))
        if meta.get("lorafx.shot") != shot or meta.get("lorafx.settings_hash") != key:
            raise CorruptFile(f"{path} belongs to {meta.get('lorafx.shot')}/"
                              f"{str(meta.get('lorafx.settings_hash'))[:12]}…, not "
                              f"{shot}/{key[:12]}… (moved or copied by hand?)", path=str(path))
        if torch.device(device).type != "cpu":
            tensors = {k: v.to(device) for k, v in tensors.items()}
        step = meta.get("lorafx.step")
        return StoredLora(
            shot=shot, key=key, step=int(step) if step else None, state_dict=tensors,
            metadata={k: v for k, v in meta.items() if not k.startswith(_RESERVED_PREFIX)},
            tensors_sha256=expected, version=meta.get("lorafx.version", "?"), path=path)

    def _info(self, shot: str, key: str, path: Path) -> LoraInfo:
        size = path.stat().st_size
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
        except Exception as e:
            return LoraInfo(shot, key, path, size, None, None, error=f"unreadable header: {e}")
        step, created = meta.get("lorafx.step"), meta.get("lorafx.created")
        return LoraInfo(shot, key, path, size, int(step) if step else None,
                        float(created) if created else None,
                        {k: v for k, v in meta.items() if not k.startswith(_RESERVED_PREFIX)})


# ---------------------------------------------------------------------- adapter cache
class AdapterCache:
    """Which adapters are loaded on one resident model, bounded, least-recently-used evicted.

    The method layer supplies the model operations (each gets the cache key):
      load_fn(key)      load the adapter's weights onto the model (e.g. peft load_adapter)
      activate_fn(key)  make it the active adapter (e.g. set_adapter); called on every use
      evict_fn(key)     remove it from the model (e.g. delete_adapter)
    Keys are any hashable, typically ``(shot, settings_hash)``.

    One cache per resident model. ``use(key)`` holds the model for the whole block, so another
    thread cannot switch or evict the adapter mid-render; bookkeeping reads (``loaded``,
    ``stats()``) never wait for it.
    """

    def __init__(self, capacity: int, load_fn: Callable[[Hashable], Any],
                 activate_fn: Callable[[Hashable], Any], evict_fn: Callable[[Hashable], Any], *,
                 metrics: LorafxMetrics | None = None):
        if capacity < 1:
            raise ValueError("AdapterCache capacity must be >= 1")
        self.capacity = capacity
        self._load_fn, self._activate_fn, self._evict_fn = load_fn, activate_fn, evict_fn
        self._metrics = metrics
        self._model_lock = threading.RLock()  # serialises every operation on the model
        self._state_lock = threading.Lock()   # guards the bookkeeping below
        self._entries: OrderedDict[Hashable, None] = OrderedDict()  # LRU first
        self._active: Hashable | None = None
        self.hits = self.misses = self.evictions = 0

    @contextmanager
    def use(self, key: Hashable) -> Iterator[Hashable]:
        """Load if needed, activate, and keep the model to this adapter until the block ends."""
        with self._model_lock:
            self._ensure_loaded(key)
            self._activate_fn(key)
            with self._state_lock:
                self._active = key
            yield key

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model for work that manages adapters itself (training a new adapter, a
        baseline render with no LoRA). Afterwards the cache no longer assumes which adapter is
        active; the next ``use()`` re-activates its own."""
        with self._model_lock:
            try:
                yield
            finally:
                with self._state_lock:
                    self._active = None

    def activate(self, key: Hashable) -> None:
        """Load if needed and activate, without holding the model afterwards."""
        with self.use(key):
            pass

    def invalidate(self, key: Hashable) -> bool:
        """Unload ``key`` from the model (e.g. the adapter file was retrained or deleted).
        Waits for a running ``use()`` of the model to finish. Returns whether it was loaded."""
        with self._model_lock:
            with self._state_lock:
                if key not in self._entries:
                    return False
            self._evict(key, to_make_room=False)
            return True

    def clear(self) -> None:
        with self._model_lock:
            for key in self.loaded:
                self._evict(key, to_make_room=False)

    @property
    def loaded(self) -> list:
        """Loaded keys, least recently used first."""
        with self._state_lock:
            return list(self._entries)

    @property
    def active(self) -> Hashable | None:
        return self._active

    def __contains__(self, key: Hashable) -> bool:
        with self._state_lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._state_lock:
            return len(self._entries)

    def stats(self) -> dict:
        with self._state_lock:
            return {"capacity": self.capacity, "loaded": len(self._entries), "hits": self.hits,
                    "misses": self.misses, "evictions": self.evictions}

    # ------------------------------------------------------------------ internals
    def _ensure_loaded(self, key: Hashable) -> None:
        with self._state_lock:
            hit = key in self._entries
            if hit:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        if self._metrics is not None:
            (self._metrics.lora_cache_hits if hit else self._metrics.lora_cache_misses).inc()
        if hit:
            return
        while len(self) >= self.capacity:
            with self._state_lock:
                victim = next(iter(self._entries))
            self._evict(victim, to_make_room=True)
        # If load_fn raises, nothing is recorded: the cache never claims an adapter the model
        # does not have.
        self._load_fn(key)
        with self._state_lock:
            self._entries[key] = None
        if self._metrics is not None:
            self._metrics.lora_cache_loaded.set(len(self))

    def _evict(self, key: Hashable, *, to_make_room: bool) -> None:
        # If evict_fn raises, the entry stays: the adapter is presumably still on the model.
        self._evict_fn(key)
        with self._state_lock:
            self._entries.pop(key, None)
            self.evictions += int(to_make_room)
            if self._active == key:
                self._active = None
        if self._metrics is not None:
            if to_make_room:
                self._metrics.lora_cache_evictions.inc()
            self._metrics.lora_cache_loaded.set(len(self))
