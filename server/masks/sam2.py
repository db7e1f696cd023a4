"""Tight per-frame masks from clicks, by SAM2 video propagation.

Clicks (positive / negative points, x y in the frames' pixel coordinates) on one frame of a
window; SAM2 tracks the object forward to the last frame and, when the clicks are not on the
first frame, backward to the first. The result per frame is `logit > 0` (1 = the object = the
region to change, the matte convention of `ops`), at the frames' own resolution.

SAM2 is optional and imported lazily. CPU install that keeps the CPU torch (a plain
`pip install sam2` pulls a CUDA torch + torchvision; the video predictor needs neither):
    SAM2_BUILD_CUDA=0 pip install --no-build-isolation --no-deps sam2
    pip install hydra-core iopath tqdm pillow
Without the compiled `_C` extension SAM2 warns and skips hole filling; masks are still produced.

`init_state` only reads a directory of `<int>.jpg` frames: the frames given here (display-
referred [0, 1] RGB, e.g. a ModelWindow's frames) are written to a temporary directory as
quality-95 JPEGs and removed afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import warnings
from typing import Sequence

import numpy as np
import OpenImageIO as oiio

from lorafx.errors import InvalidInput, NotFound

__all__ = ["propagate_masks", "matte_from_clicks", "load_predictor", "DEFAULT_CONFIG",
           "INSTALL_HINT"]

DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
INSTALL_HINT = ("SAM2_BUILD_CUDA=0 pip install --no-build-isolation --no-deps sam2 && "
                "pip install hydra-core iopath tqdm pillow")


def _import_sam2():
    try:
        from sam2.build_sam import build_sam2_video_predictor
    except ImportError as exc:
        raise InvalidInput(
            f"SAM2 is not installed ({exc}); mask propagation from clicks needs it. CPU install: "
            f"{INSTALL_HINT}") from None
    return build_sam2_video_predictor


@functools.lru_cache(maxsize=2)
def _cached_predictor(config: str, checkpoint_path: str | None, image_size: int, device: str):
    build = _import_sam2()
    overrides = [f"++model.image_size={int(image_size)}"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
        predictor = build(config, ckpt_path=checkpoint_path, device=device,
                          hydra_overrides_extra=overrides)
    if str(device).startswith("cpu"):
        _keep_memory_float32(predictor)
    return predictor


def _keep_memory_float32(predictor) -> None:
    """SAM2 stores memory features in bfloat16 while the CPU path computes in float32; a
    bf16/fp32 mismatch in reverse propagation was recorded on this stack (FACTS.md). Storing the
    memory as float32 removes the mixed dtypes altogether (with torch 2.13 the mismatch did not
    reproduce in our runs; the cast costs only memory and keeps older torch builds working)."""
    import torch

    run_frame = predictor._run_single_frame_inference
    run_encoder = predictor._run_memory_encoder

    def run_single_frame_inference(*args, **kwargs):
        out, masks = run_frame(*args, **kwargs)
        if out.get("maskmem_features") is not None:
            out["maskmem_features"] = out["maskmem_features"].to(torch.float32)
        return out, masks

    def run_memory_encoder(*args, **kwargs):
        features, pos = run_encoder(*args, **kwargs)
        return features.to(torch.float32), pos

    predictor._run_single_frame_inference = run_single_frame_inference
    predictor._run_memory_encoder = run_memory_encoder


def load_predictor(checkpoint_path: str | os.PathLike | None, config: str = DEFAULT_CONFIG,
                   image_size: int = 1024, device: str = "cpu", random_weights_ok: bool = False):
    """The SAM2 video predictor (cached: building one takes seconds).

    `checkpoint_path` is the real route (a `sam2.1_hiera_*.pt` file matching `config`); a
    missing file raises NotFound. None builds **random weights** and is refused unless
    `random_weights_ok` (tests only: the masks are meaningless)."""
    if checkpoint_path is None:
        if not random_weights_ok:
            raise InvalidInput("no SAM2 checkpoint given (checkpoint_path=None would build random "
                               "weights); pass the sam2.1 checkpoint file matching the config")
        ckpt = None
    else:
        ckpt = os.path.abspath(os.fspath(checkpoint_path))
        if not os.path.isfile(ckpt):
            raise NotFound(f"SAM2 checkpoint {ckpt} does not exist", path=ckpt)
    _import_sam2()
    try:
        return _cached_predictor(config, ckpt, int(image_size), str(device))
    except InvalidInput:
        raise
    except Exception as exc:  # hydra / torch.load / state-dict errors: name what was loaded
        raise InvalidInput(
            f"cannot build SAM2 from config {config!r} and checkpoint {ckpt or '(random)'}: "
            f"{type(exc).__name__}: {exc}", config=config, path=ckpt) from None


def _write_jpegs(frames: np.ndarray, directory: str) -> None:
    for i, frame in enumerate(frames):
        rgb = np.ascontiguousarray(np.clip(frame[..., :3], 0.0, 1.0), dtype=np.float32)
        path = os.path.join(directory, f"{i}.jpg")
        out = oiio.ImageOutput.create(path)
        spec = oiio.ImageSpec(rgb.shape[1], rgb.shape[0], 3, "uint8")
        spec.attribute("Compression", "jpeg:95")
        if out is None or not out.open(path, spec) or not out.write_image(rgb) or not out.close():
            raise InvalidInput(f"cannot write SAM2 input frame {path}: {oiio.geterror()}")


def propagate_masks(
    frames: np.ndarray,
    points: Sequence[Sequence[float]],
    labels: Sequence[int],
    frame_index: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    config: str = DEFAULT_CONFIG,
    image_size: int = 1024,
    device: str = "cpu",
    *,
    random_weights_ok: bool = False,
) -> np.ndarray:
    """Tight masks (F, H, W) bool for `frames` (F, H, W, 3) display-referred RGB in [0, 1]
    (float) or uint8, from clicks on frame `frame_index` (0-based in `frames`).

    `points` (N, 2) are (x, y) pixel coordinates of that frame; `labels` (N,) are 1 for a
    positive click (on the object) and 0 for a negative one."""
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] < 3:
        raise InvalidInput(f"SAM2 frames must be (F, H, W, 3), got shape {f.shape}")
    if f.dtype == np.uint8:
        f = f.astype(np.float32) / 255.0
    F, H, W = f.shape[:3]
    if not 0 <= frame_index < F:
        raise InvalidInput(f"click frame index {frame_index} is outside the {F} frames given")
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    lbl = np.asarray(labels, dtype=np.int32).reshape(-1)
    if pts.shape[0] == 0 or pts.shape[0] != lbl.shape[0]:
        raise InvalidInput(f"SAM2 needs at least one click and one label per click; got "
                           f"{pts.shape[0]} points and {lbl.shape[0]} labels")
    if not np.isin(lbl, (0, 1)).all():
        raise InvalidInput(f"click labels must be 1 (positive) or 0 (negative), got {lbl.tolist()}")
    if (lbl == 1).sum() == 0:
        raise InvalidInput("SAM2 needs at least one positive click on the object")
    off = (pts[:, 0] < 0) | (pts[:, 0] >= W) | (pts[:, 1] < 0) | (pts[:, 1] >= H)
    if off.any():
        raise InvalidInput(f"clicks {pts[off].tolist()} lie outside the {W}x{H} frame")

    predictor = load_predictor(checkpoint_path, config, image_size, device, random_weights_ok)
    import torch

    masks = np.zeros((F, H, W), dtype=bool)
    seen = np.zeros(F, dtype=bool)
    with tempfile.TemporaryDirectory(prefix="lorafx-sam2-") as tmp, torch.inference_mode():
        _write_jpegs(f, tmp)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                    if str(device).startswith("cuda") else contextlib.nullcontext())
        with autocast, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
            state = predictor.init_state(video_path=tmp)
            predictor.add_new_points_or_box(state, frame_idx=int(frame_index), obj_id=1,
                                            points=pts, labels=lbl)
            for reverse in (False, True):
                if reverse and frame_index == 0:
                    break
                for idx, _obj_ids, logits in predictor.propagate_in_video(
                        state, start_frame_idx=int(frame_index), reverse=reverse):
                    masks[idx] = (logits[0, 0] > 0.0).cpu().numpy()
                    seen[idx] = True
            predictor.reset_state(state)
    if not seen.all():
        raise InvalidInput(f"SAM2 produced no mask for frames {np.flatnonzero(~seen).tolist()}")
    return masks


def matte_from_clicks(
    plate,
    frame_number: int,
    points: Sequence[Sequence[float]],
    labels: Sequence[int],
    *,
    colour=None,
    checkpoint_path: str | os.PathLike | None = None,
    config: str = DEFAULT_CONFIG,
    image_size: int = 1024,
    device: str = "cpu",
    max_width: int = 1024,
    random_weights_ok: bool = False,
) -> np.ndarray:
    """A matte (F, H, W) float32 {0, 1} on the plate's data window, from clicks on one frame.

    `plate` is a `media.io.PlateSequence`; `points` are (x, y) in the plate's image coordinates
    (OIIO convention: x right, y down, the display window's origin at its top-left; a y-up host
    such as Nuke flips y first). The plate goes to display-referred frames at most `max_width`
    wide (`media.plate.display_frames`), SAM2 propagates, and the masks are scaled back up
    (`media.plate.masks_to_plate`): ready for `load_shot_inputs(plate_pattern, matte, ...)`."""
    from lorafx.server.media.plate import display_frames, masks_to_plate

    frames = display_frames(plate, colour, max_width=max_width)
    H, W = plate.pixels.shape[1:3]
    sx, sy = frames.shape[2] / W, frames.shape[1] / H
    dw = plate.data_window
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    # Image coordinates -> data-window pixel index -> the shrunk frames' pixel (centres aligned).
    scaled = np.stack([(pts[:, 0] - dw.x + 0.5) * sx - 0.5, (pts[:, 1] - dw.y + 0.5) * sy - 0.5], 1)
    outside = (pts[:, 0] < dw.x) | (pts[:, 0] >= dw.x_end) | (pts[:, 1] < dw.y) | (pts[:, 1] >= dw.y_end)
    if outside.any():
        raise InvalidInput(f"clicks {pts[outside].tolist()} lie outside the plate's data window {dw}")
    scaled = np.clip(scaled, 0.0, [frames.shape[2] - 1, frames.shape[1] - 1])
    masks = propagate_masks(frames, scaled, labels, plate.index_of(frame_number),
                            checkpoint_path, config, image_size, device,
                            random_weights_ok=random_weights_ok)
    return masks_to_plate(masks, plate)
