"""A shot's way through lorafx (DESIGN.md §2): plate + roto matte + painted frames in, a trained
LoRA and a composited EXR sequence out.

    media (in)  : read plate/matte/references, validate, colour -> model space, crop the ROI
    method      : build keep masks, train the adapter, render window by window
    media (out) : resize back, colour back, composite through the feathered matte, write EXRs

No sockets and no job bookkeeping here: the server's job runners call these functions with
progress / cancel callbacks.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import lorafx
from lorafx.errors import InvalidInput
from lorafx.server.masks.ops import parse_mask_mode
from lorafx.server.media.colour import ColourSettings
from lorafx.server.media.composite import composite_frame, feathered_alpha
from lorafx.server.media.plate import (ModelWindow, ShotInputs, from_model_space, load_shot_inputs,
                                       to_model_space, write_result_sequence)
from lorafx.server.media.roi import LANDSCAPE, Roi, crop
from lorafx.server.method.conditioning import VAE_TEMPORAL
from lorafx.server.method.sampler import RenderSettings, render
from lorafx.server.method.stack import WanStack
from lorafx.server.method.trainer import LoraTrainer, TrainSettings, TrainState, prepare_samples

Progress = Callable[[str, int, int, float | None], None]
ROI_MODES = ("matte", "full")  # crop around the matte with context, or the whole frame


def check_windows(window_frames: int, window_overlap: int) -> None:
    """Model windows are 4k+1 frames; a later window must add at least one latent frame."""
    if window_frames < 5 or (window_frames - 1) % VAE_TEMPORAL:
        raise InvalidInput(f"window_frames must be 4k+1 and at least 5 (5, 9, 13, ...), got {window_frames}",
                           setting="window_frames")
    if not 1 <= window_overlap <= window_frames - VAE_TEMPORAL:
        raise InvalidInput(f"window_overlap must be 1..{window_frames - VAE_TEMPORAL} for {window_frames}-frame "
                           f"windows (each later window must add at least {VAE_TEMPORAL} new frames), got "
                           f"{window_overlap}", setting="window_overlap")


@dataclass
class ShotSpec:
    """Everything that defines a shot, as stored in the server's shot record."""

    name: str
    first: int
    last: int
    plate: str  # sequence pattern: plate.####.exr
    matte: str  # sequence pattern of the roto matte (1 = region to change)
    matte_channel: str | None = None  # default: A, else Y, else the first channel (media.plate)
    references: dict[int, str] = field(default_factory=dict)  # frame -> painted frame file
    colour: dict = field(default_factory=dict)  # ColourSettings fields
    mask_mode: str = "bbox"  # training mask from the matte: bbox | tight | dilate:N
    feather_px: float = 2.0
    caption: str = ""
    painted_caption: str = ""
    context: float = 0.25  # ROI context around the matte
    roi_mode: str = "matte"
    model_size: tuple[int, int] | None = None  # (W, H) override; default: the stack's
    window_frames: int = 49  # frames per model window (4k+1)
    # frames a later window shares with the one before, pinned to what that one rendered. 1 + 4j
    # fills whole latent frames (5 hands over motion, not just a still); in the miniature world
    # 1 measured best (benchmarks/RESULTS.md, long shots), so it is the default.
    window_overlap: int = 1

    def __post_init__(self):
        parse_mask_mode(self.mask_mode)
        if not (self.feather_px >= 0 and math.isfinite(self.feather_px)):
            raise InvalidInput(f"feather_px must be >= 0 px, got {self.feather_px}", setting="feather_px")
        if not (self.context >= 0 and math.isfinite(self.context)):
            raise InvalidInput(f"context must be >= 0 (a fraction of the matte's size), got {self.context}",
                               setting="context")
        if self.roi_mode not in ROI_MODES:
            raise InvalidInput(f"roi_mode must be one of {', '.join(ROI_MODES)}, got {self.roi_mode!r}",
                               setting="roi_mode")
        ColourSettings(**self.colour)  # highlight mode and knee; the config is checked where it is read
        check_windows(self.window_frames, self.window_overlap)

    @classmethod
    def from_dict(cls, d: dict) -> "ShotSpec":
        d = dict(d)
        d["references"] = {int(k): v for k, v in (d.get("references") or {}).items()}
        if d.get("model_size"):
            d["model_size"] = tuple(d["model_size"])
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidInput(f"unknown shot fields: {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["references"] = {str(k): v for k, v in self.references.items()}
        return d

    @property
    def frame_numbers(self) -> list[int]:
        return list(range(self.first, self.last + 1))


@dataclass
class PreparedShot:
    """A shot read, validated and brought to model space."""

    spec: ShotSpec
    inputs: ShotInputs  # plate-space frames, matte, references
    window: ModelWindow  # the model-space crop and what is needed to go back
    source: torch.Tensor  # (N, 3, h, w) model space in [-1, 1]
    keep: torch.Tensor  # (N, h, w) keep mask (1 = keep), from the training mask mode
    references: dict[int, torch.Tensor]  # index in shot -> (3, h, w) model space in [-1, 1]

    @property
    def num_frames(self) -> int:
        return self.source.shape[0]


def model_orientations(size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    w, h = size
    return ((max(w, h), min(w, h)), (min(w, h), max(w, h)))


def full_frame_roi(inputs: ShotInputs, model_size: tuple[int, int]) -> Roi:
    """The whole data window, to the model size of matching orientation (roi_mode "full")."""
    h, w = inputs.matte.shape[1:]
    landscape, portrait = model_orientations(model_size)
    return Roi(0, 0, w, h, landscape if w >= h else portrait)


def load_inputs(spec: ShotSpec, stack_model_size: tuple[int, int] | None = None) -> PreparedShot:
    """Read and validate everything (errors name the file, frame and problem), then crop, convert
    and resize to model space (media.plate)."""
    if spec.last < spec.first:
        raise InvalidInput(f"frame range {spec.first}-{spec.last} is empty")
    inputs = load_shot_inputs(spec.plate, spec.matte, spec.first, spec.last, ColourSettings(**spec.colour),
                              matte_channel=spec.matte_channel, references=spec.references)
    size = spec.model_size or stack_model_size or LANDSCAPE
    roi = full_frame_roi(inputs, size) if spec.roi_mode == "full" else None
    window = to_model_space(inputs, roi=roi, mask_mode=spec.mask_mode, context=spec.context,
                            model_sizes=model_orientations(size))
    references = {number - spec.first: _to_tensor(rgb[None])[0] for number, rgb in window.references.items()}
    return PreparedShot(spec=spec, inputs=inputs, window=window, source=_to_tensor(window.frames),
                        keep=torch.from_numpy(window.keep), references=references)


def _to_tensor(model_rgb: np.ndarray) -> torch.Tensor:
    """(N, h, w, 3) [0, 1] -> (N, 3, h, w) [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(model_rgb)).permute(0, 3, 1, 2).float() * 2 - 1


def _to_numpy(video: torch.Tensor) -> np.ndarray:
    """(N, 3, h, w) [-1, 1] -> (N, h, w, 3) [0, 1]."""
    return ((video.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).contiguous().numpy()


# ----------------------------------------------------------------------------- windows


def padded_length(n: int) -> int:
    """The next 4k+1 >= n: shots of other lengths are padded by holding the last frame."""
    return (max(n, 1) - 1 + VAE_TEMPORAL - 1) // VAE_TEMPORAL * VAE_TEMPORAL + 1


def plan_windows(n: int, window: int, overlap: int = 1) -> list[tuple[int, int]]:
    """[start, end) windows of `window` frames (4k+1) covering n (4k+1) frames. A later window
    starts `overlap` frames before the previous one ends (its first frames are pinned to what was
    rendered there); the tail is a shorter 4k+1 window ending on the last frame, and may share
    more frames with the window before it."""
    if n <= window:
        return [(0, n)]
    check_windows(window, overlap)
    spans, start = [], 0
    while start + window < n:
        spans.append((start, start + window))
        start += window - overlap
    tail = padded_length(n - start)
    spans.append((n - tail, n))
    return spans


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    if x.shape[0] >= n:
        return x
    return torch.cat([x, x[-1:].expand(n - x.shape[0], *x.shape[1:])])


# ----------------------------------------------------------------------------- train / render


def train_shot(stack: WanStack, inputs: PreparedShot, settings: TrainSettings, adapter: str, *,
               on_progress: Progress | None = None, should_stop=None,
               checkpoint_fn: Callable[[TrainState], None] | None = None,
               resume: TrainState | None = None):
    """Motion stage on the plate (windows for long shots), then the appearance stage on the painted
    frames after the first (the first reference is the edited first frame, used at render only)."""
    n = padded_length(inputs.num_frames)
    source, keep = _pad(inputs.source, n), _pad(inputs.keep, n)
    if n > inputs.spec.window_frames and settings.window is None:
        settings.window = inputs.spec.window_frames
    painted = {k: v for k, v in inputs.references.items() if k > 0}
    settings.caption = settings.caption or inputs.spec.caption
    settings.painted_caption = settings.painted_caption or inputs.spec.painted_caption or None
    motion, appearance = prepare_samples(stack, source, keep, settings, painted=painted or None,
                                         on_progress=on_progress)
    trainer = LoraTrainer(stack, adapter, settings)
    return trainer.train(motion, appearance, on_progress=on_progress, should_stop=should_stop,
                         checkpoint_fn=checkpoint_fn, resume=resume)


def _handover(source: torch.Tensor, keep: torch.Tensor, rendered: torch.Tensor, i: int) -> torch.Tensor:
    """Frame i as a later window's condition: the plate where kept, the render where generated."""
    return torch.where(keep[i][None] > 0.5, source[i], rendered[i])


def render_shot(stack: WanStack, inputs: PreparedShot, settings: RenderSettings, adapter: str | None, *,
                on_progress: Progress | None = None, should_stop=None) -> torch.Tensor:
    """Render the whole shot window by window from the edited first frame; each later window is
    pinned to the frames it shares with the previous one (`window_overlap`), as rendered there.
    Returns (N, 3, h, w) in [-1, 1]."""
    if 0 not in inputs.references:
        raise InvalidInput(f"shot {inputs.spec.name} has no edited first frame (a reference at frame "
                           f"{inputs.spec.first})")
    settings.caption = settings.caption or inputs.spec.caption
    n = padded_length(inputs.num_frames)
    source, keep = _pad(inputs.source, n), _pad(inputs.keep, n)
    spans = plan_windows(n, inputs.spec.window_frames, inputs.spec.window_overlap)
    out = torch.empty_like(source)
    steps_total = len(spans) * settings.steps
    done = 0  # frames [0, done) are rendered and final
    for w, (a, b) in enumerate(spans):
        def window_progress(stage, step, total, loss, _w=w):
            if on_progress:
                on_progress("render", _w * settings.steps + step, steps_total, loss)

        # A later window is pinned to every frame it shares with what is already rendered, and
        # only its new frames are kept: shared frames are not re-rendered (nor VAE round-tripped).
        # Pinned frames are the plate where the shot keeps it and the render only in the edit
        # region: the render's own (lossy) background would displace the exact plate.
        first = inputs.references[0] if w == 0 else _handover(source, keep, out, a)
        pinned = {i - a: _handover(source, keep, out, i) for i in range(a + 1, done)} or None
        video = render(stack, source[a:b], keep[a:b], first, settings, adapter, pinned=pinned,
                       on_progress=window_progress, should_stop=should_stop)
        out[done:b] = video[done - a:]  # a <= done: windows start inside what is rendered
        done = b
    return out[: inputs.num_frames]


# ----------------------------------------------------------------------------- output


def write_results(shot: PreparedShot, rendered: torch.Tensor, out_pattern: str, metadata: dict,
                  on_progress: Progress | None = None) -> list[str]:
    """Resize back, convert to the plate's colour space, composite through the feathered matte
    (outside it: the plate bit for bit) and write each frame atomically (media.plate). Frame 1
    inside the matte is the artist's edited frame itself, at full plate resolution."""
    spec, inputs, window = shot.spec, shot.inputs, shot.window
    numbers = window.frame_numbers[: rendered.shape[0]]
    meta = dict(metadata)
    meta.update(window.metadata())
    meta.update({"shot": spec.name, "lorafx_version": lorafx.__version__})
    paths = []
    for k, number in enumerate(numbers):
        i = inputs.plate.index_of(number)
        if k == 0 and number in inputs.references:
            roi_pixels = crop(inputs.references[number][None], window.roi)[0]
        else:
            roi_pixels = from_model_space(_to_numpy(rendered[k:k + 1]), _single(window, number))[0]
        alpha = feathered_alpha(inputs.matte[i], spec.feather_px)
        frame = composite_frame(inputs.plate.frames[i], roi_pixels, window.roi, inputs.matte[i], alpha=alpha)
        paths += write_result_sequence([frame], out_pattern, [number], meta)
        if on_progress:
            on_progress("write", k + 1, len(numbers), None)
    return paths


def _single(window: ModelWindow, number: int) -> ModelWindow:
    return replace(window, frame_numbers=[number])


def lora_key(spec: ShotSpec, settings: TrainSettings, model_name: str) -> str:
    """Adapters are keyed by what determines them: the training settings, the model, and the
    shot's inputs (patterns, range, references, mask mode)."""
    material = json.dumps({"settings": settings.to_dict(), "model": model_name,
                           "plate": spec.plate, "matte": spec.matte, "range": [spec.first, spec.last],
                           "refs": {str(k): v for k, v in spec.references.items()},
                           "mask_mode": spec.mask_mode, "colour": spec.colour, "context": spec.context},
                          sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:16]
