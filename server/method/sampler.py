"""Rendering: Wan's flow-matching sampler driven with lorafx's condition (DESIGN.md §1 Inference),
and the feature-level blending baseline (paper App. B.1) kept for comparison.

The denoising loop is written here rather than calling `WanImageToVideoPipeline.__call__` because
the pipeline has no argument for a custom condition/mask and no per-step latent blending; the
schedulers themselves are diffusers'.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from lorafx.errors import Cancelled, InvalidInput
from lorafx.settings import typed

from .conditioning import MASK_DOWNSAMPLE_MODES, build_condition, downsample_keep, latent_frame_keep
from .encode import (DEFAULT_TRIGGER, WAN_NEGATIVE_PROMPT, compose_prompt, decode_latents, encode_condition,
                     encode_image, encode_prompt, encode_video)
from .lora import activate
from .stack import WanStack

SAMPLERS = ("euler", "unipc")
RENDER_CONFIGS = ("masked", "i2v")
BASELINES = (None, "feature_blend")


@dataclass
class RenderSettings:
    config: str = "masked"  # the method; "i2v" = stock first-frame conditioning
    steps: int = 30
    shift: float = 5.0
    cfg: float = 5.0
    seed: int = 0
    sampler: str = "euler"
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    trigger: str = DEFAULT_TRIGGER
    caption: str = ""
    baseline: str | None = None  # "feature_blend": App. B.1, with config "i2v"
    mask_downsample: str = "nearest"

    def __post_init__(self):
        if self.config not in RENDER_CONFIGS:
            raise InvalidInput(f"unknown render configuration {self.config!r}; choose {' or '.join(RENDER_CONFIGS)}")
        if self.sampler not in SAMPLERS:
            raise InvalidInput(f"unknown sampler {self.sampler!r}; choose {' or '.join(SAMPLERS)}")
        if self.baseline not in BASELINES:
            raise InvalidInput(f"unknown baseline {self.baseline!r}; choose feature_blend or none")
        if self.mask_downsample not in MASK_DOWNSAMPLE_MODES:
            raise InvalidInput(f"unknown mask_downsample {self.mask_downsample!r}")
        if not 1 <= self.steps <= 1000:
            raise InvalidInput(f"steps must be in 1..1000, got {self.steps}")
        if self.cfg < 0 or self.shift <= 0:
            raise InvalidInput("cfg must be >= 0 and shift > 0")

    @classmethod
    def from_dict(cls, d: dict | None) -> "RenderSettings":
        return cls(**typed(cls, dict(d or {}), "render setting"))

    def to_dict(self) -> dict:
        return asdict(self)


def make_scheduler(settings: RenderSettings):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if settings.sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=settings.shift)
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   num_train_timesteps=1000, flow_shift=settings.shift)


@torch.no_grad()
def render(stack: WanStack, source: torch.Tensor, keep: torch.Tensor | None, edited_first: torch.Tensor,
           settings: RenderSettings, adapter: str | None = None, *,
           pinned: dict[int, torch.Tensor] | None = None,
           on_progress: Callable[[str, int, int, float | None], None] | None = None,
           should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Render one window. source [F, 3, H, W] and edited_first [3, H, W] in [-1, 1]; keep [F, H, W].

    Returns the decoded video [F, 3, H, W] in [-1, 1] (not composited: see media.composite)."""
    cond = build_condition(settings.config, source, keep if settings.config == "masked" else None,
                           edited_first=edited_first, pinned=pinned)
    if settings.baseline == "feature_blend" and keep is None:
        raise InvalidInput("the feature_blend baseline needs the keep mask")
    activate(stack, adapter)
    condition = encode_condition(stack, cond, settings.mask_downsample)  # [1, 20, T, h, w]
    prompt = compose_prompt(settings.caption, settings.trigger)
    use_cfg = settings.cfg > 1.0
    text = encode_prompt(stack, [prompt, settings.negative_prompt] if use_cfg else [prompt])
    image = encode_image(stack, cond.v_cond[0])  # CLIP of the edited first frame

    latent_shape = (1, 16) + tuple(condition.shape[2:])
    g = torch.Generator().manual_seed(int(settings.seed))
    latents = torch.randn(latent_shape, generator=g, dtype=torch.float32).to(stack.device)
    noise0 = latents.clone()

    blend_mask = src_latents = None
    if settings.baseline == "feature_blend":
        src_latents = encode_video(stack, source)
        keep_lat = downsample_keep(keep.to(torch.float32)[None], latents.shape[-2:], settings.mask_downsample)
        blend_mask = latent_frame_keep(keep_lat).to(stack.device)
        blend_mask[:, :, 0] = 0.0  # latent frame 0 is the edited first frame: never paste the source

    scheduler = make_scheduler(settings)
    scheduler.set_timesteps(int(settings.steps), device=stack.device)
    sigmas = scheduler.sigmas.to(torch.float32)
    dtype = stack.dtype
    image_in = None if image is None else image.expand(2 if use_cfg else 1, -1, -1).to(dtype)
    t0 = time.perf_counter()
    for i, t in enumerate(scheduler.timesteps):
        if should_stop and should_stop():
            raise Cancelled(f"render cancelled at step {i} of {settings.steps}")
        model_in = torch.cat([latents, condition], dim=1).to(dtype)
        if use_cfg:
            model_in = model_in.expand(2, -1, -1, -1, -1)
        timestep = t.expand(model_in.shape[0]).to(stack.device)
        pred = stack.transformer(hidden_states=model_in, timestep=timestep, encoder_hidden_states=text.to(dtype),
                                 encoder_hidden_states_image=image_in, return_dict=False)[0].float()
        if use_cfg:
            cond_pred, uncond_pred = pred.chunk(2)
            pred = uncond_pred + settings.cfg * (cond_pred - uncond_pred)
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        if blend_mask is not None:
            s_next = float(sigmas[i + 1])
            src_noised = (1 - s_next) * src_latents + s_next * noise0
            latents = latents * (1 - blend_mask) + src_noised * blend_mask
        if on_progress:
            on_progress("render", i + 1, int(settings.steps), None)
    video = decode_latents(stack, latents)[0].permute(1, 0, 2, 3)  # [F, 3, H, W]
    _ = time.perf_counter() - t0
    return video.to("cpu", torch.float32)
