"""Matte operations, per frame, on numpy arrays.

Convention here: a matte / mask is **1 = the region to change** (a compositor's roto matte).
The method's keep mask is its complement (`to_keep`). Inputs may be (H, W) or (F, H, W); every
operation works frame by frame (no union over time). Soft mattes are binarised at 0.5 where a
binary region is needed (`binarize`).

`derive_training_mask` turns a tight matte into the region the model is trained to generate:
- "bbox" (the LoRA-Edit reference, and the method's recommendation: loose masks beat tight
  ones): per frame, one rectangle per external contour (8-connected component; a component
  inside another's hole lies inside that component's rectangle anyway), grown by 10% of its
  width / height on each side (clamped to the frame); components whose own bounding box covers
  under 50 px^2 are dropped (speckle from propagation);
- "dilate:N": the matte grown by a Euclidean disc of radius N px;
- "tight": the matte itself, binarised.
Frame 1 of a window is conditioned on the (edited) first frame in full: its keep mask is forced
all-keep by the caller (`to_keep(..., first_frame_keep=True)`), not here.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lorafx.errors import InvalidInput

__all__ = [
    "binarize",
    "bbox_mask",
    "dilate",
    "feather",
    "tight",
    "noisy",
    "derive_training_mask",
    "to_keep",
    "parse_mask_mode",
]

BBOX_GROW = 0.10
BBOX_MIN_AREA = 50
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _frames(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    m = np.asarray(mask)
    if m.ndim == 2:
        return m[None], True
    if m.ndim == 3:
        return m, False
    raise InvalidInput(f"mask must be (H, W) or (F, H, W), got shape {m.shape}")


def _out(stack: np.ndarray, single: bool) -> np.ndarray:
    return stack[0] if single else stack


def binarize(mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """bool mask: value >= threshold."""
    return np.asarray(mask) >= threshold


def tight(mask: np.ndarray) -> np.ndarray:
    """The matte itself, binarised at 0.5, float32 {0, 1}."""
    return binarize(mask).astype(np.float32)


def bbox_mask(mask: np.ndarray, grow: float = BBOX_GROW, min_area: int = BBOX_MIN_AREA) -> np.ndarray:
    """The reference rule (see module doc): per frame, a filled rectangle per connected
    component, grown by `grow` x its size on each side; components with a bounding box under
    `min_area` px^2 dropped. float32 {0, 1}, same shape as `mask`."""
    stack, single = _frames(mask)
    out = np.zeros(stack.shape, dtype=np.float32)
    H, W = stack.shape[1:]
    for i, frame in enumerate(stack):
        labels, n = ndimage.label(binarize(frame), structure=_EIGHT_CONNECTED)
        if n == 0:
            continue
        for sl in ndimage.find_objects(labels):
            ys, xs = sl
            h, w = ys.stop - ys.start, xs.stop - xs.start
            if w * h < min_area:
                continue
            gx, gy = int(round(grow * w)), int(round(grow * h))
            out[i, max(ys.start - gy, 0):min(ys.stop + gy, H),
                max(xs.start - gx, 0):min(xs.stop + gx, W)] = 1.0
    return _out(out, single)


def dilate(mask: np.ndarray, n: int) -> np.ndarray:
    """Grow the binarised matte by a Euclidean disc of radius `n` px, per frame. float32."""
    if n < 0:
        raise InvalidInput(f"dilate radius must be >= 0, got {n}")
    stack, single = _frames(mask)
    b = binarize(stack)
    if n == 0:
        return _out(b.astype(np.float32), single)
    out = np.empty(stack.shape, dtype=np.float32)
    for i, frame in enumerate(b):
        if not frame.any():
            out[i] = 0.0
            continue
        # Distance to the nearest matte pixel; within n -> inside the dilated matte.
        out[i] = ndimage.distance_transform_edt(~frame) <= n
    return _out(out, single)


def feather(mask: np.ndarray, px: float) -> np.ndarray:
    """Inward feather: alpha = matte x ramp(d / px), where d is each pixel's Euclidean distance
    to the nearest pixel *outside* the matte (matte == 0) and ramp is a smoothstep from 0 to 1.

    The transition lies entirely inside the matte: wherever the matte is 0 the alpha is exactly
    0, and pixels at least `px` inside the edge keep the matte's own value. The frame border is
    not an edge (a matte touching it stays solid there). `px` = 0 returns the matte. float32."""
    if px < 0:
        raise InvalidInput(f"feather width must be >= 0, got {px}")
    stack, single = _frames(mask)
    m = np.clip(stack.astype(np.float32), 0.0, 1.0)
    if px == 0:
        return _out(m, single)
    out = np.empty_like(m)
    for i, frame in enumerate(m):
        inside = frame > 0
        if not inside.any():
            out[i] = 0.0
            continue
        if inside.all():
            out[i] = frame
            continue
        # Only the matte's bbox + a 1 px ring matters: every pixel beyond is outside (alpha 0)
        # and the ring holds a nearer outside pixel than anything farther. Keeps 4K frames fast.
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        y0, y1 = max(rows[0] - 1, 0), min(rows[-1] + 2, frame.shape[0])
        x0, x1 = max(cols[0] - 1, 0), min(cols[-1] + 2, frame.shape[1])
        d = ndimage.distance_transform_edt(inside[y0:y1, x0:x1])  # 0 outside, >= 1 inside
        t = np.clip(d / float(px), 0.0, 1.0)
        out[i] = 0.0
        out[i, y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (t * t * (3.0 - 2.0 * t))
    return _out(out, single)


def noisy(mask: np.ndarray, seed: int, amount: float) -> np.ndarray:
    """A matte whose boundary is randomly pushed in and out by up to about `amount` px (a
    smooth random field added to the signed distance to the edge), for the quality harness'
    robustness-to-bad-roto runs. Deterministic for a seed. float32 {0, 1}."""
    if amount < 0:
        raise InvalidInput(f"noise amount must be >= 0, got {amount}")
    stack, single = _frames(mask)
    b = binarize(stack)
    if amount == 0:
        return _out(b.astype(np.float32), single)
    rng = np.random.default_rng(seed)
    out = np.empty(stack.shape, dtype=np.float32)
    sigma = max(2.0, 2.0 * amount)  # wobble wavelength grows with its amplitude
    for i, frame in enumerate(b):
        if not frame.any() or frame.all():
            out[i] = frame
            continue
        signed = ndimage.distance_transform_edt(frame) - ndimage.distance_transform_edt(~frame)
        field = ndimage.gaussian_filter(rng.standard_normal(frame.shape), sigma)
        field /= np.abs(field).max() + 1e-12
        out[i] = (signed + amount * field) > 0
    return _out(out, single)


def parse_mask_mode(mode: str) -> tuple[str, int]:
    """"bbox" | "tight" | "dilate:N" -> (kind, N)."""
    if mode in ("bbox", "tight"):
        return mode, 0
    if isinstance(mode, str) and mode.startswith("dilate:"):
        try:
            n = int(mode.split(":", 1)[1])
        except ValueError:
            n = -1
        if n >= 0:
            return "dilate", n
    raise InvalidInput(f"mask mode must be 'bbox', 'tight' or 'dilate:N' (N >= 0 px), got {mode!r}",
                       mode=mode)


def derive_training_mask(matte_frames: np.ndarray, mode: str = "bbox") -> np.ndarray:
    """The region to generate (1 = change) per frame, float32, from a tight matte; see the
    module doc for the modes. Frame 1's all-keep rule is the caller's (see `to_keep`)."""
    kind, n = parse_mask_mode(mode)
    if kind == "bbox":
        return bbox_mask(matte_frames)
    if kind == "dilate":
        return dilate(matte_frames, n)
    return tight(matte_frames)


def to_keep(change: np.ndarray, first_frame_keep: bool = True) -> np.ndarray:
    """The method's keep mask (1 = keep) from a change region (F, H, W): 1 - change, with
    frame 1 forced all-keep when `first_frame_keep` (the edited first frame conditions in full)."""
    c = np.asarray(change, dtype=np.float32)
    if c.ndim != 3:
        raise InvalidInput(f"change masks must be (F, H, W), got shape {c.shape}")
    keep = 1.0 - np.clip(c, 0.0, 1.0)
    if first_frame_keep and keep.shape[0]:
        keep[0] = 1.0
    return keep
