"""The region of interest: the part of the plate the model sees.

Rule (one ROI for every frame of a window, so the crop never moves):
1. bbox  = bounding box of the union over the window's frames of the matte's nonzero pixels;
2. pad   = each side grows by max(`context` x the bbox's width (x) / height (y), `min_context` px);
3. shape = the model aspect of the matching orientation, landscape 832x480 or portrait 480x832.
   By default the box is never smaller than the model resolution when the plate is large enough
   (`never_upscale`): the model sees plate pixels 1:1 or downscaled, not interpolated ones.
   Between the two orientations: the one whose box fits inside the plate, then the one giving
   more model pixels per plate pixel (capped at 1:1 with `never_upscale`), then the padded
   bbox's orientation (wider/taller by more than 10%), else the plate's orientation;
4. fit   = centred on the bbox, then shifted to lie inside the plate. When the padded box is
   larger than the plate, the context shrinks first (the largest box of the model aspect that
   fits the plate, still covering the bbox); when even the bare bbox at the model aspect does
   not fit, the box keeps the model aspect and extends past the plate edge, and `crop_resize`
   fills the outside by repeating the edge pixels (those pixels are never composited).

Coordinates are array indices into the plate's data window (x to the right, y down), integer,
end-exclusive.

Resampling: images use bicubic with antialiasing when shrinking (torch `interpolate(...,
antialias=True)`), bicubic when enlarging. Masks use area averaging (the exact coverage of each
target pixel) then a threshold (default 0.5, so the masked area is preserved on average) when
shrinking, and nearest when enlarging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lorafx.errors import InvalidInput

__all__ = [
    "LANDSCAPE",
    "PORTRAIT",
    "Roi",
    "matte_bbox",
    "compute_roi",
    "crop",
    "resize",
    "crop_resize",
    "uncrop_resize",
    "resize_mask",
]

LANDSCAPE = (832, 480)
PORTRAIT = (480, 832)


@dataclass(frozen=True)
class Roi:
    """An integer box [x0, x1) x [y0, y1) in data-window array coordinates, and the model
    resolution (W, H) it is resized to. The box may extend past the plate (see module doc)."""

    x0: int
    y0: int
    x1: int
    y1: int
    model_size: tuple[int, int] = LANDSCAPE

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    @property
    def scale(self) -> float:
        """Model pixels per plate pixel (< 1: the plate is downscaled)."""
        return self.model_size[0] / self.width

    def inside(self, plate_w: int, plate_h: int) -> bool:
        return self.x0 >= 0 and self.y0 >= 0 and self.x1 <= plate_w and self.y1 <= plate_h

    def as_dict(self) -> dict:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1,
                "model_width": self.model_size[0], "model_height": self.model_size[1]}

    def __str__(self) -> str:
        return (f"{self.width}x{self.height} at ({self.x0},{self.y0}) -> "
                f"{self.model_size[0]}x{self.model_size[1]}")


def matte_bbox(matte: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the nonzero pixels of a (H, W) or (F, H, W) matte (union over
    frames), end-exclusive; None when the matte is empty."""
    m = np.asarray(matte)
    if m.ndim == 3:
        m = (m > 0).any(axis=0)
    elif m.ndim == 2:
        m = m > 0
    else:
        raise InvalidInput(f"matte must be (H, W) or (F, H, W), got shape {np.shape(matte)}")
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _aspect_box(w: float, h: float, aspect: float) -> tuple[float, float]:
    """The smallest box of `aspect` (W/H) containing a w x h box."""
    return (w, w / aspect) if w / h >= aspect else (h * aspect, h)


def _place(lo: float, hi: float, size: int, limit: int) -> int:
    """Start of a `size` interval centred on [lo, hi), shifted into [0, limit) when it fits."""
    start = int(math.floor((lo + hi) / 2.0 - size / 2.0 + 0.5))
    if size <= limit:
        start = min(max(start, 0), limit - size)
    return start


def _box_for(bbox, plate_w, plate_h, model_size, context, min_context, never_upscale):
    x0, y0, x1, y1 = bbox
    bw, bh = x1 - x0, y1 - y0
    aspect = model_size[0] / model_size[1]
    pad_x = max(context * bw, min_context)
    pad_y = max(context * bh, min_context)
    want_w, want_h = _aspect_box(bw + 2 * pad_x, bh + 2 * pad_y, aspect)
    if never_upscale:
        want_w, want_h = max(want_w, model_size[0]), max(want_h, model_size[1])
    fit_w = min(plate_w, plate_h * aspect)  # the largest box of this aspect inside the plate
    need_w, _ = _aspect_box(bw, bh, aspect)  # the bare bbox at this aspect
    if want_w <= fit_w:
        w = want_w
    elif need_w <= fit_w:
        w = fit_w
    else:
        w = need_w  # extends past the plate; crop_resize pads
    w = int(math.ceil(w - 1e-6))
    h = int(round(w / aspect))
    if w <= plate_w and h > plate_h and need_w <= fit_w:
        h = plate_h  # rounding must not push a fitting box out of the plate
    h = max(h, bh)
    w = max(w, bw)
    bx = _place(x0, x1, w, plate_w)
    by = _place(y0, y1, h, plate_h)
    # The box must cover the bbox even after being shifted into the plate.
    bx = min(bx, x0) if bx + w >= x1 else x1 - w
    by = min(by, y0) if by + h >= y1 else y1 - h
    return Roi(bx, by, bx + w, by + h, tuple(model_size))


def compute_roi(
    matte: np.ndarray,
    plate_size: tuple[int, int] | None = None,
    context: float = 0.25,
    min_context: int = 32,
    model_sizes: tuple[tuple[int, int], ...] = (LANDSCAPE, PORTRAIT),
    never_upscale: bool = True,
) -> Roi:
    """The ROI for a window: `matte` is (F, H, W) (or (H, W) for one frame) in plate
    data-window coordinates; `plate_size` (W, H) defaults to the matte's size."""
    m = np.asarray(matte)
    if plate_size is None:
        plate_size = (m.shape[-1], m.shape[-2])
    plate_w, plate_h = plate_size
    bbox = matte_bbox(m)
    if bbox is None:
        raise InvalidInput("the matte is empty over the whole window: nothing to edit")
    x0, y0, x1, y1 = bbox
    ratio = (x1 - x0 + 2 * max(context * (x1 - x0), min_context)) / (
        y1 - y0 + 2 * max(context * (y1 - y0), min_context))
    # A clearly wide/tall matte picks its orientation; a squarish one follows the plate.
    prefer_landscape = ratio > 1.1 or (ratio >= 1 / 1.1 and plate_w >= plate_h)
    candidates = []
    for size in model_sizes:
        roi = _box_for(bbox, plate_w, plate_h, size, context, min_context, never_upscale)
        # Detail: model pixels per plate pixel; enlarging adds none when never_upscale is set.
        detail = min(roi.scale, 1.0) if never_upscale else roi.scale
        candidates.append((roi.inside(plate_w, plate_h), detail,
                           (size[0] >= size[1]) == prefer_landscape, roi))

    def better(a, b) -> bool:
        """Is candidate a better than b: inside the plate, then more detail (2% counts as a
        tie: box sizes are rounded to whole pixels), then the preferred orientation."""
        if a[0] != b[0]:
            return a[0]
        if abs(a[1] - b[1]) > 0.02 * max(a[1], b[1]):
            return a[1] > b[1]
        return a[2] and not b[2]

    best = candidates[0]
    for c in candidates[1:]:
        if better(c, best):
            best = c
    return best[3]


# ---------------------------------------------------------------------------------------------
# Cropping and resampling


def crop(frames: np.ndarray, roi: Roi) -> np.ndarray:
    """Cut the ROI out of stacked frames (F, H, W, C) or masks (F, H, W). Parts of the ROI
    outside the plate repeat the nearest edge pixel. Inside the plate this is a view."""
    a = np.asarray(frames)
    if a.ndim not in (3, 4):
        raise InvalidInput(f"crop expects (F, H, W, C) or (F, H, W), got shape {a.shape}")
    H, W = a.shape[1], a.shape[2]
    if roi.inside(W, H):
        return a[:, roi.y0:roi.y1, roi.x0:roi.x1]
    ys = np.clip(np.arange(roi.y0, roi.y1), 0, H - 1)
    xs = np.clip(np.arange(roi.x0, roi.x1), 0, W - 1)
    return a[:, ys][:, :, xs]


def _resize_nchw(x: torch.Tensor, size_hw: tuple[int, int], kind: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    if (h, w) == tuple(size_hw):
        return x
    shrinking = size_hw[0] < h or size_hw[1] < w
    if kind == "image":
        return F.interpolate(x, size=size_hw, mode="bicubic", align_corners=False,
                             antialias=shrinking)
    if shrinking:
        return F.interpolate(x, size=size_hw, mode="area")
    return F.interpolate(x, size=size_hw, mode="nearest-exact")


def _to_nchw(a: np.ndarray) -> tuple[torch.Tensor, tuple]:
    """(F, H, W, C) -> (F, C, H, W) float32 tensor; (F, H, W) -> (F, 1, H, W)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if t.ndim == 3:
        return t.unsqueeze(1), ("mask",)
    if t.ndim == 4:
        return t.permute(0, 3, 1, 2), ("image",)
    raise InvalidInput(f"expected (F, H, W, C) or (F, H, W) frames, got shape {a.shape}")


def _from_nchw(t: torch.Tensor, layout) -> np.ndarray:
    if layout == ("mask",):
        return t[:, 0].contiguous().numpy()
    return t.permute(0, 2, 3, 1).contiguous().numpy()


def _batched(a: np.ndarray, fn, batch: int = 8) -> np.ndarray:
    """Apply `fn` to chunks of frames: a 49-frame 4K crop is not converted to one huge tensor."""
    return np.concatenate([fn(a[i:i + batch]) for i in range(0, a.shape[0], batch)], axis=0)


def resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (F, H, W, C) frames to `size` (W, H): bicubic, antialiased when shrinking."""
    a = np.asarray(frames)
    if a.ndim != 4:
        raise InvalidInput(f"resize expects (F, H, W, C) frames, got shape {a.shape}")

    def run(chunk):
        t, layout = _to_nchw(chunk)
        return _from_nchw(_resize_nchw(t, (size[1], size[0]), "image"), layout)

    return _batched(a, run)


def crop_resize(frames: np.ndarray, roi: Roi, size: tuple[int, int] | None = None) -> np.ndarray:
    """Crop the ROI from (F, H, W, C) frames and resize it to `size` (W, H), default the ROI's
    model size. Bicubic, antialiased when shrinking. float32 out (bicubic can overshoot the
    input range slightly: clamp in the caller if the range matters)."""
    size = tuple(size or roi.model_size)
    a = np.asarray(frames)
    if a.ndim != 4:
        raise InvalidInput(f"crop_resize expects (F, H, W, C) frames, got shape {a.shape}")
    return _batched(a, lambda chunk: resize(crop(chunk, roi), size))


def uncrop_resize(frames: np.ndarray, roi: Roi) -> np.ndarray:
    """Resize model-resolution (F, h, w, C) frames back to the ROI's size (F, roi_h, roi_w, C)."""
    a = np.asarray(frames)
    if a.ndim != 4:
        raise InvalidInput(f"uncrop_resize expects (F, H, W, C) frames, got shape {a.shape}")
    return resize(a, roi.size)


def resize_mask(masks: np.ndarray, roi: Roi, size: tuple[int, int] | None = None,
                threshold: float = 0.5) -> np.ndarray:
    """Crop the ROI from (F, H, W) masks and resize to `size` (W, H): area average then
    `>= threshold` when shrinking, nearest when enlarging. Returns float32 {0, 1}."""
    size = tuple(size or roi.model_size)
    a = np.asarray(masks)
    if a.ndim != 3:
        raise InvalidInput(f"resize_mask expects (F, H, W) masks, got shape {a.shape}")

    def run(chunk):
        t, layout = _to_nchw(crop(chunk, roi))
        return _from_nchw(_resize_nchw(t, (size[1], size[0]), "mask"), layout)

    out = _batched(a, run)
    return (out >= threshold).astype(np.float32)
