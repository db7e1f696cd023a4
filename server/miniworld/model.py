"""The miniworld model: a tiny Wan2.1-I2V stack built from the *real* diffusers / transformers
classes, sized so it can be pretrained on one CPU thread in under an hour.

Components (all as in Wan2.1-I2V-14B-480P-Diffusers, scaled down):

* ``WanTransformer3DModel``: patch (1,2,2), 4 heads x 32, 4 layers, in 36 = 16 noisy + 4 mask +
  16 condition, out 16, ``image_dim`` and ``added_kv_proj_dim`` set so the image cross-attention
  branch runs; text is padded to exactly 512 tokens (the processor's image/text split assumes it).
* ``AutoencoderKLWan``: z_dim 16, 8x spatial / 4x temporal downsampling (dim_mult [1,2,4,4],
  temperal_downsample [False,True,True], as the real one), encoder base_dim 12, decoder 16.
* ``UMT5EncoderModel`` (d_model 64, 2 layers) over a local WordLevel tokenizer of the miniworld
  vocabulary (``footage.VOCABULARY`` + the LoRA-Edit trigger ``p3rs0n``).
* ``CLIPVisionModel`` (hidden 32, 2 layers, 64 px images, patch 8 -> 65 tokens) +
  ``CLIPImageProcessor`` (64 px).
* ``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
  num_train_timesteps=1000, flow_shift=3.0)``.

The shipped, pretrained stack lives in ``weights/`` (a diffusers directory, model_index.json for
``WanImageToVideoPipeline``) and loads through ``lorafx.server.method.stack.load_stack`` like a
real Wan directory: use :func:`load_miniworld` / :func:`default_model_dir`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .footage import VOCABULARY

__all__ = [
    "WEIGHTS_DIR",
    "TRANSFORMER_CONFIG",
    "VAE_CONFIG",
    "TEXT_CONFIG",
    "CLIP_CONFIG",
    "SCHEDULER_CONFIG",
    "default_model_dir",
    "has_weights",
    "load_miniworld",
    "build_miniworld_stack",
    "build_tokenizer",
    "CompactTextAttnProcessor",
    "compact_text",
    "use_compact_text",
    "use_standard_attention",
    "param_count",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TEXT_TOKENS = 512

TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=36,
    out_channels=16,
    text_dim=64,
    freq_dim=64,
    ffn_dim=384,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=32,
    added_kv_proj_dim=128,  # = heads * head_dim, as in the real model (5120 = 40 * 128)
    rope_max_seq_len=64,
)

VAE_CONFIG = dict(
    base_dim=12,
    decoder_base_dim=16,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
)

TEXT_CONFIG = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=16, relative_attention_max_distance=64,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)

CLIP_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   image_size=64, patch_size=8, projection_dim=32)

SCHEDULER_CONFIG = dict(prediction_type="flow_prediction", use_flow_sigmas=True,
                        num_train_timesteps=1000, flow_shift=3.0)


def default_model_dir() -> Path:
    """The shipped, pretrained miniworld stack (a diffusers Wan2.1-I2V directory)."""
    return WEIGHTS_DIR


def has_weights(path: str | Path | None = None) -> bool:
    p = Path(path) if path is not None else WEIGHTS_DIR
    return (p / "model_index.json").is_file() and (p / "transformer").is_dir()


def load_miniworld(device: str | torch.device | None = "cpu", dtype: torch.dtype | None = torch.float32,
                   path: str | Path | None = None):
    """Load the shipped miniworld stack through the same loader as a real Wan directory."""
    from lorafx.server.method.stack import load_stack

    return load_stack(path or WEIGHTS_DIR, device=device, dtype=dtype, name="miniworld")


def build_tokenizer():
    """WordLevel tokenizer over the miniworld vocabulary (<pad>=0, </s>=1, <unk>=2), lowercasing,
    whitespace/punctuation split, "</s>" appended, as PreTrainedTokenizerFast."""
    from lorafx.server.method.stack import build_tokenizer as _build

    return _build(list(VOCABULARY))


def build_miniworld_stack(seed: int = 0, device: str | torch.device = "cpu"):
    """A randomly initialised miniworld stack (a ``WanStack``), the starting point of pretraining."""
    from diffusers import (AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline,
                           WanTransformer3DModel)
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config,
                              UMT5EncoderModel)

    from lorafx.server.method.stack import WanStack

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TEXT_CONFIG))
    image_encoder = CLIPVisionModel(CLIPVisionConfig(**CLIP_CONFIG))
    px = CLIP_CONFIG["image_size"]
    image_processor = CLIPImageProcessor(crop_size={"height": px, "width": px}, size={"shortest_edge": px})
    vae = AutoencoderKLWan(**VAE_CONFIG)
    transformer = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    scheduler = UniPCMultistepScheduler(**SCHEDULER_CONFIG)
    pipe = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder,
                                   image_encoder=image_encoder, image_processor=image_processor,
                                   transformer=transformer, vae=vae, scheduler=scheduler)
    device = torch.device(device)
    pipe.to(device)
    for m in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.image_encoder):
        m.requires_grad_(False)
        m.eval()
    return WanStack(pipe=pipe, device=device, dtype=torch.float32, name="miniworld-random", source="code")


def param_count(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


# --------------------------------------------------------------------------------------------
# training-speed helper: exact compaction of the 512 zero-padded text tokens
# --------------------------------------------------------------------------------------------


def compact_text(embeds: torch.Tensor, lengths: torch.Tensor | None = None,
                 full_tokens: int = TEXT_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded text embeddings [B, L, D] -> ([B, Lc, D], attention bias [B, 1, 1, Lc]).

    Padding rows are exactly zero, so after the text projection every padding token yields the
    same key and value. Attention over ``512 - L`` identical keys equals attention over fewer
    copies of that key with a logit bonus ``log(count_real / count_kept)``. Keeping ``Lc =
    max(L) + 1`` columns and this bias reproduces the 512-token cross-attention exactly (up to
    float rounding) at a fraction of the cost. Used only for pretraining speed; the shipped model
    runs diffusers' stock processor on the full 512 tokens.

    ``embeds`` may already be shorter than 512 (then pass ``lengths``, the real token counts)."""
    if lengths is None:
        lengths = (embeds.abs().amax(dim=-1) > 0).sum(dim=1)
    lengths = lengths.to(torch.long)
    lc = int(lengths.max()) + 1  # real tokens are a prefix (diffusers pads after the sequence)
    if lc > embeds.shape[1]:
        embeds = F.pad(embeds, (0, 0, 0, lc - embeds.shape[1]))
    short = embeds[:, :lc]
    pos = torch.arange(lc, device=embeds.device)[None]
    pad_kept = (lc - lengths)[:, None].to(torch.float32)
    pad_real = (full_tokens - lengths)[:, None].to(torch.float32)
    bias = torch.where(pos >= lengths[:, None], torch.log(pad_real / pad_kept), torch.zeros((), device=embeds.device))
    return short, bias[:, None, None, :].to(embeds.dtype)


class CompactTextAttnProcessor:
    """WanAttnProcessor for the cross-attention (attn2) when the text part of
    ``encoder_hidden_states`` has been compacted by :func:`compact_text`. ``self.bias`` must be
    set to that batch's bias before each forward; ``image_tokens`` is the CLIP token count."""

    def __init__(self, image_tokens: int):
        self.image_tokens = int(image_tokens)
        self.bias: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        n_img = self.image_tokens
        ehs_img = encoder_hidden_states[:, :n_img]
        ehs = encoder_hidden_states[:, n_img:]
        query = attn.to_q(hidden_states)
        key = attn.to_k(ehs)
        value = attn.to_v(ehs)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1)).transpose(1, 2)
        key = key.unflatten(2, (attn.heads, -1)).transpose(1, 2)
        value = value.unflatten(2, (attn.heads, -1)).transpose(1, 2)

        key_img = attn.norm_added_k(attn.add_k_proj(ehs_img)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        value_img = attn.add_v_proj(ehs_img).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        out_img = F.scaled_dot_product_attention(query, key_img, value_img)

        bias = self.bias
        if bias is not None:
            bias = bias.to(query.dtype)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = (out + out_img).transpose(1, 2).flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def use_compact_text(transformer, image_tokens: int) -> CompactTextAttnProcessor:
    """Install one shared :class:`CompactTextAttnProcessor` on every block's attn2."""
    proc = CompactTextAttnProcessor(image_tokens)
    for block in transformer.blocks:
        block.attn2.set_processor(proc)
    return proc


def use_standard_attention(transformer) -> None:
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    for block in transformer.blocks:
        block.attn1.set_processor(WanAttnProcessor())
        block.attn2.set_processor(WanAttnProcessor())
