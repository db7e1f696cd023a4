"""LoRA adapters on the Wan transformer (peft), and their diffusers-format serialisation so that
`WanImageToVideoPipeline.load_lora_weights` accepts lorafx LoRAs unchanged."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch

from lorafx.errors import InvalidInput

# Per block: self-attention, text cross-attention (its query is shared with the image branch),
# and the FFN. The image cross-attention K/V (attn2.add_k_proj / add_v_proj) are excluded by default,
# as in the reference (DESIGN.md §1).
DEFAULT_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                   "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                   "ffn.net.0.proj", "ffn.net.2")
IMAGE_KV_TARGETS = ("attn2.add_k_proj", "attn2.add_v_proj")
LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers' key in the safetensors header


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    include_image_kv: bool = False

    def targets(self) -> tuple[str, ...]:
        return DEFAULT_TARGETS + (IMAGE_KV_TARGETS if self.include_image_kv else ())

    def target_regex(self) -> str:
        names = "|".join(re.escape(t) for t in self.targets())
        return rf"^blocks\.\d+\.({names})$"

    def peft_config(self):
        from peft import LoraConfig

        if self.rank < 1:
            raise InvalidInput(f"LoRA rank must be >= 1, got {self.rank}")
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_regex(), init_lora_weights=True)


def add_adapter(transformer, name: str, spec: LoraSpec) -> None:
    """Attach a fresh trainable adapter and make it the active one. Trainable weights stay float32
    even when the frozen base is bf16/fp8 (small updates vanish in bf16)."""
    if name in _adapter_names(transformer):
        transformer.delete_adapters(name)
    transformer.add_adapter(spec.peft_config(), adapter_name=name)
    transformer.set_adapter(name)
    for pname, p in transformer.named_parameters():
        if "lora_" in pname and f".{name}." in pname:
            p.data = p.data.float()
            p.requires_grad_(True)
        else:
            p.requires_grad_(False)


def _adapter_names(transformer) -> list[str]:
    cfg = getattr(transformer, "peft_config", None) or {}
    return list(cfg.keys())


def adapter_names(transformer) -> list[str]:
    return _adapter_names(transformer)


def trainable_parameters(transformer) -> list[torch.nn.Parameter]:
    return [p for p in transformer.parameters() if p.requires_grad]


def adapter_state_dict(transformer, name: str) -> dict[str, torch.Tensor]:
    """The adapter's weights under peft's un-prefixed names (`blocks.0.attn1.to_q.lora_A.weight`)."""
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(transformer, adapter_name=name)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def load_adapter_state(transformer, name: str, state: dict[str, torch.Tensor]) -> None:
    """Put saved weights back into an existing adapter of the same spec (training resume)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(transformer, state, adapter_name=name)
    unexpected = getattr(result, "unexpected_keys", []) or []
    if unexpected:
        raise InvalidInput(f"LoRA state does not fit the adapter: unexpected keys {unexpected[:3]}...")


def diffusers_payload(transformer, name: str, spec: LoraSpec) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors header metadata) exactly as `WanImageToVideoPipeline.save_lora_weights`
    writes them: keys prefixed `transformer.`, the adapter config under `lora_adapter_metadata`."""
    tensors = {f"transformer.{k}": v for k, v in adapter_state_dict(transformer, name).items()}
    meta = {
        "transformer.r": spec.rank,
        "transformer.lora_alpha": spec.alpha,
        "transformer.lora_dropout": spec.dropout,
        "transformer.target_modules": spec.target_regex(),
    }
    header = {"format": "pt", LORA_METADATA_KEY: json.dumps(meta, indent=2, sort_keys=True)}
    return tensors, header


def spec_from_header(header: dict[str, str]) -> LoraSpec | None:
    raw = header.get(LORA_METADATA_KEY)
    if not raw:
        return None
    meta = json.loads(raw)
    return LoraSpec(rank=int(meta.get("transformer.r", 16)), alpha=float(meta.get("transformer.lora_alpha", 16)),
                    dropout=float(meta.get("transformer.lora_dropout", 0.0)),
                    include_image_kv="add_k_proj" in str(meta.get("transformer.target_modules", "")))


def activate(stack, name: str | None) -> None:
    """Hot-swap: make `name` the only active adapter (None: the bare base model)."""
    transformer = stack.transformer
    names = _adapter_names(transformer)
    if name is None:
        if names:
            transformer.disable_adapters()
        return
    if name not in names:
        raise InvalidInput(f"LoRA adapter {name!r} is not loaded on the model")
    transformer.enable_adapters()
    transformer.set_adapter(name)


def load_into_stack(stack, name: str, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> None:
    """Load a diffusers-format LoRA (as written by `diffusers_payload`) as adapter `name`, through
    diffusers' own loader so that what works here works in any diffusers Wan pipeline."""
    if name in _adapter_names(stack.transformer):
        stack.transformer.delete_adapters(name)
    raw = header.get(LORA_METADATA_KEY)
    metadata = json.loads(raw) if raw else None  # keys already prefixed `transformer.`
    state = {k: v.to(stack.device) for k, v in tensors.items()}
    if not any(k.startswith("transformer.") for k in state):
        raise InvalidInput("not a diffusers Wan LoRA: no `transformer.` keys")
    stack.pipe.load_lora_into_transformer(state, transformer=stack.transformer, adapter_name=name,
                                          metadata=metadata)
    stack.transformer.set_adapter(name)


def delete_adapter(stack, name: str) -> None:
    if name in _adapter_names(stack.transformer):
        stack.transformer.delete_adapters(name)
