"""Mask-aware LoRA training (DESIGN.md §1): flow matching on the plate with a spatiotemporal keep
mask (motion stage), optionally continued on painted frames (appearance stage).

Everything a step needs except the transformer pass is computed once per shot (`prepare_samples`):
VAE latents of condition and target, the folded mask, text and CLIP embeddings.
Pure tensor code: checkpoints go out through a callback, never to files from here.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from lorafx.errors import Cancelled, InvalidInput
from lorafx.settings import typed

from .conditioning import CONFIGS, MASK_DOWNSAMPLE_MODES, build_condition, check_frame_count
from .encode import DEFAULT_TRIGGER, compose_prompt, encode_condition, encode_image, encode_prompt, encode_video
from .lora import LoraSpec, add_adapter, adapter_state_dict, load_adapter_state, trainable_parameters
from .stack import WanStack

ProgressFn = Callable[[str, int, int, float | None], None]  # (stage, step, total, loss)
StopFn = Callable[[], bool]


@dataclass
class TrainSettings:
    """The reference hyper-parameters are the defaults (DESIGN.md §1)."""

    config: str = "masked"
    steps: int = 100  # motion stage
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    include_image_kv: bool = False
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    trigger: str = DEFAULT_TRIGGER
    caption: str = ""
    painted_caption: str | None = None  # defaults to `caption`
    appearance_epochs: int = 10
    appearance_repeats: int = 9
    window: int | None = None  # temporal windows (App. C): e.g. 9 or 13 frames; None = whole clip
    window_stride: int | None = None  # default: window - 1 (consecutive clips share one frame)
    mask_downsample: str = "nearest"
    # lorafx extension (not in the paper): also train the motion stage on this many recoloured
    # copies of the plate (RGB channel permutations, then inverted ones). The plate's colours stop
    # being a constant the LoRA can memorise, so an edit's colours come from frame 1 instead of
    # leaking back from the plate. 0 = the paper's method.
    colour_augment: int = 0
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 25

    def __post_init__(self):
        self.betas = tuple(self.betas)
        self.validate()

    def validate(self) -> None:
        if self.config not in CONFIGS or self.config == "appearance":
            raise InvalidInput(f"unknown training configuration {self.config!r}; choose one of "
                               f"{', '.join(c for c in CONFIGS if c != 'appearance')}")
        if self.mask_downsample not in MASK_DOWNSAMPLE_MODES:
            raise InvalidInput(f"unknown mask_downsample {self.mask_downsample!r}")
        if not 0 <= self.colour_augment <= len(COLOUR_VARIANTS):
            raise InvalidInput(f"colour_augment must be in 0..{len(COLOUR_VARIANTS)}, got {self.colour_augment}")
        if self.steps < 0 or self.appearance_epochs < 0 or self.appearance_repeats < 0:
            raise InvalidInput("step, epoch and repeat counts must be >= 0")
        if self.rank < 1 or not self.alpha > 0:
            raise InvalidInput(f"LoRA rank must be >= 1 and alpha > 0, got rank {self.rank}, alpha {self.alpha}")
        if not 0 <= self.dropout < 1 or self.weight_decay < 0 or not self.grad_clip > 0:
            raise InvalidInput("dropout must lie in [0, 1), weight_decay be >= 0 and grad_clip > 0")
        if not all(0 <= b < 1 for b in self.betas) or self.checkpoint_every < 0:
            raise InvalidInput("betas must lie in [0, 1) and checkpoint_every be >= 0 (0: never)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidInput(f"learning rate must be positive, got {self.lr}")
        if self.window is not None:
            check_frame_count(self.window, "training window")
            stride = self.window_stride or self.window - 1
            if not 1 <= stride <= self.window:
                raise InvalidInput(f"window_stride must be in 1..{self.window}, got {stride}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainSettings":
        return cls(**typed(cls, dict(d or {}), "training setting"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    def lora_spec(self) -> LoraSpec:
        return LoraSpec(rank=self.rank, alpha=self.alpha, dropout=self.dropout,
                        include_image_kv=self.include_image_kv)


@dataclass
class TrainingSample:
    kind: str  # "motion" | "appearance"
    condition: torch.Tensor  # [1, 20, T, h, w]: mask (4) | condition latents (16)
    x0: torch.Tensor  # [1, 16, T, h, w] target latents
    text: torch.Tensor  # [1, 512, D]
    image: torch.Tensor | None  # [1, N, D] CLIP
    frames: tuple[int, int] = (0, 0)  # source frame range this sample covers (for logs)


@dataclass
class TrainState:
    """Everything needed to resume bit-for-bit: the step RNG is derived from (seed, step)."""

    step: int
    lora: dict[str, torch.Tensor]
    optimizer: dict | None
    stage: str


@dataclass
class TrainResult:
    steps: int
    final_loss: float | None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    lora: dict[str, torch.Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------------------- samples


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """Start frames of overlapping windows covering the clip; the last one ends on the last frame."""
    if window >= num_frames:
        return [0]
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


# The recoloured copies behind `colour_augment`: (channel order, inverted). Every copy keeps the
# plate's structure and motion exactly and changes only its colours.
COLOUR_VARIANTS = (((1, 2, 0), False), ((2, 0, 1), False), ((0, 2, 1), False), ((2, 1, 0), False),
                   ((1, 0, 2), False), ((0, 1, 2), True), ((1, 2, 0), True), ((2, 0, 1), True))


def recolour(video: torch.Tensor, variant: int) -> torch.Tensor:
    """Copy `variant` of COLOUR_VARIANTS of a [F, 3, H, W] video in [-1, 1]."""
    order, inverted = COLOUR_VARIANTS[variant]
    out = video[:, list(order)]
    return -out if inverted else out


@torch.no_grad()
def prepare_samples(stack: WanStack, source: torch.Tensor, keep: torch.Tensor | None,
                    settings: TrainSettings, painted: dict[int, torch.Tensor] | None = None,
                    on_progress: ProgressFn | None = None) -> tuple[list[TrainingSample], list[TrainingSample]]:
    """Encode once everything training will reuse. Returns (motion samples, appearance samples).

    source [F, 3, H, W] in [-1, 1]; keep [F, H, W] (1 = keep); painted {frame index: [3, H, W]}."""
    num_frames = source.shape[0]
    check_frame_count(num_frames)
    text = encode_prompt(stack, compose_prompt(settings.caption, settings.trigger))

    spans = [(0, num_frames)]
    if settings.window is not None:
        stride = settings.window_stride or settings.window - 1
        spans = [(s, s + settings.window) for s in window_starts(num_frames, settings.window, stride)]

    motion = []
    clips = [source] + [recolour(source, v) for v in range(settings.colour_augment)]
    jobs = [(clip, a, b) for a, b in spans for clip in clips]  # recoloured copies interleaved
    total = len(jobs) + len(painted or {})
    for i, (clip, a, b) in enumerate(jobs):
        win_keep = keep[a:b] if keep is not None else None
        cond = build_condition(settings.config, clip[a:b], win_keep)
        motion.append(TrainingSample(
            kind="motion",
            condition=encode_condition(stack, cond, settings.mask_downsample),
            x0=encode_video(stack, cond.v_target),
            text=text,
            image=encode_image(stack, clip[a]),  # CLIP of the window's first (source) frame
            frames=(a, b - 1)))
        if on_progress:
            on_progress("encode", i + 1, total, None)

    appearance = []
    if painted:
        if keep is None:
            raise InvalidInput("the appearance stage needs the keep mask")
        ptext = encode_prompt(stack, compose_prompt(settings.painted_caption or settings.caption, settings.trigger))
        for j, (k, frame) in enumerate(sorted(painted.items())):
            cond = build_condition("appearance", source, keep, painted=frame, frame_index=k)
            appearance.append(TrainingSample(
                kind="appearance",
                condition=encode_condition(stack, cond, settings.mask_downsample),
                x0=encode_video(stack, cond.v_target),
                text=ptext,
                image=encode_image(stack, source[k]),
                frames=(k, k)))
            if on_progress:
                on_progress("encode", len(jobs) + j + 1, total, None)
    return motion, appearance


def appearance_schedule(num_motion: int, num_painted: int, settings: TrainSettings) -> list[tuple[str, int]]:
    """The appearance stage's sample order: each epoch mixes one motion clip with every painted
    frame repeated `appearance_repeats` times (100 steps for one painted frame at the defaults)."""
    if num_painted == 0:
        return []
    order = []
    for epoch in range(settings.appearance_epochs):
        epoch_items = [("motion", epoch % max(num_motion, 1))]
        epoch_items += [("appearance", j) for j in range(num_painted) for _ in range(settings.appearance_repeats)]
        g = torch.Generator().manual_seed(settings.seed * 7919 + epoch)
        perm = torch.randperm(len(epoch_items), generator=g).tolist()
        order += [epoch_items[p] for p in perm]
    return order


# ----------------------------------------------------------------------------- training


def flow_matching_loss(transformer, sample: TrainingSample, generator: torch.Generator,
                       dtype: torch.dtype) -> torch.Tensor:
    """x_t = (1-t)·x0 + t·ε, t ~ U(0,1) (no shift in training), target ε - x0, plain MSE."""
    x0 = sample.x0
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
    t = torch.rand((x0.shape[0],), generator=generator, dtype=torch.float32).to(x0.device)
    tb = t.view(-1, 1, 1, 1, 1)
    x_t = (1 - tb) * x0 + tb * noise
    model_in = torch.cat([x_t, sample.condition], dim=1).to(dtype)
    autocast = dtype != torch.float32 and x0.device.type == "cuda"
    with torch.autocast(device_type=x0.device.type, dtype=dtype, enabled=autocast):
        pred = transformer(hidden_states=model_in, timestep=t * 1000.0,
                           encoder_hidden_states=sample.text.to(dtype),
                           encoder_hidden_states_image=None if sample.image is None else sample.image.to(dtype),
                           return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())


class LoraTrainer:
    """Trains one adapter on the resident transformer. Owns no files: `checkpoint_fn` receives a
    TrainState every `checkpoint_every` steps and at each stage end."""

    def __init__(self, stack: WanStack, adapter: str, settings: TrainSettings):
        self.stack = stack
        self.adapter = adapter
        self.settings = settings

    def _optimizer(self, params):
        s = self.settings
        return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)

    def train(self, motion: list[TrainingSample], appearance: list[TrainingSample] | None = None, *,
              on_progress: ProgressFn | None = None, should_stop: StopFn | None = None,
              checkpoint_fn: Callable[[TrainState], None] | None = None,
              resume: TrainState | None = None) -> TrainResult:
        s = self.settings
        appearance = appearance or []
        transformer = self.stack.transformer
        add_adapter(transformer, self.adapter, s.lora_spec())
        if s.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        params = trainable_parameters(transformer)
        plan = [("motion", i % len(motion)) for i in range(s.steps)] if motion else []
        plan += appearance_schedule(len(motion), len(appearance), s)
        total = len(plan)
        motion_steps = s.steps if motion else 0

        start = 0
        optimizer = self._optimizer(params)
        if resume is not None:
            load_adapter_state(transformer, self.adapter, resume.lora)
            start = resume.step
            if resume.optimizer is not None and (start < motion_steps) == (resume.stage == "motion"):
                optimizer.load_state_dict(resume.optimizer)
        if start >= motion_steps and start > 0:
            stage = "appearance"
            if resume is None or resume.stage != "appearance":
                optimizer = self._optimizer(params)
        else:
            stage = "motion"

        # Window order is shuffled per step from (seed, step) so a resumed run sees the same data.
        losses: list[float] = []
        t0 = time.perf_counter()
        transformer.train()
        try:
            for step in range(start, total):
                if should_stop and should_stop():
                    raise Cancelled(f"training cancelled at step {step} of {total}")
                kind, index = plan[step]
                if step == motion_steps and stage == "motion" and step > 0:
                    if checkpoint_fn:
                        checkpoint_fn(self._state(step, optimizer, "motion"))
                    stage, optimizer = "appearance", self._optimizer(params)  # fresh optimiser (§1)
                g = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
                if kind == "motion" and len(motion) > 1:
                    index = int(torch.randint(len(motion), (1,), generator=g))
                sample = motion[index] if kind == "motion" else appearance[index]
                loss = flow_matching_loss(transformer, sample, g, self.stack.dtype)
                if not torch.isfinite(loss):
                    raise InvalidInput(f"training diverged: loss is {loss.item()} at step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if s.grad_clip and s.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
                if on_progress:
                    on_progress(stage, step + 1, total, losses[-1])
                done = step + 1
                if checkpoint_fn and s.checkpoint_every and done % s.checkpoint_every == 0 and done < total:
                    checkpoint_fn(self._state(done, optimizer, stage))
        finally:
            transformer.eval()
            if s.gradient_checkpointing:
                transformer.disable_gradient_checkpointing()
            for p in params:
                p.requires_grad_(False)
        return TrainResult(steps=total, final_loss=losses[-1] if losses else None, losses=losses,
                           seconds=time.perf_counter() - t0,
                           lora=adapter_state_dict(transformer, self.adapter))

    def _state(self, step: int, optimizer, stage: str) -> TrainState:
        return TrainState(step=step, lora=adapter_state_dict(self.stack.transformer, self.adapter),
                          optimizer=optimizer.state_dict(), stage=stage)
