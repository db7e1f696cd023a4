"""Deterministic synthetic footage with ground-truth edits (the lorafx "miniature world").

Every clip is a pure function of an integer seed (plus frame count / size / edit kind): a textured
background seen through a gently panning camera, and 2-4 textured objects (circle, square,
triangle, blob; plain / stripes / checks / dots; a named palette of colours) that translate,
rotate, pulse (scale) and squash, and occlude one another in a fixed depth order.

One object is the *edit target*. A :class:`Shot` carries

* ``source``  (F,H,W,3) float32 RGB in [0,1] -- the clip;
* ``matte``   (F,H,W) float32 in [0,1] -- the target's *visible* coverage in ``source``
  (1 = the object, i.e. the region to change; ``keep = 1 - matte`` in lorafx's mask convention);
* ``edited``  (F,H,W,3) -- the same clip re-rendered with the target recoloured, retextured or
  replaced by another shape (everything else bit-identical): what a perfect propagation of the
  frame-1 edit looks like;
* ``edit_matte`` (F,H,W) -- where ``edited`` may differ from ``source``: equal to ``matte`` for
  recolour / retexture, the union (max) of the source and edited target coverage for replace;
* ``caption`` / ``edited_caption`` -- e.g. "a red striped circle moving left over a blue gradient".

Anti-aliasing / partial coverage: object coverage is computed analytically from an (approximate)
signed distance, ``alpha = clip(0.5 - d_px, 0, 1)``, so edge pixels have fractional alpha
(a ~1 px ramp). Objects are composited back-to-front with the *over* operator using exactly these
alphas, and the matte is the exact compositing weight of the target,
``alpha_target * prod(1 - alpha_above)``. Consequently ``edited`` equals ``source`` bit for bit
wherever ``edit_matte == 0`` (no dilation is actually needed), and fractional matte values occur
only on the ~1 px anti-aliased rim and where an occluder's anti-aliased rim crosses the target.

Seeds: pretraining uses seeds in ``PRETRAIN_SEEDS`` = [0, 1_000_000) (the transformer's clips
from [0, 500_000), the VAE's from [500_000, 1_000_000)); the quality harness uses
``HELDOUT_SEEDS`` = [10_000_000, 10_001_000). The ranges are disjoint. Pretraining never trains on a
held-out seed; it only monitors its validation loss (and picks EMA vs raw weights) on
HELDOUT_SEEDS[500:532] and reports sample PSNR on HELDOUT_SEEDS[0:6]. Every random draw is from
``np.random.default_rng`` seeded by the clip seed, so no state leaks between clips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

__all__ = [
    "COLOURS",
    "PATTERNS",
    "SHAPES",
    "BACKGROUNDS",
    "EDIT_KINDS",
    "PRETRAIN_SEEDS",
    "HELDOUT_SEEDS",
    "VOCABULARY",
    "ObjectSpec",
    "SceneSpec",
    "Shot",
    "sample_scene",
    "edit_scene",
    "render",
    "make_shot",
    "make_clip",
    "caption_for",
    "is_heldout",
    "heldout_shots",
]

# --------------------------------------------------------------------------------------------
# vocabulary
# --------------------------------------------------------------------------------------------

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.14, 0.12),
    "orange": (0.95, 0.52, 0.08),
    "yellow": (0.95, 0.88, 0.15),
    "green": (0.15, 0.72, 0.22),
    "cyan": (0.12, 0.80, 0.85),
    "blue": (0.14, 0.25, 0.88),
    "purple": (0.55, 0.18, 0.78),
    "pink": (0.97, 0.50, 0.72),
    "white": (0.96, 0.96, 0.94),
    "black": (0.06, 0.06, 0.07),
}
# Background tints are drawn from a muted subset so objects stay legible.
BG_COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "grey")
_BG_RGB = {**COLOURS, "grey": (0.5, 0.5, 0.5)}

SHAPES = ("circle", "square", "triangle", "blob")
PATTERNS = ("plain", "striped", "checked", "dotted")
BACKGROUNDS = ("gradient", "stripes", "noise")
EDIT_KINDS = ("recolour", "retexture", "replace")

EditKind = Literal["recolour", "retexture", "replace"]

_DIRECTIONS = ("left", "right", "up", "down")

#: Every word a caption can contain (plus the LoRA-Edit trigger token ``p3rs0n`` and ","),
#: used by the tiny model's WordLevel tokenizer.
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["a", "an", "and", "over", "moving", "slowly", "quickly", "spinning", "the", "of", "with",
         "background", "p3rs0n", ",", ".", "grey", "object", "shape", "video", "frame"]
        + list(COLOURS)
        + list(BG_COLOURS)
        + list(SHAPES)
        + list(PATTERNS)
        + ["gradient", "stripes", "noise", "noisy", "texture"]
        + list(_DIRECTIONS)
    )
)

PRETRAIN_SEEDS = range(0, 1_000_000)
HELDOUT_SEEDS = range(10_000_000, 10_001_000)


def is_heldout(seed: int) -> bool:
    return seed in HELDOUT_SEEDS


# --------------------------------------------------------------------------------------------
# scene description
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    pattern: str
    colour: str  # primary colour name
    colour2: str  # secondary (pattern) colour name
    rgb: tuple[float, float, float]  # jittered primary
    rgb2: tuple[float, float, float]
    # motion, in "world" pixels of a 64 px reference frame (scaled to the render size)
    x0: float
    y0: float
    vx: float  # px / frame
    vy: float
    ax: float  # small curvature, px / frame^2
    ay: float
    radius: float
    angle0: float
    spin: float  # rad / frame
    pulse_amp: float  # relative scale oscillation
    squash_amp: float  # relative anisotropic squash oscillation
    wobble_freq: float  # rad / frame
    wobble_phase: float
    period: float  # pattern period (world px)
    pattern_angle: float
    blob_coeffs: tuple[float, ...] = ()  # (a2, p2, a3, p3, a5, p5) for blobs


@dataclass(frozen=True)
class SceneSpec:
    seed: int
    background: str
    bg_colour: str
    bg_colour2: str
    bg_rgb: tuple[float, float, float]
    bg_rgb2: tuple[float, float, float]
    bg_angle: float
    bg_period: float
    bg_noise: tuple[int, ...]  # seed material for the smooth noise field
    cam_x: float  # camera pan velocity (px / frame)
    cam_y: float
    objects: tuple[ObjectSpec, ...]  # back to front
    target: int  # index into objects of the edit target


@dataclass
class Shot:
    """One clip with its target matte, ground-truth edit and captions."""

    seed: int
    source: np.ndarray  # (F,H,W,3) float32 [0,1]
    matte: np.ndarray  # (F,H,W) float32 [0,1], 1 = target object (region to change)
    edited: np.ndarray  # (F,H,W,3) float32 [0,1]
    edit_matte: np.ndarray  # (F,H,W) float32, where edited may differ from source
    caption: str
    edited_caption: str
    edit_kind: str
    scene: SceneSpec
    edited_scene: SceneSpec
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.source.shape[0])

    @property
    def keep(self) -> np.ndarray:
        """lorafx keep mask (1 = keep, 0 = generate) = 1 - matte."""
        return 1.0 - self.matte

    def as_tensors(self):
        """torch views in lorafx's method layout: source/edited [F,3,H,W] in [-1,1],
        matte/edit_matte [F,H,W] in [0,1]."""
        import torch

        def vid(a):
            return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))) * 2.0 - 1.0

        return {
            "source": vid(self.source),
            "edited": vid(self.edited),
            "matte": torch.from_numpy(self.matte.copy()),
            "edit_matte": torch.from_numpy(self.edit_matte.copy()),
        }


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, rgb, amount=0.06):
    c = np.asarray(rgb) + rng.uniform(-amount, amount, 3)
    return tuple(float(v) for v in np.clip(c, 0.0, 1.0))


def _sample_object(rng: np.random.Generator, frames_ref: int, is_target: bool) -> ObjectSpec:
    shape = SHAPES[rng.integers(len(SHAPES))]
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    names = list(COLOURS)
    colour = names[rng.integers(len(names))]
    colour2 = names[rng.integers(len(names))]
    while colour2 == colour:
        colour2 = names[rng.integers(len(names))]
    radius = float(rng.uniform(11.0, 16.0) if is_target else rng.uniform(7.0, 12.0))
    # motion: the total displacement over the reference duration (16 frame steps) is 8..22 px
    # in a random direction; the start point is chosen so that the path stays in frame.
    speed = float(rng.uniform(0.5, 1.4))
    ang = float(rng.uniform(0, 2 * math.pi))
    vx, vy = speed * math.cos(ang), speed * math.sin(ang)
    ax, ay = (float(v) for v in rng.uniform(-0.02, 0.02, 2))
    T = frames_ref - 1
    ex, ey = vx * T + ax * T * T / 2, vy * T + ay * T * T / 2
    margin = radius * 0.6 if is_target else 0.0
    lo_x, hi_x = margin - min(0.0, ex), 64 - margin - max(0.0, ex)
    lo_y, hi_y = margin - min(0.0, ey), 64 - margin - max(0.0, ey)
    x0 = float(rng.uniform(lo_x, hi_x)) if hi_x > lo_x else 32.0 - ex / 2
    y0 = float(rng.uniform(lo_y, hi_y)) if hi_y > lo_y else 32.0 - ey / 2
    blob = ()
    if shape == "blob":
        blob = tuple(
            float(v)
            for v in (rng.uniform(0.05, 0.15), rng.uniform(0, 6.3), rng.uniform(0.05, 0.15),
                      rng.uniform(0, 6.3), rng.uniform(0.0, 0.06), rng.uniform(0, 6.3))
        )
    return ObjectSpec(
        shape=shape,
        pattern=pattern,
        colour=colour,
        colour2=colour2,
        rgb=_jitter(rng, COLOURS[colour]),
        rgb2=_jitter(rng, COLOURS[colour2]),
        x0=x0, y0=y0, vx=vx, vy=vy, ax=ax, ay=ay,
        radius=radius,
        angle0=float(rng.uniform(0, 2 * math.pi)),
        spin=float(rng.choice([-1, 1]) * rng.uniform(0.0, 0.12)),
        pulse_amp=float(rng.uniform(0.0, 0.15)),
        squash_amp=float(rng.uniform(0.0, 0.2)),
        wobble_freq=float(rng.uniform(0.15, 0.5)),
        wobble_phase=float(rng.uniform(0, 2 * math.pi)),
        period=float(rng.uniform(9.0, 14.0)),
        pattern_angle=float(rng.uniform(0, math.pi)),
        blob_coeffs=blob,
    )


def sample_scene(seed: int, num_objects: int | None = None) -> SceneSpec:
    """The scene for ``seed`` (independent of frame count and resolution)."""
    rng = np.random.default_rng([int(seed), 0x6D77])  # "mw"
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    c1 = BG_COLOURS[rng.integers(len(BG_COLOURS))]
    c2 = BG_COLOURS[rng.integers(len(BG_COLOURS))]
    while c2 == c1:
        c2 = BG_COLOURS[rng.integers(len(BG_COLOURS))]
    # muted background: pull towards grey
    rgb1 = tuple(float(v) for v in 0.55 * np.asarray(_BG_RGB[c1]) + 0.45 * 0.5)
    rgb2 = tuple(float(v) for v in 0.55 * np.asarray(_BG_RGB[c2]) + 0.45 * 0.5)
    n = int(num_objects if num_objects is not None else rng.integers(2, 5))
    target = int(rng.integers(n))
    objects = tuple(_sample_object(rng, 17, i == target) for i in range(n))
    pan = float(rng.uniform(0.0, 0.35))
    pan_ang = float(rng.uniform(0, 2 * math.pi))
    return SceneSpec(
        seed=int(seed),
        background=background,
        bg_colour=c1,
        bg_colour2=c2,
        bg_rgb=_jitter(rng, rgb1, 0.03),
        bg_rgb2=_jitter(rng, rgb2, 0.03),
        bg_angle=float(rng.uniform(0, math.pi)),
        bg_period=float(rng.uniform(14.0, 24.0)),
        bg_noise=tuple(int(v) for v in rng.integers(0, 2**31 - 1, 2)),
        cam_x=pan * math.cos(pan_ang),
        cam_y=pan * math.sin(pan_ang),
        objects=objects,
        target=target,
    )


def edit_scene(scene: SceneSpec, kind: EditKind, seed: int | None = None) -> SceneSpec:
    """The scene with its target recoloured, retextured or replaced by another shape."""
    if kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")
    rng = np.random.default_rng([int(scene.seed if seed is None else seed), 0x6564, EDIT_KINDS.index(kind)])
    obj = scene.objects[scene.target]
    if kind == "recolour":
        names = [c for c in COLOURS if c not in (obj.colour, obj.colour2)]
        new = names[rng.integers(len(names))]
        new_obj = replace(obj, colour=new, rgb=_jitter(rng, COLOURS[new]))
        if obj.pattern == "plain":
            pass
    elif kind == "retexture":
        pats = [p for p in PATTERNS if p != obj.pattern]
        new_pat = pats[rng.integers(len(pats))]
        new_obj = replace(obj, pattern=new_pat, period=float(rng.uniform(9.0, 14.0)),
                          pattern_angle=float(rng.uniform(0, math.pi)))
    else:
        shapes = [s for s in SHAPES if s != obj.shape]
        new_shape = shapes[rng.integers(len(shapes))]
        blob = obj.blob_coeffs
        if new_shape == "blob" and not blob:
            blob = tuple(
                float(v)
                for v in (rng.uniform(0.05, 0.15), rng.uniform(0, 6.3), rng.uniform(0.05, 0.15),
                          rng.uniform(0, 6.3), rng.uniform(0.0, 0.06), rng.uniform(0, 6.3))
            )
        new_obj = replace(obj, shape=new_shape, blob_coeffs=blob)
    objects = list(scene.objects)
    objects[scene.target] = new_obj
    return replace(scene, objects=tuple(objects))


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _smooth_noise(seed_material: tuple[int, ...], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0,1] evaluated at world coordinates (two octaves, bicubic-ish)."""
    rng = np.random.default_rng(list(seed_material))
    out = np.zeros_like(xs)
    for cell, weight in ((22.0, 0.7), (11.0, 0.3)):
        g = rng.random((24, 24)).astype(np.float64)
        u = xs / cell + 8.0
        v = ys / cell + 8.0
        iu = np.floor(u).astype(np.int64)
        iv = np.floor(v).astype(np.int64)
        fu = u - iu
        fv = v - iv
        fu = fu * fu * (3 - 2 * fu)
        fv = fv * fv * (3 - 2 * fv)
        iu %= 24
        iv %= 24
        iu1 = (iu + 1) % 24
        iv1 = (iv + 1) % 24
        a = g[iv, iu] * (1 - fu) + g[iv, iu1] * fu
        b = g[iv1, iu] * (1 - fu) + g[iv1, iu1] * fu
        out += weight * (a * (1 - fv) + b * fv)
    return out


def _band(x: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased square wave in [0,1] of a periodic coordinate x (period 1); px = width of one
    pixel in units of x."""
    s = np.sin(2 * math.pi * x)
    slope = 2 * math.pi * max(px, 1e-6)
    return np.clip(0.5 + s / (2 * slope) * 1.0, 0.0, 1.0)


def _background(scene: SceneSpec, xs: np.ndarray, ys: np.ndarray, px: float) -> np.ndarray:
    c1 = np.asarray(scene.bg_rgb)
    c2 = np.asarray(scene.bg_rgb2)
    ca, sa = math.cos(scene.bg_angle), math.sin(scene.bg_angle)
    proj = xs * ca + ys * sa
    if scene.background == "gradient":
        w = np.clip(0.5 + proj / 90.0, 0.0, 1.0)
    elif scene.background == "stripes":
        w = 0.15 + 0.7 * _band(proj / scene.bg_period, px / scene.bg_period)
    else:  # noise
        w = _smooth_noise(scene.bg_noise, xs, ys)
        w = np.clip((w - 0.5) * 1.6 + 0.5, 0.0, 1.0)
    return c1 * (1 - w[..., None]) + c2 * w[..., None]


def _object_layer(obj: ObjectSpec, t: float, xs: np.ndarray, ys: np.ndarray, px: float):
    """alpha (H,W) and colour (H,W,3) of one object at frame time t (world coords xs, ys)."""
    cx = obj.x0 + obj.vx * t + 0.5 * obj.ax * t * t
    cy = obj.y0 + obj.vy * t + 0.5 * obj.ay * t * t
    ph = obj.wobble_freq * t + obj.wobble_phase
    scale = obj.radius * (1.0 + obj.pulse_amp * math.sin(ph))
    sx = scale * (1.0 + obj.squash_amp * math.sin(ph * 1.3 + 1.0))
    sy = scale / (1.0 + obj.squash_amp * math.sin(ph * 1.3 + 1.0))
    th = obj.angle0 + obj.spin * t
    c, s = math.cos(th), math.sin(th)
    dx, dy = xs - cx, ys - cy
    u = (c * dx + s * dy) / sx  # object-local, unit radius
    v = (-s * dx + c * dy) / sy
    if obj.shape == "circle":
        d = np.sqrt(u * u + v * v) - 1.0
    elif obj.shape == "square":
        k = 0.82  # half side in unit radius
        qx, qy = np.abs(u) - k, np.abs(v) - k
        d = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0)
    elif obj.shape == "triangle":
        # equilateral triangle, circumradius 1.1, exact sdf (Inigo Quilez, sdEquilateralTriangle)
        k3 = math.sqrt(3.0)
        r = 1.1 * k3 / 2  # half side
        qx = np.abs(u) - r
        qy = v + r / k3
        flip = qx + k3 * qy > 0
        qx2 = np.where(flip, (qx - k3 * qy) / 2, qx)
        qy2 = np.where(flip, (-k3 * qx - qy) / 2, qy)
        qx2 = qx2 - np.clip(qx2, -2 * r, 0.0)
        d = -np.sqrt(qx2 * qx2 + qy2 * qy2) * np.sign(qy2)
    else:  # blob
        a2, p2, a3, p3, a5, p5 = obj.blob_coeffs
        rho = np.sqrt(u * u + v * v)
        phi = np.arctan2(v, u)
        rr = 1.0 + a2 * np.sin(2 * phi + p2) + a3 * np.sin(3 * phi + p3) + a5 * np.sin(5 * phi + p5)
        d = (rho - rr) / (1.0 + 2 * a2 + 3 * a3 + 5 * a5) * 1.0
    # distance in pixels: local units * (geometric mean scale) / pixel size
    d_px = d * math.sqrt(sx * sy) / px
    alpha = np.clip(0.5 - d_px, 0.0, 1.0)

    # texture in object-local coordinates (moves / rotates / squashes with the object)
    p_units = obj.period / obj.radius  # period in local units
    pxl = px / scale
    ca, sa = math.cos(obj.pattern_angle), math.sin(obj.pattern_angle)
    pu = u * ca + v * sa
    pv = -u * sa + v * ca
    if obj.pattern == "plain":
        w = np.zeros_like(u)
    elif obj.pattern == "striped":
        w = _band(pu / p_units, pxl / p_units)
    elif obj.pattern == "checked":
        a = _band(pu / p_units, pxl / p_units) * 2 - 1
        b = _band(pv / p_units, pxl / p_units) * 2 - 1
        w = 0.5 - 0.5 * a * b
    else:  # dotted
        gu = (pu / p_units) % 1.0 - 0.5
        gv = (pv / p_units) % 1.0 - 0.5
        dd = np.sqrt(gu * gu + gv * gv) - 0.28
        w = np.clip(0.5 - dd * p_units / pxl, 0.0, 1.0)
    col = np.asarray(obj.rgb) * (1 - w[..., None]) + np.asarray(obj.rgb2) * w[..., None]
    # soft shading so the objects read as solid: a slight radial darkening
    rho2 = np.clip(u * u + v * v, 0.0, 1.5)
    col = col * (1.0 - 0.12 * rho2[..., None])
    return alpha, col


def render(scene: SceneSpec, frames: int = 17, size: int = 64, *, time_scale: float | None = None,
           t_offset: float = 0.0):
    """Render ``scene``: returns (video (F,H,W,3) float32 [0,1], target matte (F,H,W) float32).

    Motion parameters are defined for a 64 px frame and 17 frames; other sizes scale space (so
    a 96 px clip shows the same content at higher resolution) and ``time_scale`` (default
    16 / (frames - 1)) scales time, so a 33-frame clip shows the same motion at twice the frame
    rate. Pass ``time_scale=1.0`` to keep per-frame speeds (longer clips then travel further).
    ``t_offset`` starts the clip later (in reference frames).
    """
    if frames < 1 or size < 8:
        raise ValueError("frames >= 1 and size >= 8 required")
    ts = (16.0 / (frames - 1) if frames > 1 else 1.0) if time_scale is None else float(time_scale)
    px = 64.0 / size  # world px per image pixel
    coords = (np.arange(size, dtype=np.float64) + 0.5) * px
    gx, gy = np.meshgrid(coords, coords)
    video = np.empty((frames, size, size, 3), np.float32)
    matte = np.empty((frames, size, size), np.float32)
    for f in range(frames):
        t = t_offset + f * ts
        ox, oy = scene.cam_x * t, scene.cam_y * t  # camera pan: world = screen + offset
        wx, wy = gx + ox, gy + oy
        img = _background(scene, wx, wy, px)
        vis = np.zeros((size, size))
        for i, obj in enumerate(scene.objects):
            # objects move in world coordinates; the camera pans over the whole scene
            a, col = _object_layer(obj, t, wx, wy, px)
            img = img * (1.0 - a[..., None]) + col * a[..., None]
            if i == scene.target:
                vis = a.copy()
            elif i > scene.target:
                vis = vis * (1.0 - a)
        video[f] = np.clip(img, 0.0, 1.0)
        matte[f] = vis
    return video, matte


# --------------------------------------------------------------------------------------------
# captions
# --------------------------------------------------------------------------------------------


def _direction(scene: SceneSpec, obj: ObjectSpec) -> str:
    T = 16.0
    dx = obj.vx * T + 0.5 * obj.ax * T * T - scene.cam_x * T  # screen-space displacement
    dy = obj.vy * T + 0.5 * obj.ay * T * T - scene.cam_y * T
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "up" if dy < 0 else "down"


def _describe(obj: ObjectSpec) -> str:
    pat = "" if obj.pattern == "plain" else obj.pattern + " "
    return f"{obj.colour} {pat}{obj.shape}"


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def caption_for(scene: SceneSpec) -> str:
    """Caption naming the target (with its motion), the other objects and the background."""
    tgt = scene.objects[scene.target]
    d = _describe(tgt)
    parts = [f"{_article(d)} {d} moving {_direction(scene, tgt)}"]
    for i, o in enumerate(scene.objects):
        if i != scene.target:
            od = _describe(o)
            parts.append(f"{_article(od)} {od}")
    if scene.background == "gradient":
        bg = f"{_article(scene.bg_colour)} {scene.bg_colour} gradient"
    elif scene.background == "stripes":
        bg = f"{scene.bg_colour} and {scene.bg_colour2} stripes"
    else:
        bg = f"{scene.bg_colour} noise"
    return " and ".join(parts) + f" over {bg}"


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


def make_clip(seed: int, frames: int = 17, size: int = 64):
    """(video, caption) only -- the cheap path used for pretraining."""
    scene = sample_scene(seed)
    video, _ = render(scene, frames, size)
    return video, caption_for(scene)


def make_shot(seed: int, frames: int = 17, size: int = 64, edit: EditKind | None = None) -> Shot:
    """The full :class:`Shot` for ``seed``. ``edit`` defaults to a seed-determined kind."""
    if frames not in (17, 33) and (frames - 1) % 4 != 0:
        raise ValueError("frames must be 4k+1 (17 or 33 are the standard lengths)")
    scene = sample_scene(seed)
    kind = edit if edit is not None else EDIT_KINDS[int(np.random.default_rng([seed, 0x6B]).integers(3))]
    escene = edit_scene(scene, kind)
    source, matte = render(scene, frames, size)
    edited, ematte = render(escene, frames, size)
    edit_matte = matte if kind != "replace" else np.maximum(matte, ematte)
    return Shot(
        seed=int(seed),
        source=source,
        matte=matte,
        edited=edited,
        edit_matte=edit_matte.astype(np.float32),
        caption=caption_for(scene),
        edited_caption=caption_for(escene),
        edit_kind=kind,
        scene=scene,
        edited_scene=escene,
        meta={"frames": frames, "size": size, "heldout": is_heldout(seed)},
    )


def heldout_shots(n: int = 8, frames: int = 17, size: int = 64, edit: EditKind | None = None) -> list[Shot]:
    """The first ``n`` held-out shots (seeds HELDOUT_SEEDS[0..n))."""
    return [make_shot(HELDOUT_SEEDS[i], frames, size, edit) for i in range(n)]
