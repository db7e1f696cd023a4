"""The method (DESIGN.md §1): pure tensor code — conditioning, mask folding, LoRA training and
rendering on a Wan2.1-I2V stack. No files, no sockets."""

from .conditioning import CONFIGS, ConditionSet, build_condition, downsample_keep, fold_mask
from .sampler import RenderSettings, render
from .stack import WanStack, build_tiny_stack, load_stack, save_stack
from .trainer import LoraTrainer, TrainResult, TrainSettings, TrainState, prepare_samples

__all__ = ["CONFIGS", "ConditionSet", "build_condition", "downsample_keep", "fold_mask", "RenderSettings",
           "render", "WanStack", "build_tiny_stack", "load_stack", "save_stack", "LoraTrainer", "TrainResult",
           "TrainSettings", "TrainState", "prepare_samples"]
