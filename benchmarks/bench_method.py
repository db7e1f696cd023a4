"""Training-step and render benchmark for the method core.

CPU (default): the tiny stack, so the figures show relative costs of the switches.
CUDA: the real Wan2.1-I2V-14B transformer configuration with random weights (speed and memory do
not depend on the values) at 49 x 832 x 480, for each low-memory switch:
    python benchmarks/bench_method.py --size real --device cuda --modes base,ckpt,offload,fp8,lowest

Printed per mode: seconds per LoRA training step, projected 100-step time, peak memory, and the
render time of a CFG render (`--render-steps`, default 40) including the VAE decode.
Goals (issue #3, one H100): 100 steps <= 8 min; 40-step CFG render <= 110 s; lowest mode <= 7.6 GB.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time

import torch

MODES = {
    "base": dict(),
    "ckpt": dict(gradient_checkpointing=True),
    "offload": dict(gradient_checkpointing=True, group_offload=True),
    "fp8": dict(gradient_checkpointing=True, fp8_storage=True),
    "lowest": dict(gradient_checkpointing=True, group_offload=True, fp8_storage=True, window=9),
}


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS


def build(size: str, device: torch.device, mode: dict):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from lorafx.server.method.stack import WanStack, apply_low_memory, build_tiny_stack, real_transformer_config

    if size == "tiny":
        stack = build_tiny_stack(seed=0, device=device)
        frames, height, width, text_dim, image_tokens, image_dim = 17, 64, 64, 32, 17, 16
    else:
        dtype = torch.bfloat16
        cfg = real_transformer_config()
        # Built on the offload device when offloading, so the GPU never holds all blocks at once.
        build_dev = "cpu" if mode.get("group_offload") else device
        with torch.device(build_dev):
            transformer = WanTransformer3DModel(**cfg).to(dtype)
        vae = AutoencoderKLWan().to(device, torch.float32)

        class _Pipe:  # the benchmark needs only the transformer and the VAE
            vae_scale_factor_spatial, vae_scale_factor_temporal = 8, 4

        pipe = _Pipe()
        pipe.transformer, pipe.vae = transformer, vae
        stack = WanStack(pipe=pipe, device=device, dtype=dtype, name="wan14b-random")
        frames, height, width, text_dim, image_tokens, image_dim = 49, 480, 832, 4096, 257, 1280
    apply_low_memory(stack, group_offload=mode.get("group_offload", False),
                     fp8_storage=mode.get("fp8_storage", False))
    if size == "real" and not mode.get("group_offload"):
        stack.transformer.to(device)
    return stack, (frames, height, width, text_dim, image_tokens, image_dim)


def run_mode(name: str, size: str, device: torch.device, train_steps: int, render_steps: int) -> dict:
    from lorafx.server.method.sampler import RenderSettings, make_scheduler
    from lorafx.server.method.trainer import LoraTrainer, TrainingSample, TrainSettings

    mode = MODES[name]
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    stack, (frames, height, width, text_dim, image_tokens, image_dim) = build(size, device, mode)
    window = mode.get("window")
    train_frames = window or frames
    t_lat = (train_frames - 1) // 4 + 1
    h, w = height // 8, width // 8
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device)

    sample = TrainingSample(kind="motion", condition=rnd(1, 20, t_lat, h, w), x0=rnd(1, 16, t_lat, h, w),
                            text=rnd(1, 512, text_dim).to(stack.dtype),
                            image=rnd(1, image_tokens, image_dim).to(stack.dtype))
    settings = TrainSettings(steps=train_steps, gradient_checkpointing=mode.get("gradient_checkpointing", False))
    times = []
    trainer = LoraTrainer(stack, "bench", settings)

    def on_progress(stage, step, total, loss):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter())

    t0 = time.perf_counter()
    trainer.train([sample], on_progress=on_progress)
    steps = [b - a for a, b in zip([t0] + times[:-1], times)]
    step_s = sum(steps[1:]) / max(len(steps) - 1, 1)  # first step includes warm-up
    train_peak = peak_memory_gb(device)

    # Render: whole shot (windows are a training switch only), CFG batched, then VAE decode.
    t_full = (frames - 1) // 4 + 1
    rs = RenderSettings(steps=render_steps, cfg=5.0)
    sched = make_scheduler(rs)
    sched.set_timesteps(render_steps, device=device)
    latents = rnd(1, 16, t_full, h, w)
    condition = rnd(1, 20, t_full, h, w)
    text = rnd(2, 512, text_dim).to(stack.dtype)
    image = rnd(2, image_tokens, image_dim).to(stack.dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    r0 = time.perf_counter()
    with torch.no_grad():
        for t in sched.timesteps:
            x = torch.cat([latents, condition], 1).to(stack.dtype).expand(2, -1, -1, -1, -1)
            pred = stack.transformer(hidden_states=x, timestep=t.expand(2).to(device), encoder_hidden_states=text,
                                     encoder_hidden_states_image=image, return_dict=False)[0].float()
            c, u = pred.chunk(2)
            latents = sched.step(u + 5.0 * (c - u), t, latents, return_dict=False)[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        denoise_s = time.perf_counter() - r0
        vae = stack.vae
        d0 = time.perf_counter()
        vae.decode(latents.to(torch.float32), return_dict=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        decode_s = time.perf_counter() - d0
    result = {
        "mode": name, "switches": mode, "size": size, "device": describe_device(device),
        "frames": frames, "resolution": f"{width}x{height}", "train_frames": train_frames,
        "train_step_s": round(step_s, 4), "train_100_steps_min": round(step_s * 100 / 60, 2),
        "train_peak_gb": round(train_peak, 2), "render_steps": render_steps,
        "render_denoise_s": round(denoise_s, 2), "render_decode_s": round(decode_s, 2),
        "render_total_s": round(denoise_s + decode_s, 2), "peak_gb": round(peak_memory_gb(device), 2),
    }
    del stack, trainer, sample
    return result


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "real"), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", default="base,ckpt,offload,fp8,lowest")
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--render-steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (1: stable figures on a shared machine; OpenMP threads waiting for a busy "
                        "core slowed toy-size steps 70x)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.size == "real" and device.type != "cuda":
        print("the real-size benchmark needs a CUDA device (use --size tiny on CPU)", file=sys.stderr)
        return 2
    results = []
    print(f"{'mode':8} {'step s':>8} {'100 steps min':>14} {'train peak GB':>14} {'render s':>9} {'peak GB':>8}")
    for name in args.modes.split(","):
        r = run_mode(name, args.size, device, args.train_steps, args.render_steps)
        results.append(r)
        print(f"{name:8} {r['train_step_s']:8.3f} {r['train_100_steps_min']:14.2f} {r['train_peak_gb']:14.2f} "
              f"{r['render_total_s']:9.2f} {r['peak_gb']:8.2f}", flush=True)
    base = results[0]["train_step_s"]
    for r in results[1:]:
        print(f"{r['mode']}: step time x{r['train_step_s'] / base:.2f} of {results[0]['mode']}")
    print(f"device: {results[0]['device']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
