"""The lorafx server: one resident model, a durable job queue, per-shot LoRAs, and the protocol
handlers (PROTOCOL.md §7) that compositors' hosts and render farms talk to.

    ProtocolServer (sockets)  ->  handlers here  ->  JobQueue (jobs)  ->  runners here
                                                                           -> pipeline (media + method)
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

import lorafx
from lorafx.errors import Busy, InvalidInput, NotFound
from lorafx.protocol import messages as M
from lorafx.protocol.server import ProtocolServer, Request
from lorafx.server.jobs import JobQueue, JobStore, get_metrics
from lorafx.server.jobs.queue import AFTER
from lorafx.server.jobs.lora_store import AdapterCache, LoraStore
from lorafx.server.media.colour import ColourSettings, ColourTransform
from lorafx.server.media.io import read_frame, read_windows, sequence_path, write_exr_atomic
from lorafx.server.method import lora as lora_ops
from lorafx.server.method.sampler import RenderSettings
from lorafx.server.method.stack import WanStack
from lorafx.server.method.trainer import TrainSettings, TrainState
from lorafx.server.pipeline import ShotSpec, load_inputs, lora_key, render_shot, train_shot, write_results
from lorafx.settings import typed

log = logging.getLogger("lorafx.server")

TRAIN_KEYS = {f.name for f in fields(TrainSettings)}
RENDER_KEYS = {f.name for f in fields(RenderSettings)}


@dataclass
class ShotLevelSettings:
    """The settings keys that shape the shot rather than a job (types checked on arrival)."""

    mask_mode: str | None = None  # bbox | tight | dilate | dilate:N
    dilate: int | None = None
    feather_px: float | None = None
    caption: str | None = None
    painted_caption: str | None = None
    context: float | None = None
    window_frames: int | None = None  # default: the model's
    window_overlap: int | None = None
    highlight_mode: str | None = None
    colour_config: str | None = None
    model_space: str | None = None
    appearance_steps: int | None = None
    roi_mode: str | None = None


SHOT_KEYS = {f.name for f in fields(ShotLevelSettings)}
SERVER_KEYS = {"block_swap", "fp8"}  # switches of the resident model, fixed at `lorafx serve`


@dataclass
class ModelInfo:
    name: str
    resolution: tuple[int, int]  # (W, H) landscape
    window_frames: int
    # training settings the model recommends (lorafx_model.json), beneath the shot's and the job's
    train_defaults: dict = field(default_factory=dict)


def split_settings(settings: dict) -> tuple[dict, dict, dict]:
    """Shot/job settings -> (train, render, shot) dicts; unknown keys are an error naming them."""
    train, render, shot = {}, {}, {}
    for k, v in (settings or {}).items():
        if k in SHOT_KEYS:
            shot[k] = v
        elif k in SERVER_KEYS:
            continue  # checked against the resident model by the caller
        elif k in TRAIN_KEYS or k in RENDER_KEYS:
            if k in TRAIN_KEYS:
                train[k] = v
            if k in RENDER_KEYS:
                render[k] = v
        else:
            raise InvalidInput(f"unknown setting {k!r}", setting=k)
    shot = typed(ShotLevelSettings, shot, "shot setting")
    if shot.get("appearance_steps") is not None:  # PROTOCOL.md's name: total appearance steps, 10 epochs
        if shot["appearance_steps"] < 0:
            raise InvalidInput(f"appearance_steps must be >= 0, got {shot['appearance_steps']}",
                               setting="appearance_steps")
        train["appearance_epochs"] = max(1, shot.pop("appearance_steps") // 10)
    return train, render, shot


def _refuse_render_only(settings: dict, where: str) -> None:
    """A render takes its settings from job.render: given anywhere else they would do nothing."""
    render_only = sorted(set(split_settings(settings)[1]) - TRAIN_KEYS)
    if render_only:
        raise InvalidInput(f"{', '.join(render_only)}: render settings belong to job.render, not to {where}",
                           settings=render_only)


def _merged(shot, overrides: dict | None) -> dict:
    """A shot's stored settings with a request's overrides on top."""
    return {**(shot.settings or {}), **(overrides or {})}


def _check_colour(spec: ShotSpec) -> None:
    """Resolve the shot's OCIO config, colour spaces and highlight mode now, as a job would."""
    ColourTransform(ColourSettings(**spec.colour))


def _result_pattern(out_dir: Path) -> str:
    """A render job's result EXR sequence."""
    return str(out_dir / "result.####.exr")


def _result_path(out_dir: Path, frame: int) -> str:
    """A render job's result EXR for `frame` (negative frames as result.-0005.exr)."""
    return sequence_path(_result_pattern(out_dir), frame)


class LorafxService:
    def __init__(self, stack: WanStack, model: ModelInfo, state_dir: str | Path, *,
                 endpoint: str = M.DEFAULT_ENDPOINT, curve=None, adapter_cache: int = 4,
                 allow_insecure: bool = False, sam2_checkpoint: str | None = None):
        self.stack = stack
        self.sam2_checkpoint = sam2_checkpoint
        self.model = model
        self.state = Path(state_dir).resolve()
        self.state.mkdir(parents=True, exist_ok=True)
        self.shots_dir = self.state / "shots"
        self.metrics = get_metrics()
        self.store = JobStore(self.state / "jobs.sqlite")
        self.loras = LoraStore(self.state / "loras")
        self.cache = AdapterCache(adapter_cache, self._load_adapter, self._activate_adapter,
                                  self._evict_adapter, metrics=self.metrics)
        self.queue = JobQueue(self.store, {"train": self._run_train, "render": self._run_render,
                                           "mask": self._run_mask},
                              on_event=self._on_event, workdir_root=self.state / "work", metrics=self.metrics)
        handlers = {
            M.HELLO: self.h_hello, M.HEALTH: self.h_health,
            M.SHOT_CREATE: self.h_shot_create, M.SHOT_PUT_FRAMES: self.h_shot_put_frames,
            M.SHOT_GET: self.h_shot_get, M.SHOT_LIST: self.h_shot_list, M.SHOT_DELETE: self.h_shot_delete,
            M.JOB_TRAIN: self.h_job_train, M.JOB_RENDER: self.h_job_render, M.JOB_MASK: self.h_job_mask,
            M.JOB_STATUS: self.h_job_status, M.JOB_CANCEL: self.h_job_cancel, M.JOB_LIST: self.h_job_list,
            M.RESULT_FETCH: self.h_result_fetch, M.LORA_LIST: self.h_lora_list, M.LORA_DELETE: self.h_lora_delete,
        }
        self.server = ProtocolServer(endpoint, handlers, curve=curve, allow_insecure=allow_insecure)
        self._started = time.time()
        self._shot_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "LorafxService":
        self.queue.start()  # takes the state directory's owner lock and recovers crashed jobs
        self.server.start()
        log.info("lorafx %s serving %s on %s (state %s)", lorafx.__version__, self.model.name,
                 self.server.endpoint, self.state)
        return self

    def stop(self) -> None:
        self.server.stop()
        self.queue.stop(timeout=30.0)
        self.store.release_owner_lock()
        self.store.close()

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    # ------------------------------------------------------------------ shots on disk

    def _shot_lock(self, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._shot_locks.setdefault(name, threading.Lock())

    def _shot(self, name: str):
        try:
            return self.store.get_shot(name)
        except NotFound:
            raise NotFound(f"unknown shot {name!r}", shot=name) from None

    def _role_dir(self, name: str, role: str) -> Path:
        return self.shots_dir / name / role

    def _role_pattern(self, name: str, role: str) -> str:
        return str(self._role_dir(name, role) / f"{role}.####.exr")

    def _stored_frames(self, name: str, role: str) -> list[int]:
        d = self._role_dir(name, role)
        out = []
        if d.is_dir():
            for p in d.glob(f"{role}.*.exr"):
                m = re.fullmatch(rf"{role}\.(-?\d+)\.exr", p.name)
                if m:
                    out.append(int(m.group(1)))
        return sorted(out)

    def shot_spec(self, name: str, overrides: dict | None = None) -> ShotSpec:
        shot = self._shot(name)
        paths = shot.paths or {}
        refs = {int(k): v for k, v in (paths.get("references") or {}).items()}
        for f in self._stored_frames(name, "reference"):
            refs.setdefault(f, sequence_path(self._role_pattern(name, "reference"), f))
        return self._build_spec(name, shot.frame_first, shot.frame_last, paths, _merged(shot, overrides), refs)

    def _build_spec(self, name: str, first: int, last: int, paths: dict, settings: dict,
                    refs: dict[int, str] | None = None) -> ShotSpec:
        """A ShotSpec from a shot's stored paths and settings (checked: ShotSpec refuses bad values)."""
        _, _, s = split_settings(settings)
        mask_mode = s.get("mask_mode") or "bbox"
        if mask_mode == "dilate":
            mask_mode = f"dilate:{8 if s.get('dilate') is None else s['dilate']}"
        colour = {}
        if paths.get("colorspace"):
            colour["plate_space"] = paths["colorspace"]
        for key, colour_key in (("highlight_mode", "highlight_mode"), ("colour_config", "config"),
                                ("model_space", "model_space")):
            if s.get(key):
                colour[colour_key] = s[key]
        given = {k: s[k] for k in ("roi_mode", "feather_px", "caption", "painted_caption", "context",
                                   "window_frames", "window_overlap") if s.get(k) is not None}
        return ShotSpec(
            name=name, first=first, last=last,
            plate=paths.get("plate") or self._role_pattern(name, "plate"),
            matte=paths.get("matte") or self._role_pattern(name, "matte"),
            matte_channel=(paths.get("matte_channel") if paths.get("matte_channel") not in (None, "A") else None),
            references=refs or {}, colour=colour, mask_mode=mask_mode, model_size=self.model.resolution,
            **{"window_frames": self.model.window_frames, **given})

    def _check_training(self, spec: ShotSpec, settings: dict) -> None:
        """What a training job would find wrong in a shot's settings (`spec` is built from them,
        so its own checks have run), found now: the request that brings a bad setting fails,
        naming it, not a job minutes later. Render settings come from the render request."""
        self._train_settings(settings)
        _check_colour(spec)

    def shot_record(self, name: str) -> dict:
        shot = self._shot(name)
        paths = shot.paths or {}
        results = []
        latest = paths.get("latest_render")
        if latest:
            results = [int(p.name.split(".")[-2]) for p in (self.shots_dir / name / "results" / latest).glob("*.exr")]
        return {
            "name": shot.name, "first": shot.frame_first, "last": shot.frame_last,
            "colorspace": paths.get("colorspace"), "settings": shot.settings or {},
            "plate": paths.get("plate"), "matte": paths.get("matte"),
            "frames": {"plate": self._stored_frames(name, "plate"), "matte": self._stored_frames(name, "matte"),
                       "reference": sorted(set(self._stored_frames(name, "reference"))
                                           | {int(k) for k in (paths.get("references") or {})}),
                       "result": sorted(results)},
            "loras": sorted((paths.get("loras") or {}).keys()),
            "created_at": shot.created,
        }

    # ------------------------------------------------------------------ handlers

    def h_hello(self, req: Request) -> dict:
        w, h = self.model.resolution
        return {**self.server.capabilities(), "server_version": lorafx.__version__, "model": self.model.name,
                "model_resolution": [[w, h], [h, w]], "device": self._device_name(),
                "window_frames": self.model.window_frames, "train_defaults": dict(self.model.train_defaults),
                "configs": ["masked", "i2v", "none", "all"]}

    def _device_name(self) -> str:
        d = self.stack.device
        if d.type == "cuda":
            return f"{d} {torch.cuda.get_device_name(d)}"
        return str(d)

    def h_health(self, req: Request) -> dict:
        from lorafx.server.jobs.metrics import process_rss_bytes

        running = self.store.list_jobs(state="running", limit=1)
        mem = {"rss_bytes": process_rss_bytes(), "gpu_allocated_bytes": None, "gpu_reserved_bytes": None,
               "gpu_total_bytes": None}
        if self.stack.device.type == "cuda":
            mem.update(gpu_allocated_bytes=torch.cuda.memory_allocated(self.stack.device),
                       gpu_reserved_bytes=torch.cuda.memory_reserved(self.stack.device),
                       gpu_total_bytes=torch.cuda.get_device_properties(self.stack.device).total_memory)
        return {"queue_length": len(self.queue.pending()), "current_job": running[0].id if running else None,
                "uptime_s": time.time() - self._started, "memory": mem, "protocol": self.server.stats(),
                "adapter_cache": self.cache.stats(), "model": self.model.name}

    def h_shot_create(self, req: Request) -> dict:
        b = req.body
        name, first, last = b["name"], int(b["first"]), int(b["last"])
        if last < first:
            raise InvalidInput(f"frame range {first}-{last} is reversed")
        exists = True
        try:
            self.store.get_shot(name)
        except NotFound:
            exists = False
        if exists and not b.get("replace", False):
            raise InvalidInput(f"shot {name!r} exists (pass replace=true to replace it)", shot=name)
        settings = dict(b.get("settings") or {})
        self._check_server_switches(settings)
        paths = {"colorspace": b.get("colorspace"), "plate": b.get("plate"), "matte": b.get("matte"),
                 "matte_channel": b.get("matte_channel", "A"), "references": {}, "loras": {},
                 "inputs_rev": time.time_ns()}  # never reuses a replaced shot's LoRA cache key
        self._check_training(self._build_spec(name, first, last, paths, settings), settings)
        _refuse_render_only(settings, "the shot")
        displays = {}
        for role in ("plate", "matte"):
            pattern = paths[role]
            if pattern:
                probe = sequence_path(pattern, first)  # InvalidInput when it has no frame token
                if not Path(probe).is_file():
                    raise NotFound(f"{role} sequence {pattern}: first frame {probe} not found", path=probe)
                displays[role] = (probe, read_windows(probe)[1])  # roto may crop its data window, not this
        if len(displays) == 2 and displays["plate"][1] != displays["matte"][1]:
            (plate_file, plate_win), (matte_file, matte_win) = displays["plate"], displays["matte"]
            raise InvalidInput(f"matte {matte_file} is {matte_win.width}x{matte_win.height} (display window) but "
                               f"the plate {plate_file} is {plate_win.width}x{plate_win.height}")
        # everything is checked: only now may a replaced shot's files go
        if exists:
            old = self._shot(name).paths or {}
            paths["loras"] = old.get("loras", {})
            shutil.rmtree(self.shots_dir / name, ignore_errors=True)
        (self.shots_dir / name).mkdir(parents=True, exist_ok=True)
        self.store.put_shot(name, settings=settings, frame_first=first, frame_last=last, paths=paths)
        return self.shot_record(name)

    def _check_server_switches(self, settings: dict) -> None:
        for key, have in (("fp8", bool(self.stack.low_memory.get("fp8_storage"))),
                          ("block_swap", bool(self.stack.low_memory.get("group_offload")))):
            if key in settings and bool(settings[key]) != have:
                raise InvalidInput(f"setting {key!r} is a switch of the resident model (now {have}); "
                                   f"restart `lorafx serve` with it changed", setting=key)

    def h_shot_put_frames(self, req: Request) -> dict:
        b = req.body
        name, role = b["shot"], b["role"]
        shot = self._shot(name)
        stored = []
        with self._shot_lock(name):
            paths = dict(shot.paths or {})
            for frame, data in sorted(req.frames().items()):
                if not shot.frame_first <= frame <= shot.frame_last:
                    raise InvalidInput(f"frame {frame} is outside shot {name} ({shot.frame_first}-{shot.frame_last})",
                                       frame=frame)
                if isinstance(data, str):
                    if not Path(data).is_file():
                        raise NotFound(f"frame {frame}: {data} not found", path=data)
                    if role != "reference":
                        raise InvalidInput("plate and matte frames by path are given as a sequence pattern in "
                                           "shot.create; put_frames by path takes reference frames")
                    paths.setdefault("references", {})[str(frame)] = data
                else:
                    self._store_inline(name, role, frame, data, req.body)
                stored.append(frame)
            # new pixels under the same patterns: the cached LoRA no longer matches (see _run_train)
            paths["inputs_rev"] = int(paths.get("inputs_rev") or 0) + 1
            self.store.put_shot(name, paths=paths)
        return {"shot": name, "role": role, "stored": stored}

    def _store_inline(self, name: str, role: str, frame: int, pixels: np.ndarray, body: dict) -> None:
        desc = next(d for d in body["frames"] if d.get("frame") == frame)
        channels = list(desc.get("channels") or M.DEFAULT_CHANNELS.get(pixels.shape[-1], ()))
        arr = np.asarray(pixels, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[..., None]
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InvalidInput(f"{role} frame {frame} has {int(bad.sum())} NaN/inf values", frame=frame)
        # every role of a shot shares the plate's resolution: say so at upload, not in a job
        for other in (role, *(r for r in ("plate", "matte", "reference") if r != role)):
            existing = self._stored_frames(name, other)
            if not existing:
                continue
            data, _ = read_windows(sequence_path(self._role_pattern(name, other), existing[0]))
            if (data.width, data.height) != (arr.shape[1], arr.shape[0]):
                which = f"earlier {role} frames" if other == role else f"the shot's {other} frames"
                raise InvalidInput(f"{role} frame {frame} is {arr.shape[1]}x{arr.shape[0]} but {which} "
                                   f"are {data.width}x{data.height}", frame=frame)
        if role == "matte" and arr.shape[-1] == 1:
            channels = ["A"]
        path = sequence_path(self._role_pattern(name, role), frame)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pixel_type = "half" if pixels.dtype == np.float16 else "float"
        write_exr_atomic(path, arr, channels, pixel_type=pixel_type, metadata={"shot": name, "role": role})

    def h_shot_get(self, req: Request) -> dict:
        return self.shot_record(req.body["name"])

    def h_shot_list(self, req: Request) -> dict:
        return {"shots": [self.shot_record(s.name) for s in self.store.list_shots()]}

    def h_shot_delete(self, req: Request) -> dict:
        name = req.body["name"]
        self._shot(name)
        cancelled = []
        for job in self.store.list_jobs(limit=10000):
            if job.shot == name and not job.terminal:
                self.queue.cancel(job.id)
                cancelled.append(job.id)
        if req.body.get("delete_loras"):
            self.loras.delete(name)
        self.store.delete_shot(name)
        shutil.rmtree(self.shots_dir / name, ignore_errors=True)
        return {"deleted": name, "cancelled_jobs": cancelled}

    def _submit(self, kind: str, shot: str, params: dict, req: Request) -> dict:
        job_id = self.queue.submit(kind, shot, params, client=req.peer.hex() or "local")
        pending = [j.id for j in self.queue.pending()]
        return {"job": job_id, "state": "queued", "position": pending.index(job_id) if job_id in pending else 0}

    def _train_settings(self, settings: dict) -> TrainSettings:
        """The model's recommended settings beneath `settings` (the shot's under the job's)."""
        train, _, _ = split_settings({**self.model.train_defaults, **settings})
        return TrainSettings.from_dict(train)

    def h_job_train(self, req: Request) -> dict:
        b = req.body
        shot = self._shot(b["shot"])
        overrides = dict(b.get("settings") or {})
        self._check_server_switches(overrides)
        _refuse_render_only(overrides, "job.train")
        self._check_training(self.shot_spec(shot.name, overrides), _merged(shot, overrides))
        if not self._stored_frames(shot.name, "plate") and not (shot.paths or {}).get("plate"):
            raise InvalidInput(f"shot {shot.name} has no plate frames yet (shot.put_frames role plate)")
        if not self._stored_frames(shot.name, "matte") and not (shot.paths or {}).get("matte"):
            raise InvalidInput(f"shot {shot.name} has no matte frames yet (shot.put_frames role matte, or job.mask)")
        lora = b.get("lora") or shot.name
        return self._submit("train", shot.name, {"settings": overrides, "lora": lora,
                                                 "resume": bool(b.get("resume", True))}, req)

    def h_job_render(self, req: Request) -> dict:
        b = req.body
        shot = self._shot(b["shot"])
        lora = b.get("lora") or shot.name
        loras = (shot.paths or {}).get("loras") or {}
        overrides = dict(b.get("settings") or {})
        no_lora = bool(overrides.pop("no_lora", False))  # stock model, for A/B against the LoRA
        # A training of this LoRA still queued or running: the render waits for it in the queue and
        # uses what it makes (a farm submits train and render together and walks away).
        training = None if no_lora else self._pending_training(shot.name, lora)
        if lora not in loras and not no_lora and training is None:
            raise NotFound(f"shot {shot.name} has no trained LoRA {lora!r} (run job.train first)", lora=lora)
        if req.body.get("frames"):
            self.h_shot_put_frames(Request(type=M.SHOT_PUT_FRAMES, id=req.id, peer=req.peer, arrays=req.arrays,
                                           body={"shot": shot.name, "role": "reference", "frames": b["frames"]}))
        first = b.get("first")
        if first is not None and int(first) != shot.frame_first:
            raise InvalidInput(f"a render starts at the edited first frame {shot.frame_first}, not {first}")
        last = b.get("last")
        if last is not None and not shot.frame_first <= int(last) <= shot.frame_last:
            raise InvalidInput(f"last frame {last} is outside shot {shot.name}")
        _, render, _ = split_settings(overrides)
        for key in ("seed", "steps", "cfg", "shift", "sampler", "caption"):
            if b.get(key) is not None:
                render[key] = b[key]
        RenderSettings.from_dict(render)
        spec = self.shot_spec(shot.name, overrides)
        _check_colour(spec)
        if shot.frame_first not in spec.references:
            raise InvalidInput(f"shot {shot.name} has no edited first frame: upload a reference frame "
                               f"{shot.frame_first} (shot.put_frames role reference, or frames in job.render)")
        params = {"render": render, "settings": overrides, "lora": lora, "last": last, "no_lora": no_lora}
        if training is not None:
            params[AFTER] = training
        return self._submit("render", shot.name, params, req)

    def _pending_training(self, shot: str, lora: str) -> str | None:
        """The newest queued or running training job of `lora` on `shot`, if any."""
        # one query, not one per state: a job moving from queued to running between two queries
        # would be missed by both
        pending = [j for j in self.queue.list(shot=shot, kind="train")
                   if not j.terminal and (j.params or {}).get("lora") == lora]
        return max(pending, key=lambda j: j.seq).id if pending else None

    def h_job_mask(self, req: Request) -> dict:
        b = req.body
        shot = self._shot(b["shot"])
        if not self.sam2_checkpoint:
            raise InvalidInput("this server has no SAM2 checkpoint: start `lorafx serve --sam2-checkpoint PATH` "
                               "(and install SAM2: see scripts/setup.sh), or upload a roto matte")
        if not shot.frame_first <= int(b["frame"]) <= shot.frame_last:
            raise InvalidInput(f"frame {b['frame']} is outside shot {shot.name}")
        return self._submit("mask", shot.name, dict(b), req)

    def _job_record(self, job) -> dict:
        d = job.to_dict()
        pending = [j.id for j in self.queue.pending()]
        return {"job": job.id, "kind": job.kind, "shot": job.shot, "state": job.state, "stage": job.stage,
                "step": job.step, "total": job.total, "loss": job.loss, "eta_s": job.eta_s,
                "message": job.message, "error": d.get("error"), "created_at": job.created,
                "started_at": job.started, "finished_at": job.finished,
                "position": pending.index(job.id) if job.id in pending else None, "result": job.result,
                "attempts": job.attempts}

    def h_job_status(self, req: Request) -> dict:
        return self._job_record(self.queue.status(req.body["job"]))

    def h_job_cancel(self, req: Request) -> dict:
        return self._job_record(self.queue.cancel(req.body["job"]))

    def h_job_list(self, req: Request) -> dict:
        b = req.body
        jobs = self.store.list_jobs(limit=int(b.get("limit", 1000)))
        if b.get("shot"):
            jobs = [j for j in jobs if j.shot == b["shot"]]
        if b.get("states"):
            jobs = [j for j in jobs if j.state in b["states"]]
        return {"jobs": [self._job_record(j) for j in jobs]}

    def h_result_fetch(self, req: Request):
        b = req.body
        shot = self._shot(b["shot"])
        job_id = b.get("job") or (shot.paths or {}).get("latest_render")
        if not job_id:
            raise NotFound(f"shot {shot.name} has no rendered results yet")
        out_dir = self.shots_dir / shot.name / "results" / job_id
        if not out_dir.is_dir():
            raise NotFound(f"no results for job {job_id} of shot {shot.name}", job=job_id)
        first = int(b["first"]) if b.get("first") is not None else shot.frame_first
        last = int(b["last"]) if b.get("last") is not None else shot.frame_last
        if first < shot.frame_first or last > shot.frame_last or last < first:
            raise InvalidInput(f"range {first}-{last} is outside shot {shot.name} "
                               f"({shot.frame_first}-{shot.frame_last})")
        frames = [f for f in range(first, last + 1) if Path(_result_path(out_dir, f)).is_file()]
        if not frames:
            raise NotFound(f"job {job_id} wrote no frames in {first}-{last}")
        if b.get("mode", "buffers") == "paths":
            return {"shot": shot.name, "job": job_id,
                    "frames": [{"frame": f, "role": "result", "path": _result_path(out_dir, f)}
                               for f in frames]}
        dtype = np.float16 if b.get("dtype", "f16") == "f16" else np.float32
        wanted = list(b.get("channels") or [])
        descs, arrays, total = [], [], 0
        limit = self.server.limits.max_message_bytes
        for i, f in enumerate(frames):
            fr = read_frame(_result_path(out_dir, f))
            chans = wanted or list(fr.channels)
            idx = [fr.channel_index(c) for c in chans]
            px = np.ascontiguousarray(fr.pixels[..., idx].astype(dtype))
            total += px.nbytes
            if total > limit or len(arrays) >= self.server.limits.max_buffers:
                from lorafx.errors import TooLarge

                raise TooLarge(f"{len(frames)} frames exceed the message limit; fetch at most {i} at a time",
                               max_frames=i)
            descs.append({"buf": i + 1, "dtype": "f16" if dtype == np.float16 else "f32", "shape": list(px.shape),
                          "channels": chans, "frame": f, "role": "result"})
            arrays.append(px)
        return {"shot": shot.name, "job": job_id, "frames": descs}, arrays

    def h_lora_list(self, req: Request) -> dict:
        out = []
        for shot in self.store.list_shots():
            if req.body.get("shot") and shot.name != req.body["shot"]:
                continue
            for name, key in ((shot.paths or {}).get("loras") or {}).items():
                path = self.loras.path_for(shot.name, key)
                if path.is_file():
                    info = [i for i in self.loras.list(shot.name) if i.key == key]
                    out.append({"name": name, "shot": shot.name, "key": key, "path": str(path),
                                "size_bytes": path.stat().st_size, "steps": info[0].step if info else None,
                                "created_at": info[0].created if info else None,
                                "hash": (info[0].metadata.get("settings_hash") if info else None)})
        return {"loras": out}

    def h_lora_delete(self, req: Request) -> dict:
        name = req.body["name"]
        for shot in self.store.list_shots():
            loras = dict((shot.paths or {}).get("loras") or {})
            if name in loras:
                for job in self.store.list_jobs(state="running", limit=100):
                    if job.shot == shot.name:
                        raise Busy(f"LoRA {name} is in use by running job {job.id}", job=job.id)
                key = loras.pop(name)
                self.cache.invalidate((shot.name, key))
                self.loras.delete(shot.name, key)
                self.store.put_shot(shot.name, paths={**(shot.paths or {}), "loras": loras})
                return {"deleted": name}
        raise NotFound(f"no LoRA named {name!r}", lora=name)

    # ------------------------------------------------------------------ events

    def _on_event(self, job_id: str, event: dict) -> None:
        kind = event.get("type")
        if kind == "progress":
            body = {k: event.get(k) for k in ("stage", "step", "total", "loss", "eta_s", "message")}
            self.server.publish(job_id, body, event=M.EVENT_PROGRESS)
        elif kind == "state":
            job = event.get("job") or {}
            self.server.publish(job_id, {"state": event.get("state"), "error": job.get("error"),
                                         "message": job.get("message")}, event=M.EVENT_JOB_STATE)

    # ------------------------------------------------------------------ adapters

    def _adapter_name(self, key) -> str:
        shot, h = key
        return f"{shot}-{h}".replace(".", "_")

    def _load_adapter(self, key) -> None:
        shot, h = key
        stored = self.loras.load(shot, h, device=self.stack.device)
        lora_ops.load_into_stack(self.stack, self._adapter_name(key), stored.state_dict, stored.metadata)

    def _activate_adapter(self, key) -> None:
        lora_ops.activate(self.stack, self._adapter_name(key))

    def _evict_adapter(self, key) -> None:
        lora_ops.delete_adapter(self.stack, self._adapter_name(key))

    # ------------------------------------------------------------------ runners

    def _run_train(self, job, ctx) -> dict:
        params = job.params
        spec = self.shot_spec(job.shot, params.get("settings"))
        shot = self._shot(job.shot)
        settings = self._train_settings(_merged(shot, params.get("settings")))
        # the key covers settings, model, patterns and the shot's inputs revision (bumped by every
        # upload), so re-uploaded pixels under the same patterns never reuse a stale adapter
        key = lora_key(spec, settings, f"{self.model.name}#rev{(shot.paths or {}).get('inputs_rev', 0)}")
        name = params["lora"]
        if self.loras.exists(job.shot, key):  # the same inputs and settings: the cached adapter
            self._register_lora(job.shot, name, key)
            return {"lora": name, "key": key, "cached": True}
        inputs = load_inputs(spec, self.model.resolution)
        resume = None
        if ctx.resume_from is not None and params.get("resume", True):
            from lorafx.server.jobs.lora_store import CorruptFile

            try:
                ck = self.loras.load_checkpoint_dir(ctx.resume_from.path, device=self.stack.device)
            except (CorruptFile, NotFound):  # damaged or gone: the newest checkpoint that verifies
                ck = self.loras.load_checkpoint(job.shot, key, device=self.stack.device)
            resume = TrainState(step=ck.step, lora=ck.lora_state, optimizer=ck.optimizer_state,
                                stage=ck.metadata.get("stage", "motion"))
            ctx.log.info("resuming %s from step %d", job.id, ck.step)
        adapter = f"train-{key}"

        def checkpoint(state: TrainState):
            path = self.loras.save_checkpoint(job.shot, key, state.step, state.lora, state.optimizer,
                                              metadata={"stage": state.stage, "job": job.id})
            ctx.checkpoint(path, state.step)

        def progress(stage, step, total, loss):
            ctx.progress(stage, step, total, loss)

        with self.cache.exclusive():  # nothing else may switch adapters while this one trains
            try:
                result = train_shot(self.stack, inputs, settings, adapter, on_progress=progress,
                                    should_stop=ctx.cancelled.is_set, checkpoint_fn=checkpoint, resume=resume)
                tensors, header = lora_ops.diffusers_payload(self.stack.transformer, adapter, settings.lora_spec())
            finally:
                lora_ops.delete_adapter(self.stack, adapter)
        meta = dict(header)
        meta.update({"settings_hash": key, "model": self.model.name, "job": job.id,
                     "final_loss": f"{result.final_loss}", "settings": json.dumps(settings.to_dict())})
        self.loras.save(job.shot, key, tensors, meta, step=result.steps)
        self.loras.delete_checkpoints(job.shot, key)
        self._register_lora(job.shot, name, key)
        self.cache.invalidate((job.shot, key))
        return {"lora": name, "key": key, "steps": result.steps, "final_loss": result.final_loss,
                "resumed_from": resume.step if resume is not None else None,
                "seconds": round(result.seconds, 2), "path": str(self.loras.path_for(job.shot, key))}

    def _register_lora(self, shot_name: str, name: str, key: str) -> None:
        with self._shot_lock(shot_name):
            shot = self._shot(shot_name)
            paths = dict(shot.paths or {})
            loras = dict(paths.get("loras") or {})
            loras[name] = key
            paths["loras"] = loras
            self.store.put_shot(shot_name, paths=paths)

    def _run_render(self, job, ctx) -> dict:
        params = job.params
        if params.get(AFTER):  # queued behind the training of its LoRA: that must have succeeded
            try:
                training = self.queue.status(params[AFTER])
            except NotFound:
                training = None
            if training is None or training.state != "done":
                why = "is gone" if training is None else (
                    f"ended {training.state}" + (f": {training.error_message}" if training.error_message else ""))
                raise NotFound(f"the training job {params[AFTER]} this render was queued behind {why}; "
                               f"no LoRA {params['lora']!r} to render with", job=params[AFTER])
        spec = self.shot_spec(job.shot, params.get("settings"))
        if params.get("last") is not None:
            spec.last = int(params["last"])
        render_settings = RenderSettings.from_dict(params.get("render") or {})
        shot = self._shot(job.shot)
        inputs = load_inputs(spec, self.model.resolution)
        ctx.progress("load", 1, 1)

        def progress(stage, step, total, loss):
            ctx.progress(stage, step, total, loss)

        key = None
        if params.get("no_lora"):
            with self.cache.exclusive():
                lora_ops.activate(self.stack, None)
                video = render_shot(self.stack, inputs, render_settings, None, on_progress=progress,
                                    should_stop=ctx.cancelled.is_set)
        else:
            key = ((shot.paths or {}).get("loras") or {}).get(params["lora"])
            if key is None or not self.loras.exists(job.shot, key):
                raise NotFound(f"LoRA {params['lora']!r} of shot {job.shot} is gone")
            with self.cache.use((job.shot, key)):
                video = render_shot(self.stack, inputs, render_settings, self._adapter_name((job.shot, key)),
                                    on_progress=progress, should_stop=ctx.cancelled.is_set)
        out_dir = self.shots_dir / job.shot / "results" / job.id
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"lora": params.get("lora") or "", "lora_hash": key or "", "seed": int(render_settings.seed),
                "model": self.model.name, "steps": int(render_settings.steps), "cfg": float(render_settings.cfg),
                "job": job.id}
        paths = write_results(inputs, video, _result_pattern(out_dir), meta, on_progress=progress)
        with self._shot_lock(job.shot):
            shot = self._shot(job.shot)
            self.store.put_shot(job.shot, paths={**(shot.paths or {}), "latest_render": job.id})
        return {"first": spec.first, "last": spec.last, "frames": len(paths), "dir": str(out_dir),
                "pattern": _result_pattern(out_dir)}

    def _run_mask(self, job, ctx) -> dict:
        """SAM2 video propagation from clicks -> the shot's matte frames (then derived per
        `mode` at training time, like any roto)."""
        from lorafx.server.masks.sam2 import matte_from_clicks
        from lorafx.server.media.io import read_sequence

        p = job.params
        if not self.sam2_checkpoint:
            raise InvalidInput("this server has no SAM2 checkpoint (start it with --sam2-checkpoint PATH)")
        spec = self.shot_spec(job.shot)
        first = int(p.get("first") or spec.first)
        last = int(p.get("last") or spec.last)
        plate = read_sequence(spec.plate, first, last)
        points = [list(x) for x in p["positive"]] + [list(x) for x in p.get("negative") or []]
        labels = [1] * len(p["positive"]) + [0] * len(p.get("negative") or [])
        ctx.progress("sam2", 0, 1)
        matte = matte_from_clicks(plate, int(p["frame"]), points, labels, checkpoint_path=self.sam2_checkpoint,
                                  device=str(self.stack.device))
        with self._shot_lock(job.shot):
            for k, number in enumerate(plate.frame_numbers):
                path = sequence_path(self._role_pattern(job.shot, "matte"), number)
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                write_exr_atomic(path, matte[k][..., None], ["A"], plate.data_window, plate.display_window,
                                 metadata={"shot": job.shot, "role": "matte", "source": "sam2"})
                ctx.progress("write", k + 1, len(plate.frame_numbers))
            shot = self._shot(job.shot)
            paths = dict(shot.paths or {})
            paths["matte"] = None  # the shot now uses the SAM2 mattes stored with it
            paths["inputs_rev"] = int(paths.get("inputs_rev") or 0) + 1
            settings = dict(shot.settings or {})
            mode = p.get("mode", "bbox")
            settings["mask_mode"] = mode
            if mode == "dilate":
                settings["dilate"] = int(p.get("dilate", 0))
            self.store.put_shot(job.shot, paths=paths, settings=settings)
        return {"frames": len(plate.frame_numbers), "first": first, "last": last,
                "coverage": float(matte.mean())}
