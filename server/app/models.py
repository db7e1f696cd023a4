"""Opening the resident model for `lorafx serve`: a local Wan2.1-I2V directory, the embedded
miniature-world model, or a tiny random stack (tests)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lorafx.errors import InvalidInput
from lorafx.server.method.stack import WanStack, apply_low_memory, build_tiny_stack, load_stack
from lorafx.server.method.trainer import TrainSettings

from .service import ModelInfo

# optional beside model_index.json: resolution, window_frames, train_defaults (the model's
# recommended training settings, under the shot's and the job's own)
MODEL_INFO_FILE = "lorafx_model.json"
WAN_480P = ModelInfo(name="Wan2.1-I2V-14B-480P", resolution=(832, 480), window_frames=49)
TINY = ModelInfo(name="tiny-random", resolution=(112, 64), window_frames=17)


def _info_for(path: Path, default: ModelInfo) -> ModelInfo:
    f = path / MODEL_INFO_FILE
    if not f.is_file():
        return ModelInfo(name=path.name or default.name, resolution=default.resolution,
                         window_frames=default.window_frames)
    d = json.loads(f.read_text())
    w, h = d.get("resolution", default.resolution)
    train_defaults = dict(d.get("train_defaults") or {})
    try:
        TrainSettings.from_dict(train_defaults)  # a bad one fails at start-up, not in the first job
    except InvalidInput as e:
        raise InvalidInput(f"{f}: train_defaults: {e.message}", path=str(f), **e.details) from e
    return ModelInfo(name=d.get("name", path.name), resolution=(int(w), int(h)),
                     window_frames=int(d.get("window_frames", default.window_frames)),
                     train_defaults=train_defaults)


def open_model(model: str = "auto", *, device: str | None = None, fp8: bool = False,
               group_offload: bool = False) -> tuple[WanStack, ModelInfo]:
    """`model`: "auto" (the embedded miniworld model when its weights are installed, else tiny),
    "mini", "tiny", or a path to a local Wan2.1-I2V diffusers directory."""
    from lorafx.server.miniworld import model as mini

    if model == "auto":
        model = "mini" if mini.has_weights() else "tiny"
    if model == "tiny":
        stack, info = build_tiny_stack(seed=0, device=device or "cpu"), TINY
    elif model == "mini":
        if not mini.has_weights():
            raise InvalidInput("the miniworld weights are not installed in this lorafx "
                               f"({mini.default_model_dir()}); use --model tiny or a Wan directory")
        stack = mini.load_miniworld(device=device or "cpu", dtype=torch.float32)
        info = _info_for(mini.default_model_dir(), ModelInfo("miniworld", (64, 64), 17))
    else:
        path = Path(model).expanduser()
        stack = load_stack(path, device=device)
        info = _info_for(path, WAN_480P)
    apply_low_memory(stack, fp8_storage=fp8, group_offload=group_offload)
    return stack, info
