"""Long shots in the miniature world: how many frames should a later model window share with the
one before it?

A shot longer than the model window is rendered window by window (server/pipeline.py). Each later
window is pinned to the frames it shares with what is already rendered (`window_overlap`). One
shared frame hands over a still: the next window has to guess the motion again. Five frames fill
a whole latent frame (Wan's VAE packs frames 2-5 into one), so they also hand over velocity.

On held-out 33-frame shots, 17-frame model windows, one LoRA per shot trained as the server
trains long shots (the model's recommended settings, 17-frame training windows), this renders
with overlaps 1, 5 and 9 and, for reference, the whole shot in one window. It scores the edit and
the background as the quality harness does, the temporal error over the whole shot, and the
temporal error at the seams (the first new frame of each later window).

    python -m benchmarks.quality.long_shots --shots 4 --threads 2
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.quality.harness import _video, score
from lorafx.server.masks.ops import derive_training_mask, to_keep
from lorafx.server.method import lora as lora_ops
from lorafx.server.method.sampler import RenderSettings
from lorafx.server.method.trainer import LoraTrainer, TrainSettings, prepare_samples
from lorafx.server.pipeline import ShotSpec, plan_windows, render_shot


def seam_error(out: np.ndarray, shot, seams: list[int]) -> float:
    """Mean abs error of the frame-to-frame change into each seam frame, inside the matte."""
    errs = []
    for t in seams:
        both = (shot.edit_matte[t] > 0.5) | (shot.edit_matte[t - 1] > 0.5)
        d_out, d_gt = out[t] - out[t - 1], shot.edited[t] - shot.edited[t - 1]
        errs.append(float(np.abs(d_out[both] - d_gt[both]).mean()))
    return float(np.mean(errs)) if errs else float("nan")


def render_long(stack, shot, keep, adapter, *, window: int, overlap: int, render_steps: int, seed: int):
    n = shot.num_frames
    spec = ShotSpec(name="long", first=1, last=n, plate="p.####.exr", matte="m.####.exr",
                    caption=shot.caption, window_frames=window, window_overlap=overlap)
    source = _video(shot.source)
    prepared = SimpleNamespace(spec=spec, source=source, keep=keep, num_frames=n,
                               references={0: _video(shot.edited)[0]})
    rs = RenderSettings(config="masked", steps=render_steps, seed=seed, caption=shot.edited_caption)
    video = render_shot(stack, prepared, rs, adapter)
    spans = plan_windows(n, window, overlap) if n > window else [(0, n)]
    seams = [prev_b for (_, prev_b), _ in zip(spans, spans[1:])]
    return ((video.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy(), seams


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mini")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--window", type=int, default=17)
    p.add_argument("--overlaps", default="1,5,9")
    p.add_argument("--render-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from lorafx.server.app.models import open_model
    from lorafx.server.miniworld.footage import heldout_shots

    if args.threads:
        torch.set_num_threads(args.threads)
    stack, info = open_model(args.model)
    shots = heldout_shots(args.shots, frames=args.frames)
    configs = [(f"overlap {o}", args.window, int(o)) for o in args.overlaps.split(",")]
    configs.append((f"one {args.frames}-frame window", args.frames, 1))
    results = {name: [] for name, _, _ in configs}
    t0 = time.perf_counter()
    for i, shot in enumerate(shots):
        keep = torch.from_numpy(to_keep(derive_training_mask(shot.matte.astype(np.float32), "bbox")))
        settings = TrainSettings.from_dict({**info.train_defaults, "caption": shot.caption, "seed": args.seed,
                                            "window": args.window})
        motion, appearance = prepare_samples(stack, _video(shot.source), keep, settings)
        adapter = f"long-{i}"
        LoraTrainer(stack, adapter, settings).train(motion, appearance)
        for name, window, overlap in configs:
            out, seams = render_long(stack, shot, keep, adapter, window=window, overlap=overlap,
                                     render_steps=args.render_steps, seed=args.seed)
            s = score(out, shot)
            results[name].append((s.bg_psnr, s.edit_psnr, s.temporal_err, seam_error(out, shot, seams)))
        lora_ops.delete_adapter(stack, adapter)
        print(f"shot {i + 1}/{len(shots)} done ({time.perf_counter() - t0:.0f} s)", flush=True)

    print(f"\nmodel {info.name}, {len(shots)} held-out shots x {args.frames} frames, {args.window}-frame windows, "
          f"LoRA {dict(info.train_defaults)} + 17-frame training windows, {args.render_steps} render steps, "
          f"seed {args.seed}; {time.perf_counter() - t0:.0f} s\n")
    print("| rendering | bg PSNR | edit PSNR | temporal err | seam temporal err |\n|---|---|---|---|---|")
    for name, rows in results.items():
        m = np.array(rows).mean(axis=0)  # one window has no seam: nan, printed as such
        print(f"| {name} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.4f} | {m[3]:.4f} |".replace("nan", "-"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
