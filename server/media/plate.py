"""The layer the server calls: shot inputs in, model-space windows out, and the way back.

    inputs = load_shot_inputs("plate.####.exr", "matte.####.exr", 1001, 1049, ColourSettings())
    window = to_model_space(inputs, mask_mode="bbox")     # window.frames (F, 480, 832, 3) in [0, 1]
    ... the method renders `rendered` (F, 480, 832, 3) in [0, 1] ...
    frames = composite_window(inputs, window, rendered, feather_px=4)
    write_result_sequence(frames, "out/plate_edit.####.exr", {"shot": "sh010", ...})

Conventions
- The matte is 1 = change (a compositor's roto). It comes from the matte file's channel named
  `matte_channel` when given, else **A if present, else Y, else the first channel**; values are
  clamped to [0, 1]. A matte with its own (tighter) data window is placed onto the plate's data
  window, zero outside. Values under `matte_floor` (1/1024) count as 0. Plate, matte and
  reference frames must share the display window.
- An empty matte (no pixel >= 0.5 on any frame of the window) and a full matte (every visible
  pixel, i.e. inside the display window, of every frame >= 0.5) are refused.
- NaN / inf in the plate's RGB, the matte or a reference are refused (message: frame, x, y).
- Model-space keep masks are 1 = keep = 1 - (training region). Frame 1's keep mask is NOT forced
  to all-keep here: the method's condition builder does that (it knows which frame is edited);
  `lorafx.server.masks.ops.to_keep` is the helper for it.
- The way back resizes in model space (the space the model's pixels live in), converts to the
  plate's colour space, then composites with the full-resolution matte (not the training mask).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import OpenImageIO as oiio

from lorafx.errors import InvalidInput
from lorafx.server.masks.ops import binarize, derive_training_mask
from lorafx.server.media.colour import ClipStats, ColourSettings, ColourTransform
from lorafx.server.media.composite import composite_frame, feathered_alpha
from lorafx.server.media.io import (Frame, PlateSequence, Window, check_finite, conform_to_window,
                                    find_channels, read_frame, read_sequence, sequence_path,
                                    write_exr_atomic)
from lorafx.server.media.roi import (LANDSCAPE, PORTRAIT, Roi, compute_roi, crop, resize,
                                     resize_mask, uncrop_resize)

__all__ = [
    "ShotInputs",
    "ModelWindow",
    "load_shot_inputs",
    "pick_matte_channel",
    "to_model_space",
    "from_model_space",
    "composite_window",
    "write_result_sequence",
    "make_contact_sheet",
    "display_frames",
    "masks_to_plate",
]


@dataclass
class ShotInputs:
    """Validated plate + matte (+ edited reference frames) of a shot, all in plate coordinates
    (the plate's data window) and the plate's colour space."""

    plate: PlateSequence
    matte: np.ndarray  # (F, H, W) float32 in [0, 1], 1 = change
    matte_channel: str
    references: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> (H, W, 3)
    colour: ColourSettings = field(default_factory=ColourSettings)

    @property
    def frame_numbers(self) -> list[int]:
        return self.plate.frame_numbers

    @property
    def rgb_index(self) -> list[int]:
        return find_channels(self.plate.channels, ("R", "G", "B"), what=self.plate.spec.pattern)

    def rgb(self, frame_number: int) -> np.ndarray:
        """(H, W, 3) plate RGB of one frame (a copy)."""
        return self.plate.pixels[self.plate.index_of(frame_number)][..., self.rgb_index]


@dataclass
class ModelWindow:
    """One window in model space, and what is needed to go back."""

    frame_numbers: list[int]
    frames: np.ndarray  # (F, H, W, 3) float32 in [0, 1], model resolution
    keep: np.ndarray  # (F, H, W) float32 {0, 1}, 1 = keep = 1 - training region
    matte: np.ndarray  # (F, H, W) float32 {0, 1}, the tight matte at model resolution, 1 = change
    references: dict[int, np.ndarray]  # frame -> (H, W, 3) float32 in [0, 1]
    roi: Roi
    colour: ColourSettings
    clip_stats: ClipStats
    mask_mode: str
    return_cap: float  # shaper mode: decoded values are capped here (the ROI's plate max, >= 1)

    @property
    def model_size(self) -> tuple[int, int]:
        return self.roi.model_size

    def metadata(self) -> dict:
        """Typed attributes for the output EXRs (written under `lorafx/`)."""
        md = {f"roi/{k}": v for k, v in self.roi.as_dict().items()}
        md.update(self.clip_stats.as_metadata())
        md["colour/config"] = self.colour.config
        md["colour/plate_space"] = self.colour.plate_space
        md["colour/model_space"] = self.colour.model_space
        md["mask_mode"] = self.mask_mode
        return md


# ---------------------------------------------------------------------------------------------
# Loading


def pick_matte_channel(channels: Sequence[str], requested: str | None = None) -> str:
    """The matte rule: `requested` if given (must exist), else A, else Y, else the first."""
    if requested:
        return channels[find_channels(channels, (requested,), what="matte")[0]]
    for name in ("A", "Y"):
        if name in channels:
            return name
    return channels[0]


def _size(w: Window) -> str:
    return f"{w.width}x{w.height}"


def _check_same_resolution(what: str, path: str, got: Window, plate: PlateSequence) -> None:
    if got != plate.display_window:
        raise InvalidInput(
            f"{what} {path} is {_size(got)} (display window {got}) but the plate "
            f"{plate.spec.pattern} is {_size(plate.display_window)} (display window "
            f"{plate.display_window})", path=path,
            size=[got.width, got.height],
            plate_size=[plate.display_window.width, plate.display_window.height])


def load_shot_inputs(
    plate_pattern: str,
    matte_pattern: str | np.ndarray,
    first: int,
    last: int,
    colour: ColourSettings | None = None,
    *,
    matte_channel: str | None = None,
    references: Mapping[int, str | os.PathLike] | None = None,
    reference_space: str | None = None,
    matte_floor: float = 1.0 / 1024.0,
) -> ShotInputs:
    """Read and validate a shot.

    `matte_pattern` is a sequence pattern, or an already-made (F, H, W) matte on the plate's
    data window (e.g. from SAM2). `references` maps frame numbers to edited frames (the
    compositor's painted first frame...); they are read, checked against the plate's resolution
    and converted from `reference_space` (default: the plate's space) into the plate's space;
    where a reference has no pixels (e.g. a PNG without the plate's overscan) the plate's own
    frame fills in. Matte values below `matte_floor` are set to 0: the numerical dust a blur
    leaves across a whole frame would otherwise stretch the ROI to the full plate (and such an
    alpha changes no half-float pixel visibly); the composite is bit-exact wherever the stored
    matte is 0."""
    colour = colour or ColourSettings()
    transform = ColourTransform(colour)  # validates the colour names before any reading
    plate = read_sequence(plate_pattern, first, last)
    rgb_index = find_channels(plate.channels, ("R", "G", "B"), what=plate_pattern)
    for i, number in enumerate(plate.frame_numbers):
        check_finite(plate.pixels[i][..., rgb_index], f"plate {plate.frames[i].path}",
                     channels=[plate.channels[c] for c in rgb_index],
                     origin=(plate.data_window.x, plate.data_window.y))
    F, H, W = plate.pixels.shape[:3]

    if isinstance(matte_pattern, np.ndarray):
        matte = np.asarray(matte_pattern, dtype=np.float32)
        if matte.shape != (F, H, W):
            raise InvalidInput(
                f"matte array has shape {matte.shape} but the plate is {F} frames of {W}x{H}")
        channel = "array"
        check_finite(matte, "matte", frame_numbers=plate.frame_numbers)
        matte = np.clip(matte, 0.0, 1.0)
    else:
        # Roto renders are often auto-cropped: each frame is placed onto the plate's window.
        mseq = read_sequence(matte_pattern, first, last, data_window=plate.data_window)
        _check_same_resolution("matte", mseq.frames[0].path, mseq.display_window, plate)
        channel = pick_matte_channel(mseq.channels, matte_channel)
        c = mseq.channels.index(channel)
        matte = np.empty((F, H, W), dtype=np.float32)
        for i, fr in enumerate(mseq.frames):
            check_finite(fr.pixels[..., c], f"matte {fr.path} channel {channel}",
                         origin=(fr.data_window.x, fr.data_window.y))
            matte[i] = np.clip(fr.pixels[..., c], 0.0, 1.0)
        del mseq

    if matte_floor > 0:
        matte[matte < matte_floor] = 0.0
    binary_any = [bool(binarize(m).any()) for m in matte]
    if not any(binary_any):
        raise InvalidInput(
            f"the matte is empty over frames {first}-{last} (no pixel >= 0.5; max "
            f"{float(matte.max()):.4g}): nothing to edit", first=first, last=last)
    # "Full" is judged on the visible image (data window within the display window): a matte
    # white over the whole picture is full even if the plate's overscan around it is not.
    dw, disp = plate.data_window, plate.display_window
    vx0, vx1 = max(disp.x, dw.x) - dw.x, min(disp.x_end, dw.x_end) - dw.x
    vy0, vy1 = max(disp.y, dw.y) - dw.y, min(disp.y_end, dw.y_end) - dw.y
    visible = matte[:, vy0:vy1, vx0:vx1] if (vx1 > vx0 and vy1 > vy0) else matte
    if all(bool(binarize(m).all()) for m in visible):
        raise InvalidInput(
            f"the matte covers the whole frame on every frame {first}-{last}: nothing would be "
            "kept from the plate; use a matte of the region to change", first=first, last=last)

    refs: dict[int, np.ndarray] = {}
    for number, path in (references or {}).items():
        if number not in plate.frame_numbers:
            raise InvalidInput(f"reference frame {number} ({path}) is outside the shot "
                               f"{first}-{last}", frame=number)
        fr = read_frame(path)
        _check_same_resolution(f"reference frame {number}", fr.path, fr.display_window, plate)
        rgb = fr.pixels[..., fr.rgb_indices()]
        check_finite(rgb, f"reference frame {number} {fr.path}",
                     origin=(fr.data_window.x, fr.data_window.y))
        if reference_space:
            rgb = transform.to_plate(rgb, reference_space)
        # An edit exported without the plate's overscan: the plate fills what it lacks.
        placed = plate.pixels[plate.index_of(number)][..., rgb_index].copy()
        if fr.data_window == plate.data_window:
            placed[:] = rgb
        else:
            inside = conform_to_window(np.ones(rgb.shape[:2], bool), fr.data_window,
                                       plate.data_window, fill=False)
            placed[inside] = conform_to_window(rgb, fr.data_window, plate.data_window)[inside]
        refs[number] = placed
    return ShotInputs(plate=plate, matte=matte, matte_channel=channel, references=refs,
                      colour=colour)


# ---------------------------------------------------------------------------------------------
# Model space and back


def to_model_space(
    inputs: ShotInputs,
    frames: Sequence[int] | None = None,
    *,
    roi: Roi | None = None,
    mask_mode: str = "tight",
    context: float = 0.25,
    min_context: int = 32,
    model_sizes: tuple[tuple[int, int], ...] = (LANDSCAPE, PORTRAIT),
    mask_threshold: float = 0.5,
) -> ModelWindow:
    """Crop, convert and resize a window (`frames`: frame numbers, default the whole shot).

    The ROI comes from the union of the window's matte (see `roi.compute_roi`) unless given.
    Per frame: crop the ROI (plate space), convert to the model space (clip or shaper, the clip
    statistics measured inside the matte), resize to the model resolution (bicubic,
    antialiased), clamp to [0, 1]. The matte is resized with area + `mask_threshold`, then
    `mask_mode` ("tight" | "bbox" | "dilate:N") derives the training region at model resolution
    (where the reference applies its 50 px^2 rule); keep = 1 - region."""
    numbers = list(frames) if frames is not None else list(inputs.frame_numbers)
    if not numbers:
        raise InvalidInput("to_model_space: no frames in the window")
    idx = [inputs.plate.index_of(n) for n in numbers]
    matte = inputs.matte[idx]
    H, W = matte.shape[1:]
    if roi is None:
        roi = compute_roi(matte, (W, H), context=context, min_context=min_context,
                          model_sizes=model_sizes)
    transform = ColourTransform(inputs.colour)
    rgb_index = inputs.rgb_index
    mw, mh = roi.model_size
    out = np.empty((len(idx), mh, mw, 3), dtype=np.float32)
    stats = ClipStats(mode=inputs.colour.highlight_mode)
    for k, i in enumerate(idx):  # per frame: a 4K ROI is never held for the whole window
        plate_crop = crop(inputs.plate.pixels[i:i + 1], roi)[0][..., rgb_index]
        matte_crop = crop(matte[k:k + 1], roi)[0]
        model, st = transform.to_model(plate_crop, matte=matte_crop)
        stats = stats.merge(st)
        out[k] = resize(model[None], roi.model_size)[0]
    np.clip(out, 0.0, 1.0, out=out)  # bicubic overshoot

    matte_model = resize_mask(matte, roi, threshold=mask_threshold)
    region = derive_training_mask(matte_model, mask_mode)
    keep = (1.0 - region).astype(np.float32)

    refs = {}
    for number, rgb in inputs.references.items():
        if number not in numbers:
            continue
        model, _ = transform.to_model(crop(rgb[None], roi)[0])
        refs[number] = np.clip(resize(model[None], roi.model_size)[0], 0.0, 1.0)
    cap = max(stats.plate_max, 1.0) if np.isfinite(stats.plate_max) else 1.0
    return ModelWindow(frame_numbers=numbers, frames=out, keep=keep, matte=matte_model,
                       references=refs, roi=roi, colour=inputs.colour, clip_stats=stats,
                       mask_mode=mask_mode, return_cap=float(cap))


def from_model_space(rendered: np.ndarray, window: ModelWindow) -> np.ndarray:
    """Model-space frames (F, h, w, 3) in [0, 1] -> plate-space ROI pixels (F, roi_h, roi_w, 3):
    resized back to the ROI (bicubic) and converted to the plate's colour space. In shaper mode
    highlights decode up to `window.return_cap` (the brightest plate value in the ROI, at least
    1.0): the model cannot ask for more than the plate had."""
    r = np.asarray(rendered, dtype=np.float32)
    mw, mh = window.model_size
    if r.ndim != 4 or r.shape[1:] != (mh, mw, 3) or r.shape[0] != len(window.frame_numbers):
        raise InvalidInput(
            f"rendered frames have shape {r.shape}; the window needs "
            f"({len(window.frame_numbers)}, {mh}, {mw}, 3)")
    check_finite(r, "rendered frames", frame_numbers=window.frame_numbers)
    transform = ColourTransform(window.colour)
    out = np.empty((r.shape[0], window.roi.height, window.roi.width, 3), dtype=np.float32)
    for k in range(r.shape[0]):
        back = np.clip(uncrop_resize(r[k:k + 1], window.roi)[0], 0.0, 1.0)
        out[k] = transform.from_model(back, max_value=window.return_cap)
    return out


def composite_window(inputs: ShotInputs, window: ModelWindow, rendered: np.ndarray,
                     feather_px: float = 0.0) -> list[Frame]:
    """Full-resolution output frames of a window: `from_model_space` + `composite` through the
    plate's own full-resolution matte (inward feather of `feather_px`)."""
    roi_pixels = from_model_space(rendered, window)
    frames = []
    for k, number in enumerate(window.frame_numbers):
        i = inputs.plate.index_of(number)
        alpha = feathered_alpha(inputs.matte[i], feather_px)
        frames.append(composite_frame(inputs.plate.frames[i], roi_pixels[k], window.roi,
                                      inputs.matte[i], alpha=alpha))
    return frames


def write_result_sequence(frames: Sequence[Frame], pattern: str, frame_numbers: Sequence[int],
                          metadata: Mapping | None = None, compression: str = "zip",
                          pixel_type: str | Sequence[str] | None = None) -> list[str]:
    """Write composited frames with the plate's windows, channels and attributes (timecode,
    frame rate...) plus `metadata` under `lorafx/`, each file atomically.

    `pixel_type` None keeps each channel's own EXR type when the plate was half/float (so the
    untouched pixels are bit-identical on disk) and writes half otherwise (8/16-bit plates);
    "half" forces half everywhere (a float plate is then rounded)."""
    if len(frames) != len(frame_numbers):
        raise InvalidInput(f"{len(frames)} frames but {len(frame_numbers)} frame numbers")
    paths = []
    for number, fr in zip(frame_numbers, frames):
        md = dict(metadata or {})
        md.setdefault("frame", int(number))
        types = pixel_type
        if types is None:
            own = list(fr.channel_types) or [fr.pixel_type] * len(fr.channels)
            types = own if all(t in ("half", "float") for t in own) else "half"
        paths.append(write_exr_atomic(
            sequence_path(pattern, number), fr.pixels, fr.channels, fr.data_window,
            fr.display_window, md, compression=compression, pixel_type=types,
            source_attributes=fr.attributes, source_attribute_types=fr.attribute_types))
    return paths


# ---------------------------------------------------------------------------------------------
# Mattes from clicks (SAM2 runs on display-referred frames of the whole plate)


def display_frames(plate: PlateSequence, colour: ColourSettings | None = None,
                   max_width: int = 1024) -> np.ndarray:
    """The whole plate (data window) as display-referred RGB in [0, 1], shrunk to at most
    `max_width` wide (aspect kept): what SAM2 or a preview looks at when there is no matte yet.
    Clip mode regardless of `colour.highlight_mode` (masks only need to see the picture)."""
    colour = colour or ColourSettings()
    transform = ColourTransform(ColourSettings(config=colour.config,
                                               plate_space=colour.plate_space,
                                               model_space=colour.model_space))
    rgb_index = find_channels(plate.channels, ("R", "G", "B"), what=plate.spec.pattern)
    F, H, W = plate.pixels.shape[:3]
    scale = min(1.0, max_width / W)
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    out = np.empty((F, size[1], size[0], 3), dtype=np.float32)
    for i in range(F):
        model, _ = transform.to_model(plate.pixels[i][..., rgb_index])
        out[i] = np.clip(resize(model[None], size)[0], 0.0, 1.0)
    return out


def masks_to_plate(masks: np.ndarray, plate: PlateSequence) -> np.ndarray:
    """Masks (F, h, w) made on `display_frames` output -> a matte (F, H, W) float32 {0, 1} on the
    plate's data window (bilinear upsampling of the binary mask, then >= 0.5: smooth edges
    instead of nearest-neighbour stairs), ready for `load_shot_inputs(plate, matte_array, ...)`."""
    import torch
    import torch.nn.functional as tF

    m = np.asarray(masks, dtype=np.float32)
    F, H, W = plate.pixels.shape[:3]
    if m.ndim != 3 or m.shape[0] != F:
        raise InvalidInput(f"masks have shape {m.shape}; the plate has {F} frames")
    out = np.empty((F, H, W), dtype=np.float32)
    for i in range(F):
        up = tF.interpolate(torch.from_numpy(m[i][None, None]), size=(H, W), mode="bilinear",
                            align_corners=False)
        out[i] = (up[0, 0].numpy() >= 0.5)
    return out


# ---------------------------------------------------------------------------------------------
# Contact sheet


def _as_rgb(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise InvalidInput(f"contact sheet: images must be (H, W) or (H, W, C), got {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def make_contact_sheet(rows: list[list[np.ndarray]], labels: Sequence | None, path: str | os.PathLike,
                       cell_height: int | None = None, gap: int = 8, label_height: int = 28) -> str:
    """Write a PNG grid of display-referred images in [0, 1] (e.g. source / edited first frame /
    result, one row per frame), through OIIO. Every cell is scaled to `cell_height` (default: the
    first image's height), keeping its aspect. `labels`: one string per column, or one list of
    strings per row (per cell), or None."""
    if not rows or not any(rows):
        raise InvalidInput("contact sheet: no images")
    imgs = [[_as_rgb(im) for im in row] for row in rows]
    ch = int(cell_height or imgs[0][0].shape[0])

    def scaled(im):
        h, w = im.shape[:2]
        nw = max(1, int(round(w * ch / h)))
        if (h, w) == (ch, nw):
            return im
        buf = oiio.ImageBufAlgo.resize(oiio.ImageBuf(im), roi=oiio.ROI(0, nw, 0, ch, 0, 1, 0, 3))
        return buf.get_pixels(oiio.FLOAT)

    cells = [[scaled(im) for im in row] for row in imgs]
    if labels is None:
        cell_labels = [[""] * len(row) for row in cells]
    elif all(isinstance(l, str) for l in labels):
        cell_labels = [[labels[j] if j < len(labels) else "" for j in range(len(row))]
                       for row in cells]
    else:
        cell_labels = [list(l) + [""] * (len(row) - len(l)) for l, row in zip(labels, cells)]
    lh = label_height if any(any(r) for r in cell_labels) else 0
    row_w = [sum(c.shape[1] for c in row) + gap * (len(row) + 1) for row in cells]
    W = max(row_w)
    H = len(cells) * (ch + lh) + gap * (len(cells) + 1)
    sheet = np.full((H, W, 3), 0.12, dtype=np.float32)
    y = gap
    for row, row_labels in zip(cells, cell_labels):
        x = gap
        for cell in row:
            sheet[y + lh:y + lh + ch, x:x + cell.shape[1]] = np.clip(cell, 0.0, 1.0)
            x += cell.shape[1] + gap
        y += ch + lh + gap
    buf = oiio.ImageBuf(sheet)
    if lh:
        y = gap
        for row, row_labels in zip(cells, cell_labels):
            x = gap
            for cell, text in zip(row, row_labels):
                if text:
                    oiio.ImageBufAlgo.render_text(buf, x + 4, y + lh - 8, str(text),
                                                  int(lh * 0.6), "", (1.0, 1.0, 1.0))
                x += cell.shape[1] + gap
            y += ch + lh + gap
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not buf.write(path, "uint8"):
        raise InvalidInput(f"cannot write contact sheet {path}: {buf.geterror()}")
    return path
