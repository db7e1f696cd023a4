"""Put a rendered ROI back into the full-resolution plate.

The rule a compositor can rely on:
- alpha = the matte with an **inward** feather of `feather_px` (`lorafx.server.masks.ops.feather`):
  alpha = matte x smoothstep(d / feather_px), d = distance to the nearest pixel where the matte
  is 0. Wherever the original matte is 0, alpha is exactly 0; the soft edge lies inside the
  matte; pixels `feather_px` or more inside keep the matte's own value.
- out = alpha x rendered + (1 - alpha) x plate, on the plate's R, G, B, in the plate's colour
  space, **only where alpha > 0** (np.where): every other pixel, and every other channel (A,
  depth, AOVs), is the plate's value bit for bit, NaNs and negatives included.
- The data window, display window, channel order and attributes of the plate are kept.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from lorafx.errors import InvalidInput
from lorafx.server.masks.ops import feather
from lorafx.server.media.io import Frame, check_finite, find_channels
from lorafx.server.media.roi import Roi

__all__ = ["composite", "composite_frame", "feathered_alpha"]


def feathered_alpha(matte: np.ndarray, feather_px: float) -> np.ndarray:
    """The compositing alpha for a (H, W) matte (1 = change); see the module doc."""
    return feather(np.asarray(matte, dtype=np.float32), feather_px)


def composite(
    plate: np.ndarray,
    rendered_roi_pixels: np.ndarray,
    roi: Roi,
    matte: np.ndarray,
    feather_px: float = 0.0,
    channels: Sequence[str] | None = None,
    alpha: np.ndarray | None = None,
) -> np.ndarray:
    """Full-resolution (H, W, C) output for one frame.

    `plate` (H, W, C) float32 is the plate's data window; `rendered_roi_pixels` (roi.height,
    roi.width, 3) is the render already resized back to the ROI and converted to the plate's
    colour space; `matte` (H, W) is on the plate's data window. R, G, B are found by name in
    `channels` (default: the first three channels). A precomputed `alpha` skips the feather."""
    plate = np.asarray(plate)
    if plate.ndim != 3:
        raise InvalidInput(f"composite: plate must be (H, W, C), got shape {plate.shape}")
    H, W, C = plate.shape
    rgb = find_channels(channels, ("R", "G", "B"), what="plate") if channels else [0, 1, 2]
    if max(rgb) >= C:
        raise InvalidInput(f"composite: plate has {C} channels, needs R, G, B")
    rendered = np.asarray(rendered_roi_pixels, dtype=np.float32)
    if rendered.shape != (roi.height, roi.width, 3):
        raise InvalidInput(
            f"composite: rendered ROI is {rendered.shape[1]}x{rendered.shape[0]} "
            f"(shape {rendered.shape}) but the ROI is {roi.width}x{roi.height} RGB")
    if np.shape(matte) != (H, W):
        raise InvalidInput(f"composite: matte is {np.shape(matte)[1]}x{np.shape(matte)[0]} but "
                           f"the plate is {W}x{H}")
    a = feathered_alpha(matte, feather_px) if alpha is None else np.asarray(alpha, np.float32)

    # The overlap of the ROI and the plate; a ROI past the plate edge was padded for the model.
    x0, x1 = max(roi.x0, 0), min(roi.x1, W)
    y0, y1 = max(roi.y0, 0), min(roi.y1, H)
    a_roi = a[y0:y1, x0:x1] if (x1 > x0 and y1 > y0) else a[:0, :0]
    outside = np.count_nonzero(a) - np.count_nonzero(a_roi)
    if outside:
        raise InvalidInput(
            f"composite: {outside} matte pixels lie outside the ROI {roi}; the ROI must be "
            "computed from the same matte")
    out = plate.copy()
    if a_roi.size == 0 or not a_roi.any():
        return out
    r = rendered[y0 - roi.y0:y1 - roi.y0, x0 - roi.x0:x1 - roi.x0]
    inside = a_roi > 0
    check_finite(r[inside], "rendered pixels inside the matte")
    region = out[y0:y1, x0:x1]  # a view: writing it writes `out`
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN plate pixels at alpha 0
        for k, c in enumerate(rgb):
            p = region[..., c]
            # np.where selects the plate's own value wherever alpha == 0: never a blend result.
            region[..., c] = np.where(inside, a_roi * r[..., k] + (1.0 - a_roi) * p, p)
    return out


def composite_frame(frame: Frame, rendered_roi_pixels: np.ndarray, roi: Roi, matte: np.ndarray,
                    feather_px: float = 0.0, alpha: np.ndarray | None = None) -> Frame:
    """`composite` on a Frame: same windows, channels, pixel type and attributes."""
    pixels = composite(frame.pixels, rendered_roi_pixels, roi, matte, feather_px,
                       channels=frame.channels, alpha=alpha)
    return replace(frame, pixels=pixels, attributes=dict(frame.attributes),
                   attribute_types=dict(frame.attribute_types))
