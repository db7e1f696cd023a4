"""The model stack: a Wan2.1-I2V diffusers pipeline held resident, loaded from a local directory
laid out like `Wan2.1-I2V-14B-480P-Diffusers`, or built tiny in code for tests and CPU runs.

The pipeline object is kept because diffusers' own LoRA loader (`load_lora_weights`) and prompt /
image encoders live on it; lorafx drives the transformer itself (see sampler.py, trainer.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorafx.errors import InvalidInput, NotFound

REQUIRED_SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "image_encoder",
                       "image_processor", "scheduler")
TEXT_TOKENS = 512  # the real I2V attention assumes exactly 512 text tokens (FACTS.md pitfall)


@dataclass
class WanStack:
    pipe: "object"  # diffusers.WanImageToVideoPipeline
    device: torch.device
    dtype: torch.dtype  # transformer compute dtype
    name: str = "wan"
    source: str = ""  # where it was loaded from
    low_memory: dict = field(default_factory=dict)

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def image_encoder(self):
        return self.pipe.image_encoder

    @property
    def image_processor(self):
        return self.pipe.image_processor

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def spatial_factor(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial)

    @property
    def temporal_factor(self) -> int:
        return int(self.pipe.vae_scale_factor_temporal)

    def describe(self) -> dict:
        cfg = self.transformer.config
        return {
            "name": self.name,
            "source": self.source,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "layers": int(cfg.num_layers),
            "heads": int(cfg.num_attention_heads),
            "head_dim": int(cfg.attention_head_dim),
            "transformer_params": int(sum(p.numel() for p in self.transformer.parameters())),
            "low_memory": dict(self.low_memory),
        }


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device does it natively; fp32 on CPU (bf16 matmuls there are slow)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise NotFound(f"model directory {path} does not exist")
    if not (path / "model_index.json").is_file():
        raise InvalidInput(
            f"{path} is not a diffusers pipeline directory (no model_index.json); expected a local "
            "copy of Wan2.1-I2V-14B-480P-Diffusers"
        )
    missing = [s for s in REQUIRED_SUBFOLDERS if not (path / s).is_dir()]
    if missing:
        raise InvalidInput(f"model directory {path} lacks {', '.join(missing)}")
    index = json.loads((path / "model_index.json").read_text())
    cls = index.get("_class_name", "")
    if cls != "WanImageToVideoPipeline":
        raise InvalidInput(f"{path} holds a {cls or 'unknown'} pipeline; lorafx needs WanImageToVideoPipeline")


def load_stack(path: str | Path, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, name: str | None = None) -> WanStack:
    """Load a local Wan2.1-I2V diffusers directory (the real 14B one, or a tiny one saved by
    `save_stack`). The VAE stays float32 (Wan's VAE loses detail in bf16); the text and image
    encoders are used once per shot and cached, so they may live on the CPU (see `offload`)."""
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline

    path = Path(path).expanduser().resolve()
    _check_model_dir(path)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)
    pipe = WanImageToVideoPipeline.from_pretrained(path, vae=vae, torch_dtype=dtype)
    pipe.vae.to(torch.float32)
    pipe.to(device)
    _freeze(pipe)
    return WanStack(pipe=pipe, device=device, dtype=dtype, name=name or path.name, source=str(path))


def save_stack(stack: WanStack, path: str | Path) -> Path:
    path = Path(path)
    stack.pipe.save_pretrained(path, safe_serialization=True)
    return path


def _freeze(pipe) -> None:
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.image_encoder):
        if module is not None:
            module.requires_grad_(False)
            module.eval()


# ----------------------------------------------------------------------------- tiny stack


def build_tokenizer(words: list[str] | None = None):
    """A word-level tokenizer built locally (no hub). Unknown words map to <unk>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    base = ["<pad>", "</s>", "<unk>"]
    vocab_words = words or _DEFAULT_WORDS
    vocab = {w: i for i, w in enumerate(base + [w for w in dict.fromkeys(vocab_words) if w not in base])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=TEXT_TOKENS)


_DEFAULT_WORDS = (
    "p3rs0n , . a an the red green blue yellow white black orange purple pink grey striped dotted "
    "checked circle square triangle blob star moving left right up down over on in with and of "
    "background gradient stripes noise room bedroom child adult person jacket shirt flower logo "
    "bright dark slowly quickly camera pan edit new"
).split()


def build_tiny_stack(seed: int = 0, *, layers: int = 2, heads: int = 2, head_dim: int = 16,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     words: list[str] | None = None) -> WanStack:
    """A Wan2.1-I2V stack with the real classes at toy size and random weights.

    It keeps every path of the real model alive: 36 input channels, the image cross-attention
    branch (`added_kv_proj_dim` set — diffusers' own tiny tests leave it None and never run it)
    and 512 text tokens."""
    from diffusers import (AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline,
                           WanTransformer3DModel)
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config,
                              UMT5EncoderModel)

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(words)
    text_dim = 32
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=text_dim, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    image_dim = 16
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=image_dim, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=16))
    image_processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    inner = heads * head_dim
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
        in_channels=36, out_channels=16, text_dim=text_dim, freq_dim=32, ffn_dim=2 * inner,
        num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        image_dim=image_dim, added_kv_proj_dim=inner, rope_max_seq_len=32)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    pipe = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder,
                                   image_encoder=image_encoder, image_processor=image_processor,
                                   transformer=transformer, vae=vae, scheduler=scheduler)
    device = torch.device(device)
    pipe.to(device)
    pipe.transformer.to(dtype)
    _freeze(pipe)
    return WanStack(pipe=pipe, device=device, dtype=dtype, name="tiny-random", source="code")


def real_transformer_config() -> dict:
    """Wan2.1-I2V-14B-480P's transformer (diffusers' conversion script), for benchmarks."""
    return dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280,
                added_kv_proj_dim=5120, rope_max_seq_len=1024)


LOW_MEMORY_SWITCHES = ("group_offload", "fp8_storage", "gradient_checkpointing")


def apply_low_memory(stack: WanStack, *, group_offload: bool = False, fp8_storage: bool = False,
                     offload_device: str | torch.device = "cpu", blocks_per_group: int = 1) -> WanStack:
    """The paper's App. C switches, from diffusers itself:
    - group_offload: frozen transformer blocks live on `offload_device` and are moved to the compute
      device one group at a time (CUDA streams overlap the copies when on a GPU);
    - fp8_storage: frozen weights stored as float8_e4m3fn, upcast per layer to the compute dtype.
    Apply before adding LoRA adapters (adapters stay float32 and on the compute device).
    (Temporal-window training and gradient checkpointing are TrainSettings switches.)"""
    transformer = stack.transformer
    if fp8_storage:
        compute = stack.dtype if stack.dtype != torch.float32 else torch.bfloat16
        # the modules diffusers keeps out of fp8 (patch embedding, norms) must already be in the
        # compute dtype; the real model loads in bf16, the tiny CPU stack in fp32.
        transformer.to(compute)
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)
        stack.dtype = compute
        stack.low_memory["fp8_storage"] = True
    if group_offload:
        use_stream = stack.device.type == "cuda"
        transformer.enable_group_offload(onload_device=stack.device, offload_device=torch.device(offload_device),
                                         offload_type="block_level", num_blocks_per_group=blocks_per_group,
                                         use_stream=use_stream)
        stack.low_memory["group_offload"] = str(offload_device)
    return stack
