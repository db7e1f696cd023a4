"""Demo shots: a plate EXR sequence + roto matte + edited first frame, written to disk the way a
compositor would hand them over (scene-linear half-float EXRs, frames 1001...).

- `miniworld_shot`: a held-out shot of the miniature world, with its ground-truth edit (the
  default of `lorafx demo`: generated in code, so a fresh clone needs nothing else);
- `image_sequence_shot`: any folder of images (e.g. ../shared/data/bedroom), with a rectangular
  roto and a recolour of that region as the edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorafx.errors import InvalidInput
from lorafx.server.media.colour import ColourSettings, ColourTransform
from lorafx.server.media.io import read_frame, write_exr_atomic

FIRST_FRAME = 1001


@dataclass
class DemoShot:
    name: str
    first: int
    last: int
    plate: str  # patterns with ####
    matte: str
    edited_first: str  # the edited first frame (plate colour space)
    caption: str
    display: list[np.ndarray]  # source frames, display-referred [0, 1] (for the contact sheet)
    ground_truth: np.ndarray | None = None  # (F, H, W, 3) display-referred, when known


def _linearise(display_rgb: np.ndarray) -> np.ndarray:
    """Display-referred sRGB [0, 1] -> the default plate space (scene-linear Rec.709) via OCIO."""
    t = ColourTransform(ColourSettings())
    return t.from_model(np.clip(display_rgb, 0, 1).astype(np.float32))


def _write_sequence(out: Path, stem: str, frames: np.ndarray, channels: list[str]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    for i, px in enumerate(frames):
        write_exr_atomic(out / f"{stem}.{FIRST_FRAME + i:04d}.exr", px, channels, metadata={"demo": stem})
    return str(out / f"{stem}.####.exr")


def miniworld_shot(out_dir: str | Path, index: int = 0, frames: int = 17, size: int = 64,
                   edit: str = "recolour", plate_scale: int = 2) -> DemoShot:
    from lorafx.server.miniworld.footage import heldout_shots

    shot = heldout_shots(index + 1, frames=frames, size=size, edit=edit)[index]
    out = Path(out_dir)
    source = np.stack([np.kron(f, np.ones((plate_scale, plate_scale, 1))) for f in shot.source]).astype(np.float32)
    edited = np.stack([np.kron(f, np.ones((plate_scale, plate_scale, 1))) for f in shot.edited]).astype(np.float32)
    matte = np.stack([np.kron(m, np.ones((plate_scale, plate_scale))) for m in shot.edit_matte]).astype(np.float32)
    plate = _write_sequence(out / "plate", "plate", _linearise(source), ["R", "G", "B"])
    matte_p = _write_sequence(out / "matte", "matte", matte[..., None], ["A"])
    edited_path = out / "edited" / f"edited.{FIRST_FRAME}.exr"
    edited_path.parent.mkdir(parents=True, exist_ok=True)
    write_exr_atomic(edited_path, _linearise(edited[0]), ["R", "G", "B"])
    return DemoShot(name=f"mini{shot.seed}", first=FIRST_FRAME, last=FIRST_FRAME + frames - 1, plate=plate,
                    matte=matte_p, edited_first=str(edited_path), caption=shot.edited_caption,
                    display=list(source), ground_truth=edited)


def image_sequence_shot(src_dir: str | Path, out_dir: str | Path, frames: int = 17,
                        box: tuple[float, float, float, float] = (0.35, 0.3, 0.65, 0.75),
                        hue_shift: float = 0.33, caption: str = "") -> DemoShot:
    """`frames` images of `src_dir` (sorted by name) -> plate EXRs; the roto is the relative box
    (x0, y0, x1, y1); the edit rotates the colours inside it."""
    src = sorted(p for p in Path(src_dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".exr",
                                                                            ".tif", ".tiff", ".dpx"))
    if len(src) < frames:
        raise InvalidInput(f"{src_dir} holds {len(src)} images; the demo needs {frames}")
    display = [np.clip(read_frame(p).pixels[..., :3], 0, 1).astype(np.float32) for p in src[:frames]]
    h, w = display[0].shape[:2]
    x0, y0, x1, y1 = int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)
    matte = np.zeros((frames, h, w, 1), np.float32)
    matte[:, y0:y1, x0:x1] = 1.0
    out = Path(out_dir)
    plate = _write_sequence(out / "plate", "plate", _linearise(np.stack(display)), ["R", "G", "B"])
    matte_p = _write_sequence(out / "matte", "matte", matte, ["A"])
    edited = display[0].copy()
    region = edited[y0:y1, x0:x1]
    shift = int(round(hue_shift * 3)) % 3 or 1
    edited[y0:y1, x0:x1] = np.roll(region, shift, axis=-1)  # a clear, exact recolour: rotate RGB
    edited_path = out / "edited" / f"edited.{FIRST_FRAME}.exr"
    edited_path.parent.mkdir(parents=True, exist_ok=True)
    write_exr_atomic(edited_path, _linearise(edited), ["R", "G", "B"])
    return DemoShot(name=Path(src_dir).name.replace(" ", "_")[:48] or "shot", first=FIRST_FRAME,
                    last=FIRST_FRAME + frames - 1, plate=plate, matte=matte_p, edited_first=str(edited_path),
                    caption=caption, display=display)
