"""Condition builders for LoRA-Edit (DESIGN.md §1): what the model is shown (V_cond, M_cond) and
what it must produce (V_target), for each training/inference configuration.

Conventions, everywhere in lorafx:
- videos are float tensors [F, 3, H, W] in [-1, 1];
- masks are *keep* masks [F, H, W]: 1 = keep (preserve from the condition), 0 = generate.
  A compositor's roto matte is the opposite: ``keep = 1 - matte``.
- "empty" condition pixels are 0 in [-1, 1] space (Wan's I2V placeholder frames are zeros).

Pure tensor code: no files, no sockets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lorafx.errors import InvalidInput

CONFIGS = ("i2v", "none", "all", "masked", "appearance")
MASK_DOWNSAMPLE_MODES = ("nearest", "minpool")
VAE_TEMPORAL = 4  # Wan's VAE packs 4 pixel frames per latent frame (after the first)


@dataclass
class ConditionSet:
    """One training sample or one render's condition, at pixel level."""

    config: str
    v_cond: torch.Tensor  # [F, 3, H, W] in [-1, 1], empty pixels 0
    m_cond: torch.Tensor  # [F, H, W] float {0, 1}, 1 = keep
    v_target: torch.Tensor | None  # [F, 3, H, W] in [-1, 1] (None at inference)

    @property
    def num_frames(self) -> int:
        return self.v_cond.shape[0]


# ----------------------------------------------------------------------------- validation


def check_frame_count(num_frames: int, what: str = "shot window") -> None:
    """Wan's VAE needs F = 4k+1 frames; diffusers would silently change other counts."""
    if num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL != 0:
        lower = (num_frames - 1) // VAE_TEMPORAL * VAE_TEMPORAL + 1
        raise InvalidInput(
            f"{what} has {num_frames} frames; Wan needs 4k+1 frames "
            f"(e.g. {max(lower, 1)} or {lower + VAE_TEMPORAL}): trim or pad the range",
            num_frames=num_frames,
        )


def check_video(video: torch.Tensor, what: str) -> None:
    if not isinstance(video, torch.Tensor):
        raise InvalidInput(f"{what} must be a torch.Tensor, got {type(video).__name__}")
    if video.ndim != 4 or video.shape[1] != 3:
        raise InvalidInput(f"{what} must be [F, 3, H, W], got shape {tuple(video.shape)}")
    _check_spatial(video.shape[-2], video.shape[-1], what)
    check_finite(video, what)


def check_image(image: torch.Tensor, what: str, expected_hw: tuple[int, int]) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InvalidInput(f"{what} must be [3, H, W], got {shape}")
    if tuple(image.shape[-2:]) != tuple(expected_hw):
        raise InvalidInput(
            f"{what} is {image.shape[-1]}x{image.shape[-2]} but the source frames are "
            f"{expected_hw[1]}x{expected_hw[0]}",
            got=list(image.shape[-2:]), expected=list(expected_hw),
        )
    check_finite(image, what)


def check_finite(x: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        first = [int(i) for i in bad.nonzero()[0].tolist()]
        raise InvalidInput(
            f"{what} contains {int(bad.sum())} NaN/inf values (first at index {first})",
            count=int(bad.sum()), first_index=first,
        )


def _check_spatial(h: int, w: int, what: str) -> None:
    if h % 16 or w % 16:
        raise InvalidInput(f"{what} is {w}x{h}; Wan needs width and height divisible by 16")


def check_keep_mask(keep: torch.Tensor, video: torch.Tensor, what: str = "keep mask") -> None:
    if not isinstance(keep, torch.Tensor) or keep.ndim != 3:
        shape = tuple(keep.shape) if isinstance(keep, torch.Tensor) else type(keep).__name__
        raise InvalidInput(f"{what} must be [F, H, W], got {shape}")
    if keep.shape[0] != video.shape[0]:
        raise InvalidInput(
            f"{what} has {keep.shape[0]} frames but the source has {video.shape[0]}",
            mask_frames=keep.shape[0], source_frames=video.shape[0],
        )
    if tuple(keep.shape[1:]) != tuple(video.shape[2:]):
        raise InvalidInput(
            f"{what} is {keep.shape[2]}x{keep.shape[1]} but the source frames are "
            f"{video.shape[3]}x{video.shape[2]}"
        )
    check_finite(keep, what)


def binarize_keep(keep: torch.Tensor) -> torch.Tensor:
    """Soft (feathered) keep masks are thresholded at 0.5: the condition is binary by design."""
    return (keep >= 0.5).to(torch.float32)


def _check_edit_has_both(keep_later: torch.Tensor) -> None:
    """A masked edit needs something to keep and something to generate after frame 1."""
    if keep_later.numel() == 0:
        return
    if bool((keep_later >= 0.5).all()):
        raise InvalidInput(
            "the matte is empty over frames 2..F: there is no region to edit "
            "(check the matte's channel and frame range)"
        )
    if bool((keep_later < 0.5).all()):
        raise InvalidInput(
            "the matte covers every pixel of frames 2..F: nothing would be preserved; "
            "use the 'i2v' configuration for a full-frame regeneration"
        )


# ----------------------------------------------------------------------------- builders


def build_condition(
    config: str,
    source: torch.Tensor,
    keep: torch.Tensor | None = None,
    *,
    edited_first: torch.Tensor | None = None,
    painted: torch.Tensor | None = None,
    frame_index: int | None = None,
    pinned: dict[int, torch.Tensor] | None = None,
) -> ConditionSet:
    """Build (V_cond, M_cond, V_target) for one configuration (DESIGN.md §1 table).

    source        [F, 3, H, W] in [-1, 1]: the plate window.
    keep          [F, H, W] keep mask (1 = keep); needed by `masked` and `appearance`.
    edited_first  [3, H, W]: replaces frame 1 of the condition (inference); V_target stays the
                  source (training never uses the edited frame as a target).
    painted       [3, H, W]: the painted frame k (`appearance` only; its V_target).
    frame_index   k, the source frame the painted frame corresponds to (`appearance` only).
    pinned        {index: frame [3, H, W]} whole frames to keep as given (mask all keep), used to
                  chain long shots: a later window is pinned to the last rendered frames.
    """
    if config not in CONFIGS:
        raise InvalidInput(f"unknown configuration {config!r}; choose one of {', '.join(CONFIGS)}")
    check_video(source, "source video")
    num_frames, _, height, width = source.shape
    source = source.to(torch.float32)
    if keep is not None:
        check_keep_mask(keep, source)
        keep = binarize_keep(keep.to(torch.float32))

    if config == "appearance":
        return _build_appearance(source, keep, painted, frame_index)

    check_frame_count(num_frames)
    first = source[0]
    if edited_first is not None:
        check_image(edited_first, "edited first frame", (height, width))
        first = edited_first.to(torch.float32)

    zeros_video = torch.zeros_like(source)
    if config == "i2v":
        v_cond = zeros_video.clone()
        v_cond[0] = first
        m_cond = torch.zeros(num_frames, height, width)
        m_cond[0] = 1.0
    elif config == "none":
        v_cond = zeros_video
        m_cond = torch.zeros(num_frames, height, width)
    elif config == "all":
        v_cond = source.clone()
        v_cond[0] = first
        m_cond = torch.ones(num_frames, height, width)
    else:  # masked
        if keep is None:
            raise InvalidInput("the 'masked' configuration needs a keep mask (1 - roto matte)")
        _check_edit_has_both(keep[1:])
        m_cond = keep.clone()
        m_cond[0] = 1.0  # frame 1 is always given whole
        v_cond = source * m_cond[:, None]
        v_cond[0] = first

    if pinned:
        for index, frame in pinned.items():
            if not 0 <= index < num_frames:
                raise InvalidInput(f"pinned frame index {index} outside the window of {num_frames} frames")
            check_image(frame, f"pinned frame {index}", (height, width))
            v_cond[index] = frame.to(torch.float32)
            m_cond[index] = 1.0

    return ConditionSet(config=config, v_cond=v_cond, m_cond=m_cond, v_target=source)


def _build_appearance(source, keep, painted, frame_index) -> ConditionSet:
    """A 1-frame sample: source frame k with its edit region emptied -> the painted frame k."""
    num_frames, _, height, width = source.shape
    if keep is None or painted is None or frame_index is None:
        raise InvalidInput("the 'appearance' configuration needs keep, painted and frame_index")
    if not 0 <= frame_index < num_frames:
        raise InvalidInput(f"painted frame index {frame_index} outside the shot of {num_frames} frames")
    check_image(painted, f"painted frame {frame_index}", (height, width))
    k_keep = keep[frame_index]
    _check_edit_has_both(k_keep[None])
    v_cond = (source[frame_index] * k_keep[None])[None]
    return ConditionSet(
        config="appearance",
        v_cond=v_cond,
        m_cond=k_keep[None].clone(),
        v_target=painted.to(torch.float32)[None],
    )


# ----------------------------------------------------------------------------- latent mask


def downsample_keep(m_cond: torch.Tensor, latent_hw: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Pixel keep mask [B, F, H, W] -> latent-size keep mask [B, F, h, w] in {0, 1}.

    nearest: point-samples each latent cell (torch's nearest picks the cell's top-left pixel),
             then thresholds at 0.5 — what the reference implementation does.
    minpool: a cell is keep only if every pixel under it is keep (never lets the model copy a
             condition cell that is partly in the edit region).
    """
    if mode not in MASK_DOWNSAMPLE_MODES:
        raise InvalidInput(f"unknown mask downsampling {mode!r}; choose {' or '.join(MASK_DOWNSAMPLE_MODES)}")
    b, f, h_px, w_px = m_cond.shape
    h, w = latent_hw
    m = m_cond.to(torch.float32).reshape(b * f, 1, h_px, w_px)
    if mode == "nearest":
        m = F.interpolate(m, size=(h, w), mode="nearest")
        m = (m > 0.5).to(torch.float32)
    else:
        if h_px % h or w_px % w:
            raise InvalidInput(f"minpool needs {w_px}x{h_px} to be a multiple of the latent size {w}x{h}")
        m = (m >= 0.5).to(torch.float32)
        m = -F.max_pool2d(-m, kernel_size=(h_px // h, w_px // w))
    return m.reshape(b, f, h, w)


def fold_latent_mask(keep_latent: torch.Tensor) -> torch.Tensor:
    """Latent-size keep mask [B, F, h, w] -> Wan's mask channels [B, 4, (F+3)/4, h, w].

    Exactly diffusers' layout for the stock I2V mask: frame 1 repeated 4x (F+3 frames), regrouped
    into latent frames of 4 channels. Channel c of latent frame t >= 1 is pixel frame 4(t-1)+1+c.
    """
    b, f, h, w = keep_latent.shape
    check_frame_count(f, "mask")
    first = keep_latent[:, 0:1].repeat_interleave(VAE_TEMPORAL, dim=1)
    m = torch.cat([first, keep_latent[:, 1:]], dim=1)  # [B, F+3, h, w]
    m = m.view(b, -1, VAE_TEMPORAL, h, w)  # [B, T, 4, h, w]
    return m.transpose(1, 2).contiguous()  # [B, 4, T, h, w]


def fold_mask(m_cond: torch.Tensor, latent_hw: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Pixel keep mask [F, H, W] or [B, F, H, W] -> Wan's 4-channel latent mask [B, 4, T, h, w]."""
    if m_cond.ndim == 3:
        m_cond = m_cond[None]
    return fold_latent_mask(downsample_keep(m_cond, latent_hw, mode))


def latent_frame_keep(keep_latent: torch.Tensor) -> torch.Tensor:
    """Latent-size keep [B, F, h, w] -> one keep value per latent frame [B, 1, T, h, w].

    A latent frame is keep only where all its pixel frames are keep (the feature-blending baseline
    must not paste source latents over any frame that changes)."""
    folded = fold_latent_mask(keep_latent)  # [B, 4, T, h, w]
    return folded.amin(dim=1, keepdim=True)
