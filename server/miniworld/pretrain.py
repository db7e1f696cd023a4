"""Pretrain the miniworld Wan2.1-I2V stack on synthetic footage, on one CPU thread.

    python -m lorafx.server.miniworld.pretrain --out DIR --minutes N --seed S

A later stage continues a trained directory instead of starting from random weights:

    python -m lorafx.server.miniworld.pretrain --init-from DIR --out DIR2 --minutes N --decoder-minutes M

It keeps the VAE encoder (so the latent space, its statistics and the transformer stay valid),
optionally fine-tunes the VAE decoder alone (kept only if held-out reconstruction improves), and
continues the transformer on clips the earlier stages never drew. The shipped weights are stage 1
(55 min, 1 thread) followed by stage 2 (65 min, 2 threads); ``train_log_stage1.txt`` and
``pretrain_settings.json["continued_from"]`` keep the earlier stage's record.

Phases (each gets a share of the wall-clock budget):

(a) VAE: ``AutoencoderKLWan`` (see ``init_vae``) learns to reconstruct single frames and 9-frame
    clips (32 px crops, then whole 64 px clips): L1 + MSE on pixels in [-1,1] + 1e-5 * KL per
    latent element, posterior sampled.
    The weights are then rounded to float16 (the storage dtype) and frozen; the per-channel
    latent mean/std over the training latents go into the VAE config (``latents_mean`` /
    ``latents_std``) so ``(z - mean) / std`` has unit variance.
(b) Dataset: pretraining clips (17 frames, plus some 33-frame clips) are encoded once: target
    latents (mode of the posterior, normalised), the stock I2V condition (frame 1 then empty
    frames, encoded as one video as diffusers does), caption embeddings (umT5, 512 tokens) and
    CLIP penultimate states of frame 1.
(c) Transformer, trained as Wan's I2V is: condition = stock ``i2v`` (mask frame 1 ones, the rest
    zeros; never arbitrary spatiotemporal keep masks -- the method's LoRA must teach those),
    flow matching x_t = (1-t) x0 + t eps, t ~ U(0,1), timestep t*1000, target eps - x0, MSE.
    Captions are dropped to "" 10% of the time (so CFG has an unconditional branch).
    The text encoder (umT5) and image encoder (CLIP) stay frozen at their random initialisation,
    as the real Wan's encoders are frozen during DiT training and LoRA-Edit never trains them;
    a frozen random encoder is still an injective, informative projection of the caption / frame
    (the caption carries the motion direction, which frame 1 alone does not) and the trainable
    text/image projections in the transformer learn to read it. Freezing also keeps the budget
    for the DiT and lets the embeddings be computed once.
    Speed: the 512-token cross-attention is computed exactly on compacted text
    (``model.compact_text``); an EMA of the weights is kept and shipped if it validates better.
(d) Evaluate (held-out seeds): VAE reconstruction PSNR; sampled videos from frame 1 with the
    stock i2v condition (flow-matching Euler, shift 3) vs the true clip, against "repeat the first
    frame" and the same sampler with the random-init transformer. Save the stack with
    ``save_stack`` (float16 safetensors), ``train_log.txt`` and ``pretrain_settings.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import footage
from .model import (WEIGHTS_DIR, build_miniworld_stack, compact_text, param_count,
                    use_compact_text, use_standard_attention)

# --------------------------------------------------------------------------------------------
# logging / timing
# --------------------------------------------------------------------------------------------


class Log:
    def __init__(self, path: Path | None):
        self.path = path
        self.t0 = time.time()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")

    def elapsed(self) -> float:
        return time.time() - self.t0


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1,1] measured on the [0,1] scale."""
    mse = float((((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _lr(step: int, total: int, base: float, warmup: int = 100, floor: float = 0.1) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def _vid(arr: np.ndarray) -> torch.Tensor:
    """(F,H,W,3) [0,1] -> [3,F,H,W] [-1,1]."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(3, 0, 1, 2))) * 2.0 - 1.0


# --------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------


def vae_seeds(run_seed: int):
    """Seeds for VAE clips: pretraining range, second half (disjoint from DiT clips)."""
    rng = np.random.default_rng([run_seed, 1])
    lo = footage.PRETRAIN_SEEDS.start + 500_000
    while True:
        yield int(rng.integers(lo, footage.PRETRAIN_SEEDS.stop))


def dit_seed(run_seed: int, i: int) -> int:
    """The i-th DiT pretraining clip: seeds [0, 500_000) of the pretraining range."""
    return (run_seed * 100_003 + i) % 500_000


# --------------------------------------------------------------------------------------------
# (a) VAE
# --------------------------------------------------------------------------------------------


def init_vae(vae) -> None:
    """Initialisation that makes the tiny Wan VAE trainable in minutes: He-normal (linear gain)
    convolutions with zero biases (PyTorch's default conv init shrinks the signal through this
    deep, RMS-normalised stack and training then stalls for hundreds of steps); the temporal
    up/down-sampling convolutions start as "repeat" / "pick" (the original Wan code's
    ``init_weight`` / ``init_weight2``); the log-variance half of ``quant_conv`` starts at a
    constant small posterior (std 0.05) that the KL term then adjusts."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResample

    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
                if m.bias is not None:
                    m.bias.zero_()
        for m in vae.modules():
            if isinstance(m, WanResample) and hasattr(m, "time_conv"):
                w = m.time_conv.weight
                w.zero_()
                m.time_conv.bias.zero_()
                c1, c2 = w.shape[:2]
                if m.mode == "upsample3d":
                    eye = torch.eye(c1 // 2, c2)
                    w[: c1 // 2, :, -1, 0, 0] = eye
                    w[c1 // 2:, :, -1, 0, 0] = eye
                else:
                    w[:, :, 1, 0, 0] = torch.eye(c1, c2)
        z = vae.config.z_dim
        vae.quant_conv.weight[z:].zero_()
        vae.quant_conv.bias[z:] = math.log(0.05 ** 2)


def _crop(v: np.ndarray, size: int, rng) -> np.ndarray:
    if size >= v.shape[1]:
        return v
    y, x = rng.integers(0, v.shape[1] - size + 1, 2)
    return v[:, y:y + size, x:x + size]


def train_vae(stack, log: Log, seconds: float, run_seed: int, lr: float = 4e-4,
              kl_weight: float = 1e-5) -> dict:
    """Three phases by elapsed time: 0-45% single frames (16 x 32 px crops: many distinct scenes
    per step, which is what the spatial code needs), 45-80% mixed (8 frames + 2 nine-frame clips,
    32 px crops), 80-100% whole 64 px nine-frame clips. Pixels in [-1,1]; loss L1 + MSE +
    kl_weight * KL per latent element, posterior sampled."""
    vae = stack.vae
    init_vae(vae)
    vae.train()
    vae.requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    seeds = vae_seeds(run_seed)
    rng = np.random.default_rng([run_seed, 2])
    t_start = time.time()
    step, est_total = 0, 2000
    hist: list[tuple[float, float]] = []

    def frames_batch(n, size):
        out = []
        for _ in range(n):
            scene = footage.sample_scene(next(seeds))
            v, _ = footage.render(scene, 1, 64, t_offset=float(rng.uniform(0, 16)))  # a random instant
            out.append(_vid(_crop(v, size, rng)))
        return torch.stack(out)

    def clips_batch(n, size):
        out = []
        for _ in range(n):
            scene = footage.sample_scene(next(seeds))
            ts = float(rng.choice([1.0, 2.0]))
            v, _ = footage.render(scene, 9, 64, time_scale=ts)
            out.append(_vid(_crop(v, size, rng)))
        return torch.stack(out)

    def rec(x):
        post = vae.encode(x).latent_dist
        z = post.sample()
        y = _decode_unclamped(vae, z)
        l1 = (y - x).abs().mean()
        l2 = ((y - x) ** 2).mean()
        kl = post.kl().mean() / z[0].numel()
        return l1 + l2 + kl_weight * kl, float(l1.detach()), _psnr(y.detach(), x), float(kl.detach())

    while True:
        el = (time.time() - t_start) / seconds
        if el > 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = _lr(step, est_total, lr, warmup=50)
        if el < 0.45:
            phase = "frames32"
            loss, l1, ps, kl = rec(frames_batch(16, 32))
        elif el < 0.8:
            phase = "mixed32"
            la, l1a, psa, kl = rec(frames_batch(8, 32))
            lb, l1b, psb, kl = rec(clips_batch(2, 32))
            loss, l1, ps = la + lb, (l1a + l1b) / 2, (psa + psb) / 2
        else:
            phase = "clips64"
            loss, l1, ps, kl = rec(clips_batch(2, 64))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 5.0)
        opt.step()
        step += 1
        hist.append((l1, ps))
        if step == 20:  # extrapolate the schedule length from measured speed
            est_total = max(300, int(seconds / ((time.time() - t_start) / step) * 0.85))
            log(f"vae: {((time.time() - t_start) / step):.2f} s/step -> ~{est_total} steps")
        if step % 50 == 0:
            l1m = np.mean([h[0] for h in hist[-50:]])
            psm = np.mean([h[1] for h in hist[-50:]])
            log(f"vae step {step} {phase} l1 {l1m:.4f} kl {kl:.3f} psnr {psm:.2f} "
                f"lr {opt.param_groups[0]['lr']:.2e}")
    vae.eval()
    vae.requires_grad_(False)
    # round to the storage dtype now, so latents/statistics are those of the shipped weights
    with torch.no_grad():
        for p in vae.parameters():
            p.copy_(p.half().float())
    return {"steps": step, "final_l1": float(np.mean([h[0] for h in hist[-50:]])),
            "final_train_psnr": float(np.mean([h[1] for h in hist[-50:]]))}


def finetune_decoder(stack, log: Log, seconds: float, run_seed: int, lr: float = 1e-4) -> dict:
    """Continue training only the VAE *decoder* (and ``post_quant_conv``) on whole 64 px clips and
    single frames: the encoder, hence the latent space the transformer was trained in, is
    untouched, so a shipped transformer stays valid while reconstructions get sharper.
    Posterior sampled as in ``train_vae``; L1 + MSE; constant lr after a short warm-up."""
    vae = stack.vae
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    vae.train()
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    seeds = vae_seeds(run_seed + 1)  # fresh draws from the VAE's pretraining range
    rng = np.random.default_rng([run_seed, 5])
    t_start, step, hist = time.time(), 0, []
    while time.time() - t_start < seconds:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 30)
        vids = []
        n, frames = (2, 9) if step % 2 == 0 else (8, 1)
        for _ in range(n):
            scene = footage.sample_scene(next(seeds))
            v, _ = footage.render(scene, frames, 64, t_offset=float(rng.uniform(0, 8)))
            vids.append(_vid(v))
        x = torch.stack(vids)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        y = _decode_unclamped(vae, z)
        loss = (y - x).abs().mean() + ((y - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        step += 1
        hist.append(_psnr(y.detach(), x))
        if step % 50 == 0:
            log(f"decoder step {step} psnr {np.mean(hist[-50:]):.2f}")
    vae.eval()
    vae.requires_grad_(False)
    with torch.no_grad():
        for p in vae.parameters():
            p.copy_(p.half().float())
    return {"steps": step, "final_train_psnr": float(np.mean(hist[-50:])) if hist else float("nan")}


def _decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """``AutoencoderKLWan._decode`` without its final clamp to [-1, 1] (so training gets
    gradients from out-of-range pixels); the same causal, frame-by-frame cached decoding."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    outs = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                first_chunk=(i == 0)))
    vae.clear_cache()
    return torch.cat(outs, 2)


@torch.no_grad()
def eval_vae(stack, seeds, frames=17, size=64) -> float:
    vals = []
    for s in seeds:
        v, _ = footage.make_clip(s, frames, size)
        x = _vid(v)[None]
        z = stack.vae.encode(x).latent_dist.mode()
        y = stack.vae.decode(z, return_dict=False)[0]
        vals.append(_psnr(y, x))
    return float(np.mean(vals))


# --------------------------------------------------------------------------------------------
# (b) dataset of latents
# --------------------------------------------------------------------------------------------


@dataclass
class LatentSet:
    frames: int
    x0: torch.Tensor  # [N,16,T,h,w] raw (un-normalised) latents of the clips
    cond: torch.Tensor  # [N,16,T,h,w] raw latents of the i2v condition videos
    text: torch.Tensor  # [N,Lc,D] compact caption embeddings (zero padded)
    text_len: torch.Tensor  # [N]
    image: torch.Tensor  # [N,n_img,Di]
    seeds: list[int]


@torch.no_grad()
def encode_clips(stack, seeds: list[int], frames: int, size: int = 64, batch: int = 4):
    from lorafx.server.method.conditioning import build_condition
    from lorafx.server.method.encode import encode_image, encode_prompt

    xs, cs, ts, ims, lens = [], [], [], [], []
    for i in range(0, len(seeds), batch):
        vids, caps = [], []
        for s in seeds[i:i + batch]:
            v, c = footage.make_clip(s, frames, size)
            vids.append(torch.from_numpy(v).permute(0, 3, 1, 2) * 2 - 1)  # [F,3,H,W]
            caps.append(c)
        conds = [build_condition("i2v", v).v_cond for v in vids]
        vb = torch.stack(vids).permute(0, 2, 1, 3, 4)  # [B,3,F,H,W]
        cb = torch.stack(conds).permute(0, 2, 1, 3, 4)
        both = stack.vae.encode(torch.cat([vb, cb])).latent_dist.mode()
        xs.append(both[: len(vids)])
        cs.append(both[len(vids):])
        te = encode_prompt(stack, caps)
        ln = (te.abs().amax(-1) > 0).sum(1)
        ts.append(te[:, :48])
        lens.append(ln)
        ims.append(encode_image(stack, vb[:, :, 0]))
    text = torch.cat(ts)
    text_len = torch.cat(lens)
    assert int(text_len.max()) < 48
    lc = int(text_len.max()) + 1
    return LatentSet(frames, torch.cat(xs), torch.cat(cs), text[:, :lc].contiguous(), text_len,
                     torch.cat(ims), list(seeds))


def set_latent_stats(stack, sets: list[LatentSet]) -> tuple[list[float], list[float]]:
    z = torch.cat([s.x0.transpose(0, 1).reshape(16, -1) for s in sets], dim=1)
    mean = z.mean(dim=1)
    std = z.std(dim=1).clamp_min(1e-3)
    stack.vae.register_to_config(latents_mean=[round(float(v), 6) for v in mean],
                                 latents_std=[round(float(v), 6) for v in std])
    return stack.vae.config.latents_mean, stack.vae.config.latents_std


def normalise(stack, z: torch.Tensor) -> torch.Tensor:
    cfg = stack.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, 16, 1, 1, 1)
    return (z - mean) * inv_std


# --------------------------------------------------------------------------------------------
# (c) transformer
# --------------------------------------------------------------------------------------------


def i2v_mask4(frames: int, h: int, w: int) -> torch.Tensor:
    from lorafx.server.method.conditioning import fold_mask

    m = torch.zeros(frames, h * 8, w * 8)
    m[0] = 1.0
    return fold_mask(m, (h, w))  # [1,4,T,h,w]


class Batcher:
    def __init__(self, stack, sets: list[LatentSet], batch_sizes: dict[int, int], empty_text, drop_p, seed):
        self.sets = sets
        self.bs = batch_sizes
        self.rng = np.random.default_rng([seed, 3])
        self.x0 = [normalise(stack, s.x0) for s in sets]
        self.cond = [normalise(stack, s.cond) for s in sets]
        self.mask = [i2v_mask4(s.frames, s.x0.shape[-2], s.x0.shape[-1]) for s in sets]
        # sample a set in proportion to (clips x latent frames): equal "voxel" exposure
        w = np.array([len(s.seeds) * s.x0.shape[2] / batch_sizes[s.frames] for s in sets], float)
        self.p = w / w.sum()
        self.empty_text, self.empty_len = empty_text
        self.drop_p = drop_p

    def __call__(self, generator: torch.Generator):
        k = int(self.rng.choice(len(self.sets), p=self.p))
        s = self.sets[k]
        idx = torch.from_numpy(self.rng.choice(len(s.seeds), self.bs[s.frames], replace=False))
        x0 = self.x0[k][idx]
        cond = torch.cat([self.mask[k].expand(len(idx), -1, -1, -1, -1), self.cond[k][idx]], 1)
        text = s.text[idx]
        tlen = s.text_len[idx].clone()
        drop = torch.from_numpy(self.rng.random(len(idx)) < self.drop_p)
        if drop.any():
            lc = max(text.shape[1], self.empty_text.shape[1])
            text = F.pad(text, (0, 0, 0, lc - text.shape[1])).clone()
            e = F.pad(self.empty_text, (0, 0, 0, lc - self.empty_text.shape[1]))
            text[drop] = e
            tlen[drop] = self.empty_len
        return x0, cond, text, tlen, s.image[idx]


def flow_loss(tr, proc, x0, cond, text, tlen, image, generator, t=None, noise=None):
    b = x0.shape[0]
    if t is None:
        t = torch.rand(b, generator=generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator)
    tt = t.view(b, 1, 1, 1, 1)
    xt = (1 - tt) * x0 + tt * noise
    short, bias = compact_text(text, tlen)
    proc.bias = bias
    pred = tr(torch.cat([xt, cond], 1), t * 1000.0, short, encoder_hidden_states_image=image,
              return_dict=False)[0]
    return F.mse_loss(pred, noise - x0)


@torch.no_grad()
def val_loss(tr, proc, batches) -> float:
    tr.eval()
    vals = [float(flow_loss(tr, proc, *b[:5], None, t=b[5], noise=b[6])) for b in batches]
    tr.train()
    return float(np.mean(vals))


def make_val_batches(stack, vset: LatentSet, n_rep: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = normalise(stack, vset.x0)
    mask = i2v_mask4(vset.frames, x0.shape[-2], x0.shape[-1])
    cond = torch.cat([mask.expand(len(x0), -1, -1, -1, -1), normalise(stack, vset.cond)], 1)
    out = []
    for r in range(n_rep):
        for i in range(0, len(x0), 8):
            sl = slice(i, i + 8)
            b = x0[sl].shape[0]
            t = (torch.arange(b) + 0.5 + r * 0.37) / b % 1.0  # stratified t
            out.append((x0[sl], cond[sl], vset.text[sl], vset.text_len[sl], vset.image[sl], t,
                        torch.randn(x0[sl].shape, generator=g)))
    return out


def train_transformer(stack, log: Log, seconds: float, sets, val_batches, empty, run_seed: int,
                      lr: float = 4e-4, ema_decay: float = 0.998, drop_p: float = 0.1):
    tr = stack.transformer
    n_img = sets[0].image.shape[1]
    proc = use_compact_text(tr, n_img)
    tr.train()
    tr.requires_grad_(True)
    decay, no_decay = [], []
    for n, p in tr.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in n or "scale_shift" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    ema = copy.deepcopy(tr).requires_grad_(False)
    batcher = Batcher(stack, sets, {17: 8, 33: 4}, empty, drop_p, run_seed)
    g = torch.Generator().manual_seed(run_seed * 7 + 11)
    t_start = time.time()
    step, est_total = 0, 4000
    losses = []
    log(f"dit: val loss at init {val_loss(tr, proc, val_batches):.4f}")
    while time.time() - t_start < seconds:
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, est_total, lr, warmup=150)
        loss = flow_loss(tr, proc, *batcher(g), g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        opt.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), tr.parameters()):
                pe.lerp_(p, 1 - d)
        step += 1
        losses.append(float(loss.detach()))
        if step == 30:
            est_total = max(300, int(seconds / ((time.time() - t_start) / step)))
            log(f"dit: {((time.time() - t_start) / step):.3f} s/step -> ~{est_total} steps")
        if step % 100 == 0:
            log(f"dit step {step} loss {np.mean(losses[-100:]):.4f} lr {opt.param_groups[0]['lr']:.2e}")
        if step % 1000 == 0:
            use_compact_text(ema, n_img)
            log(f"dit step {step} val {val_loss(tr, proc, val_batches):.4f} "
                f"ema-val {val_loss(ema, ema.blocks[0].attn2.processor, val_batches):.4f}")
    tr.eval()
    ema.eval()
    proc_e = use_compact_text(ema, n_img)
    v_raw = val_loss(tr, proc, val_batches)
    v_ema = val_loss(ema, proc_e, val_batches)
    log(f"dit done: {step} steps, train loss (last 200) {np.mean(losses[-200:]):.4f}, "
        f"val raw {v_raw:.4f}, val ema {v_ema:.4f}")
    chosen = "ema" if v_ema <= v_raw else "raw"
    if chosen == "ema":
        tr.load_state_dict(ema.state_dict())
    use_standard_attention(tr)
    tr.requires_grad_(False)
    return {"steps": step, "final_train_loss": float(np.mean(losses[-200:])), "val_raw": v_raw,
            "val_ema": v_ema, "shipped": chosen}


# --------------------------------------------------------------------------------------------
# (d) sampling / evaluation
# --------------------------------------------------------------------------------------------


def flow_sigmas(steps: int, shift: float) -> list[float]:
    s = np.linspace(1.0, 0.0, steps + 1)
    s = shift * s / (1 + (shift - 1) * s)
    return [float(v) for v in s]


@torch.no_grad()
def sample_i2v(stack, first: torch.Tensor, caption: str, frames: int, steps: int = 30,
               shift: float = 3.0, guidance: float = 1.0, seed: int = 0, transformer=None) -> torch.Tensor:
    """Stock I2V sampling with flow-matching Euler: first [3,H,W] in [-1,1] -> video [3,F,H,W]."""
    from lorafx.server.method.conditioning import build_condition
    from lorafx.server.method.encode import (decode_latents, encode_condition, encode_image,
                                             encode_prompt)

    tr = transformer if transformer is not None else stack.transformer
    H, W = first.shape[-2:]
    src = torch.zeros(frames, 3, H, W)
    src[0] = first
    cond = encode_condition(stack, build_condition("i2v", src))
    text = encode_prompt(stack, [caption])
    neg = encode_prompt(stack, [""])
    img = encode_image(stack, first)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((1, 16) + tuple(cond.shape[2:]), generator=g)
    sig = flow_sigmas(steps, shift)
    for i in range(steps):
        t = torch.full((1,), sig[i] * 1000.0)
        v = tr(torch.cat([z, cond], 1), t, text, encoder_hidden_states_image=img, return_dict=False)[0]
        if guidance != 1.0:
            vu = tr(torch.cat([z, cond], 1), t, neg, encoder_hidden_states_image=img, return_dict=False)[0]
            v = vu + guidance * (v - vu)
        z = z + (sig[i + 1] - sig[i]) * v
    return decode_latents(stack, z)[0]


@torch.no_grad()
def evaluate(stack, log: Log, random_tr, seeds: list[int], frames: int = 17, steps: int = 30,
             guidances=(1.0, 3.0)) -> dict:
    res = {"seeds": seeds, "frames": frames, "steps": steps}
    rows = {k: [] for k in ["repeat_first", "vae_recon", "random_init", "model_mean"]
            + [f"model_cfg{g:g}" for g in guidances]}
    for s in seeds:
        v, cap = footage.make_clip(s, frames, 64)
        x = _vid(v)  # [3,F,H,W]
        first = x[:, 0]
        later = slice(1, None)
        rep = first[:, None].expand_as(x)
        rows["repeat_first"].append(_psnr(rep[:, later], x[:, later]))
        z = stack.vae.encode(x[None]).latent_dist.mode()
        rows["vae_recon"].append(_psnr(stack.vae.decode(z, return_dict=False)[0][0][:, later], x[:, later]))
        out = sample_i2v(stack, first, cap, frames, steps, guidance=1.0, seed=s, transformer=random_tr)
        rows["random_init"].append(_psnr(out[:, later], x[:, later]))
        out = sample_i2v(stack, first, cap, frames, steps=1, shift=1.0, seed=s)  # E[x0 | cond]
        rows["model_mean"].append(_psnr(out[:, later], x[:, later]))
        for gd in guidances:
            out = sample_i2v(stack, first, cap, frames, steps, guidance=gd, seed=s)
            rows[f"model_cfg{gd:g}"].append(_psnr(out[:, later], x[:, later]))
    for k, vals in rows.items():
        res[k] = round(float(np.mean(vals)), 3)
    log("eval (held-out, PSNR dB over frames 2..F): " + ", ".join(f"{k} {res[k]:.2f}" for k in rows))
    return res


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def save_fp16(stack, out: Path) -> None:
    from lorafx.server.method.stack import save_stack

    for m in (stack.transformer, stack.vae, stack.text_encoder, stack.image_encoder):
        m.half()
    try:
        if out.exists():
            for sub in ("transformer", "vae", "text_encoder", "tokenizer", "image_encoder",
                        "image_processor", "scheduler"):
                shutil.rmtree(out / sub, ignore_errors=True)
        save_stack(stack, out)
        _portable_names(out)
        # read by lorafx.server.app.models: the model's native resolution and window length
        (out / "lorafx_model.json").write_text(json.dumps(
            {"name": "miniworld", "resolution": [64, 64], "window_frames": 17,
             # measured by benchmarks/quality/harness.py: the reference lr 1e-4 barely moves a
             # LoRA on this 1.2M-parameter model, and colour augmentation stops colour leakage
             "train_defaults": {"steps": 60, "lr": 0.001, "colour_augment": 5}}, indent=2) + "\n")
    finally:
        for m in (stack.transformer, stack.vae, stack.text_encoder, stack.image_encoder):
            m.float()


def _portable_names(out: Path) -> None:
    """transformers 5 records its new class names (TokenizersBackend, CLIPImageProcessorPil);
    write the names every transformers >= 4.51 knows, as the real Wan directory does."""
    idx_p = out / "model_index.json"
    idx = json.loads(idx_p.read_text())
    idx["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    idx["image_processor"] = ["transformers", "CLIPImageProcessor"]
    idx_p.write_text(json.dumps(idx, indent=2, sort_keys=True) + "\n")
    tc_p = out / "tokenizer" / "tokenizer_config.json"
    tc = json.loads(tc_p.read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc_p.write_text(json.dumps(tc, indent=2) + "\n")
    # a stack loaded from disk (a later stage) records where it came from: not portable
    for cfg_p in out.glob("*/config.json"):
        cfg = json.loads(cfg_p.read_text())
        if cfg.pop("_name_or_path", None) is not None:
            cfg_p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    idx.pop("_name_or_path", None)
    idx_p.write_text(json.dumps(idx, indent=2, sort_keys=True) + "\n")


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--minutes", type=float, default=55.0, help="total wall-clock budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vae-share", type=float, default=0.45)
    ap.add_argument("--data-share", type=float, default=0.13)
    ap.add_argument("--frac33", type=float, default=0.15, help="share of 33-frame DiT clips")
    ap.add_argument("--eval-seeds", type=int, default=6)
    ap.add_argument("--init-from", type=Path, default=None,
                    help="continue from a pretrained miniworld directory (a later stage): its VAE "
                         "encoder and latent statistics are kept, so its transformer stays valid")
    ap.add_argument("--decoder-minutes", type=float, default=0.0,
                    help="with --init-from: fine-tune the VAE decoder only, kept if held-out "
                         "reconstruction improves")
    ap.add_argument("--dit-lr", type=float, default=4e-4)
    args = ap.parse_args(argv)
    if args.init_from is not None:
        return continue_training(args)

    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "train_log.txt")
    budget = args.minutes * 60.0
    log(f"miniworld pretraining: budget {args.minutes} min, seed {args.seed}, threads {args.threads}, "
        f"torch {torch.__version__}")
    stack = build_miniworld_stack(args.seed)
    random_tr = copy.deepcopy(stack.transformer)
    sizes = {k: param_count(getattr(stack, k)) for k in ("transformer", "vae", "text_encoder", "image_encoder")}
    log(f"params: {sizes}")

    # (a) VAE
    vae_res = train_vae(stack, log, budget * args.vae_share, args.seed)
    heldout = [footage.HELDOUT_SEEDS[i] for i in range(args.eval_seeds)]
    vae_res["heldout_recon_psnr"] = eval_vae(stack, heldout)
    log(f"vae done: {vae_res}")

    # (b) latents: measure throughput, then fill the data budget
    sets, vset, empty, n17, n33 = _encode_dit_data(stack, log, args, budget * args.data_share)
    mean, std = set_latent_stats(stack, sets)
    log(f"latent stats: mean {np.round(mean, 3).tolist()} std {np.round(std, 3).tolist()}")
    # validation set: held-out seeds (never trained on), fixed noise and t
    val_batches = make_val_batches(stack, vset)

    # (c) transformer
    remaining = budget - log.elapsed()
    eval_reserve = max(90.0, budget * 0.04)
    dit_res = train_transformer(stack, log, max(60.0, remaining - eval_reserve), sets, val_batches, empty,
                                args.seed, lr=args.dit_lr)

    # save first (so a late failure in evaluation loses nothing), then evaluate the saved weights
    settings = {
        "seed": args.seed,
        "minutes_budget": args.minutes,
        "threads": args.threads,
        "shares": {"vae": args.vae_share, "data": args.data_share, "dit": "the rest"},
        "vae_train_seeds": "pretraining seeds [500000, 1000000), random draws from rng([seed, 1])",
        "dit_train_seeds": f"dit_seed(seed, i) = (seed*100003 + i) % 500000 for i < {n17 + n33}",
        "dit_clips": {"17": n17, "33": n33},
        "validation_seeds": "HELDOUT_SEEDS[500:532]",
        "eval_seeds": heldout,
        "heldout_range": [footage.HELDOUT_SEEDS.start, footage.HELDOUT_SEEDS.stop],
        "pretrain_range": [footage.PRETRAIN_SEEDS.start, footage.PRETRAIN_SEEDS.stop],
        "params": sizes,
        "storage_dtype": "float16",
        "vae": vae_res,
        "transformer": dit_res,
        "latents_mean": mean,
        "latents_std": std,
    }
    save_fp16(stack, out)
    return _evaluate_and_record(stack, out, log, random_tr, heldout, settings)


def _evaluate_and_record(stack, out: Path, log: Log, random_tr, heldout: list[int], settings: dict) -> int:
    """Evaluate the saved model exactly as shipped (float16-rounded weights), then write its
    settings with the evaluation beside the weights."""
    with torch.no_grad():
        for p in stack.transformer.parameters():
            p.copy_(p.half().float())
    settings["eval_17f"] = evaluate(stack, log, random_tr, heldout, 17)
    settings["wall_minutes"] = round(log.elapsed() / 60, 2)
    (out / "pretrain_settings.json").write_text(json.dumps(settings, indent=2))
    log(f"saved to {out} ({dir_size(out) / 1e6:.2f} MB); total {log.elapsed() / 60:.1f} min")
    return 0


def _encode_dit_data(stack, log: Log, args, budget_s: float, first_clip: int = 0):
    """Encode the transformer's pretraining clips within `budget_s` seconds (17-frame clips plus
    a share of 33-frame ones), the validation set and the empty caption."""
    t0 = time.time()
    probe = encode_clips(stack, [dit_seed(args.seed, first_clip + i) for i in range(8)], 17)
    per17 = (time.time() - t0) / 8
    n_total = max(64, int(budget_s / (per17 * (1 + args.frac33))))  # a 33-frame clip costs ~2x
    n33 = int(n_total * args.frac33)
    n17 = n_total - n33
    log(f"data: {per17:.3f} s/clip(17f) -> {n17} x 17-frame + {n33} x 33-frame clips")
    rest17 = encode_clips(stack, [dit_seed(args.seed, first_clip + i) for i in range(8, n17)], 17)
    set17 = LatentSet(17, torch.cat([probe.x0, rest17.x0]), torch.cat([probe.cond, rest17.cond]),
                      _cat_text(probe.text, rest17.text), torch.cat([probe.text_len, rest17.text_len]),
                      torch.cat([probe.image, rest17.image]), probe.seeds + rest17.seeds)
    sets = [set17]
    if n33 >= 8:
        sets.append(encode_clips(stack, [dit_seed(args.seed, first_clip + n17 + i) for i in range(n33)], 33))
    vset = encode_clips(stack, [footage.HELDOUT_SEEDS[500 + i] for i in range(32)], 17)
    from lorafx.server.method.encode import encode_prompt
    et = encode_prompt(stack, [""])
    empty = (et[:, :8], int((et.abs().amax(-1) > 0).sum()))
    log(f"data done in {time.time() - t0:.0f}s")
    return sets, vset, empty, n17, n33 if n33 >= 8 else 0


def continue_training(args) -> int:
    """A later pretraining stage on top of a shipped miniworld stack: optionally sharpen the VAE
    decoder (encoder frozen), then continue the transformer on freshly drawn clips with a new
    warm-up + cosine schedule. The previous stage's log and settings are kept beside the new."""
    from .model import load_miniworld

    torch.set_num_threads(args.threads)
    src: Path = args.init_from.resolve()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    prev_settings = json.loads((src / "pretrain_settings.json").read_text())
    prev_logs = {p.name: p.read_text() for p in sorted(src.glob("train_log*.txt"))}
    log = Log(out / "train_log.txt")
    budget = args.minutes * 60.0
    log(f"miniworld pretraining, continued from {src.name} (stage {len(prev_logs) + 1}): budget "
        f"{args.minutes} min, seed {args.seed}, threads {args.threads}, torch {torch.__version__}")
    stack = load_miniworld(path=src)
    random_tr = build_miniworld_stack(args.seed).transformer
    heldout = [footage.HELDOUT_SEEDS[i] for i in range(args.eval_seeds)]
    settings = {"continued_from": prev_settings, "seed": args.seed, "minutes_budget": args.minutes,
                "threads": args.threads, "storage_dtype": "float16",
                "latents_mean": stack.vae.config.latents_mean, "latents_std": stack.vae.config.latents_std,
                "validation_seeds": "HELDOUT_SEEDS[500:532]", "eval_seeds": heldout,
                "heldout_range": [footage.HELDOUT_SEEDS.start, footage.HELDOUT_SEEDS.stop],
                "pretrain_range": [footage.PRETRAIN_SEEDS.start, footage.PRETRAIN_SEEDS.stop],
                "params": prev_settings.get("params")}

    if args.decoder_minutes > 0:
        before = eval_vae(stack, heldout)
        keep = copy.deepcopy(stack.vae.state_dict())
        res = finetune_decoder(stack, log, args.decoder_minutes * 60.0, args.seed)
        after = eval_vae(stack, heldout)
        res.update(heldout_recon_psnr_before=round(before, 3), heldout_recon_psnr_after=round(after, 3),
                   kept=after > before)
        if after <= before:
            stack.vae.load_state_dict(keep)
        log(f"decoder done: {res}")
        settings["decoder_finetune"] = res

    # fresh clips: continue the clip index past the previous stage's
    used = sum(prev_settings.get("dit_clips", {}).values())
    sets, vset, empty, n17, n33 = _encode_dit_data(stack, log, args, budget * args.data_share, first_clip=used)
    val_batches = make_val_batches(stack, vset)
    settings["dit_train_seeds"] = f"dit_seed(seed, i) for {used} <= i < {used + n17 + n33}"
    settings["dit_clips"] = {"17": n17, "33": n33}
    remaining = budget - log.elapsed()
    eval_reserve = max(90.0, budget * 0.04)
    settings["transformer"] = train_transformer(stack, log, max(min(60.0, budget / 3), remaining - eval_reserve), sets,
                                                val_batches, empty, args.seed, lr=args.dit_lr)
    save_fp16(stack, out)
    for name, text in prev_logs.items():
        stem = name[:-4] if name != "train_log.txt" else f"train_log_stage{len(prev_logs)}"
        (out / f"{stem}.txt").write_text(text)
    return _evaluate_and_record(stack, out, log, random_tr, heldout, settings)


def _cat_text(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lc = max(a.shape[1], b.shape[1])
    return torch.cat([F.pad(a, (0, 0, 0, lc - a.shape[1])), F.pad(b, (0, 0, 0, lc - b.shape[1]))])


if __name__ == "__main__":
    sys.exit(main())
