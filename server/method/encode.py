"""Encoders around the resident stack: VAE latents, text embeddings, CLIP image embeddings.

Each is computed once per shot and cached (see trainer.ShotTensors), so a training step runs only
the transformer.
"""

from __future__ import annotations

import numpy as np
import torch

from .conditioning import ConditionSet, fold_mask
from .stack import TEXT_TOKENS, WanStack

# Wan's default negative prompt (the reference samples with it; translated tokens kept verbatim).
WAN_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, "
    "static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, "
    "extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, "
    "fused fingers, still picture, messy background, three legs, many people in the background, "
    "walking backwards"
)
DEFAULT_TRIGGER = "p3rs0n,"


def _latent_stats(stack: WanStack, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = stack.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
    inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
    return mean, inv_std


@torch.no_grad()
def encode_video(stack: WanStack, video: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] (or [F, 3, H, W]) in [-1, 1] -> normalised latents [B, 16, T, h, w] (float32).

    The latent distribution's mode (argmax), normalised `(z - mean) / std`, exactly as diffusers
    builds the I2V condition."""
    if video.ndim == 4:
        video = video.permute(1, 0, 2, 3)[None]
    vae_device = next(stack.vae.parameters()).device
    z = stack.vae.encode(video.to(vae_device, torch.float32)).latent_dist.mode()
    z = z.to(stack.device, torch.float32)
    mean, inv_std = _latent_stats(stack, z)
    return (z - mean) * inv_std


@torch.no_grad()
def decode_latents(stack: WanStack, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents [B, 16, T, h, w] -> video [B, 3, F, H, W] in [-1, 1] (float32)."""
    vae_device = next(stack.vae.parameters()).device
    latents = latents.to(vae_device, torch.float32)
    mean, inv_std = _latent_stats(stack, latents)
    video = stack.vae.decode(latents / inv_std + mean, return_dict=False)[0]
    return video.clamp(-1, 1)


@torch.no_grad()
def encode_prompt(stack: WanStack, texts: list[str] | str) -> torch.Tensor:
    """Text -> [B, 512, D] umT5 embeddings, zero-padded to exactly 512 tokens as Wan was trained."""
    if isinstance(texts, str):
        texts = [texts]
    embeds = stack.pipe._get_t5_prompt_embeds(prompt=texts, max_sequence_length=TEXT_TOKENS,
                                              device=stack.device, dtype=stack.dtype)
    return embeds


@torch.no_grad()
def encode_image(stack: WanStack, image: torch.Tensor) -> torch.Tensor | None:
    """[3, H, W] or [B, 3, H, W] in [-1, 1] -> CLIP penultimate hidden states [B, N, D].

    Returns None when the transformer has no image branch (Wan T2V-style configs)."""
    if stack.transformer.config.image_dim is None or stack.image_encoder is None:
        return None
    if image.ndim == 3:
        image = image[None]
    # The processor takes [0, 1] images; hand it HWC float arrays so both its PIL and torch
    # back ends resize/normalise identically, without a second 8-bit quantisation.
    arrays = [((im.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy() for im in image]
    inputs = stack.image_processor(images=[np.ascontiguousarray(a) for a in arrays],
                                   return_tensors="pt", do_rescale=False)
    enc_device = next(stack.image_encoder.parameters()).device
    pixel_values = inputs["pixel_values"].to(enc_device, next(stack.image_encoder.parameters()).dtype)
    out = stack.image_encoder(pixel_values=pixel_values, output_hidden_states=True)
    return out.hidden_states[-2].to(stack.device, stack.dtype)


@torch.no_grad()
def encode_condition(stack: WanStack, cond: ConditionSet, mask_mode: str = "nearest") -> torch.Tensor:
    """A ConditionSet -> the 20 condition channels [1, 4 + 16, T, h, w] (mask | condition latents)."""
    latents = encode_video(stack, cond.v_cond)
    h, w = latents.shape[-2:]
    mask4 = fold_mask(cond.m_cond.to(latents.device), (h, w), mode=mask_mode).to(latents.dtype)
    return torch.cat([mask4, latents], dim=1)


def compose_prompt(caption: str, trigger: str = DEFAULT_TRIGGER) -> str:
    """`[p*] + caption`: the trigger string ties the LoRA to this shot."""
    caption = (caption or "").strip()
    return f"{trigger} {caption}".strip() if trigger else caption
