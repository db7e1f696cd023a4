"""Plate colour <-> model colour through OpenColorIO.

The model sees display-encoded RGB in [0, 1] (the method maps that to [-1, 1] itself). Plates are
scene-linear and hold values above 1.0 (and a few below 0). Those cannot reach the model as they
are, and must never be clipped silently:

- ``highlight_mode="clip"`` (default): plate -> model space, then clip to [0, 1]. The clipping is
  measured (inside the matte when one is given) and returned as `ClipStats`, to be written into
  the output EXR's metadata. Clipped values do not come back: this mode suits plates whose edit
  region holds no highlights worth keeping.
- ``highlight_mode="shaper"``: in a scene-linear *shaper space* (by default "Linear Rec.709
  (sRGB)", the linear form of the model space, so no gamut change follows the shaper), each channel
  goes through an invertible soft knee that is the identity up to `knee` and maps [knee, inf)
  into [knee, 1): ``y = k + (1-k) t/(1+t)`` with ``t = (x-k)/(1-k)``. The curve has slope 1 at the
  knee (no kink) and a slow, rational tail, so a value of 16 still lands 2.6e-3 below 1.0 and
  survives float32 and the display encoding. The way back inverts it exactly. Negative values
  are below the model's range in both modes: they are clipped to 0 and counted.

Colour space names are checked against the config (aliases and roles accepted); a wrong name
raises InvalidInput listing the closest names the config has.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field

import numpy as np
import PyOpenColorIO as ocio

from lorafx.errors import InvalidInput

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_PLATE_SPACE",
    "DEFAULT_MODEL_SPACE",
    "DEFAULT_SHAPER_SPACE",
    "ColourSettings",
    "ClipStats",
    "ColourTransform",
    "shaper_forward",
    "shaper_inverse",
    "load_config",
    "resolve_colourspace",
]

DEFAULT_CONFIG = "ocio://default"  # OCIO's built-in CG config (ACES 2.1 / OCIO 2.6 here)
DEFAULT_PLATE_SPACE = "Linear Rec.709 (sRGB)"
DEFAULT_MODEL_SPACE = "sRGB Encoded Rec.709 (sRGB)"
DEFAULT_SHAPER_SPACE = "Linear Rec.709 (sRGB)"
HIGHLIGHT_MODES = ("clip", "shaper")
HALF_MAX = 65504.0


@dataclass(frozen=True)
class ColourSettings:
    """Where the plate's colours live and how they reach the model.

    `config` is any OCIO config path or URI (`ocio://default`, `ocio://studio-config-latest`, a
    studio's config.ocio). `plate_space` is the plate's colour space in that config (an ACES
    shot: "ACEScg" or "ACES2065-1"). `model_space` is the display encoding the model was trained
    on. `shaper_space` (shaper mode only) must be scene-linear; None picks
    DEFAULT_SHAPER_SPACE when the config has it, else the config's `scene_linear` role."""

    config: str = DEFAULT_CONFIG
    plate_space: str = DEFAULT_PLATE_SPACE
    model_space: str = DEFAULT_MODEL_SPACE
    highlight_mode: str = "clip"
    knee: float = 0.8
    shaper_space: str | None = None

    def __post_init__(self):
        if self.highlight_mode not in HIGHLIGHT_MODES:
            raise InvalidInput(f"highlight_mode must be one of {', '.join(HIGHLIGHT_MODES)}, "
                               f"got {self.highlight_mode!r}", highlight_mode=self.highlight_mode)
        if not 0.0 < self.knee < 1.0:
            raise InvalidInput(f"shaper knee must lie in (0, 1), got {self.knee}", knee=self.knee)


# ---------------------------------------------------------------------------------------------
# The shaper


def shaper_forward(x: np.ndarray, knee: float = 0.8) -> np.ndarray:
    """Soft-knee compression: identity below `knee`, [knee, inf) -> [knee, 1). In place safe."""
    x = np.asarray(x, dtype=np.float32)
    span = np.float32(1.0 - knee)
    t = np.maximum(x - np.float32(knee), 0.0) / span
    return np.where(x > knee, np.float32(knee) + span * (t / (1.0 + t)), x).astype(np.float32)


def shaper_inverse(y: np.ndarray, knee: float = 0.8, max_value: float = HALF_MAX) -> np.ndarray:
    """Exact inverse of `shaper_forward`. Values at or above 1.0 (the curve's asymptote, which a
    model can output) map to `max_value` instead of infinity."""
    y = np.asarray(y, dtype=np.float32)
    span = 1.0 - knee
    # float64: near the asymptote 1/(1-s) needs more than float32 to stay accurate.
    ceiling = knee + span * (1.0 - 1.0 / (1.0 + (max_value - knee) / span))
    s = (np.minimum(y.astype(np.float64), ceiling) - knee) / span
    x = knee + span * (np.maximum(s, 0.0) / (1.0 - s))
    x = np.minimum(x, max_value)
    return np.where(y > knee, x, y).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Config and names


@functools.lru_cache(maxsize=8)
def load_config(config: str) -> "ocio.Config":
    """Load an OCIO config from a path or `ocio://` URI (cached), with a clear error."""
    try:
        return ocio.Config.CreateFromFile(str(config))
    except Exception as exc:  # OCIO raises its own exception family
        builtin = [name for name, *_ in ocio.BuiltinConfigRegistry().getBuiltinConfigs()]
        raise InvalidInput(
            f"cannot load OCIO config {config!r}: {str(exc).rstrip('.')}. Built-in configs: ocio://default, "
            f"ocio://cg-config-latest, ocio://studio-config-latest, "
            + ", ".join(f"ocio://{n}" for n in builtin), config=str(config)) from None


def _known_names(cfg) -> list[str]:
    names = []
    for cs in cfg.getColorSpaces():
        names.append(cs.getName())
        names.extend(cs.getAliases())
    names.extend(role for role, _ in cfg.getRoles())
    return names


def resolve_colourspace(cfg, name: str, what: str, config_name: str = "") -> str:
    """The canonical colour space name for `name` (an alias or role is accepted)."""
    cs = cfg.getColorSpace(name) if name else None
    if cs is not None:
        return cs.getName()
    known = _known_names(cfg)
    by_lower = {n.lower(): n for n in known}
    close = difflib.get_close_matches(name, known, n=6, cutoff=0.4)
    close += [n for lo, n in by_lower.items() if name and name.lower() in lo and n not in close]
    hint = f"; did you mean: {', '.join(repr(n) for n in close[:8])}" if close else ""
    canon = [cs.getName() for cs in cfg.getColorSpaces()]
    raise InvalidInput(
        f"{what} {name!r} is not a colour space of OCIO config {config_name or cfg.getName()}"
        f"{hint}. The config has: {', '.join(canon)}",
        colourspace=name, suggestions=close[:8])


# ---------------------------------------------------------------------------------------------
# Stats


@dataclass
class ClipStats:
    """What the trip into model space did to out-of-range values, measured where it matters
    (the matte when one is given, else every pixel). Fractions count pixels with any channel out
    of range; values are in the model's display encoding (before clipping)."""

    mode: str = "clip"
    pixels: int = 0
    above: int = 0  # pixels with a channel > 1 (clip mode: lost; shaper: none)
    below: int = 0  # pixels with a channel < 0 (clipped in both modes)
    max_value: float = float("-inf")
    min_value: float = float("inf")
    plate_max: float = float("-inf")  # shaper mode: max of the whole input in shaper space

    @property
    def above_fraction(self) -> float:
        return self.above / self.pixels if self.pixels else 0.0

    @property
    def below_fraction(self) -> float:
        return self.below / self.pixels if self.pixels else 0.0

    def merge(self, other: "ClipStats") -> "ClipStats":
        return ClipStats(
            mode=self.mode, pixels=self.pixels + other.pixels, above=self.above + other.above,
            below=self.below + other.below, max_value=max(self.max_value, other.max_value),
            min_value=min(self.min_value, other.min_value),
            plate_max=max(self.plate_max, other.plate_max))

    def as_metadata(self) -> dict:
        """Typed EXR attributes (write_exr_atomic adds the `lorafx/` prefix)."""
        finite = lambda v: float(v) if np.isfinite(v) else 0.0  # noqa: E731
        return {
            "colour/highlight_mode": self.mode,
            "colour/clipped_above_fraction": float(self.above_fraction),
            "colour/clipped_below_fraction": float(self.below_fraction),
            "colour/model_max": finite(self.max_value),
            "colour/model_min": finite(self.min_value),
        }


# ---------------------------------------------------------------------------------------------
# The transform


@dataclass
class ColourTransform:
    """Validated processors for one ColourSettings. Arrays are (..., 3) float32 RGB."""

    settings: ColourSettings = field(default_factory=ColourSettings)

    def __post_init__(self):
        s = self.settings
        cfg = load_config(s.config)
        self.plate_space = resolve_colourspace(cfg, s.plate_space, "plate colour space", s.config)
        self.model_space = resolve_colourspace(cfg, s.model_space, "model colour space", s.config)
        lossless = ocio.OPTIMIZATION_LOSSLESS  # round trips must not drift

        def cpu(src, dst):
            return cfg.getProcessor(src, dst).getOptimizedCPUProcessor(lossless)

        if s.highlight_mode == "shaper":
            if s.shaper_space:
                shaper = resolve_colourspace(cfg, s.shaper_space, "shaper colour space", s.config)
            elif cfg.getColorSpace(DEFAULT_SHAPER_SPACE) is not None:
                shaper = cfg.getColorSpace(DEFAULT_SHAPER_SPACE).getName()
            else:
                shaper = resolve_colourspace(cfg, "scene_linear", "shaper colour space", s.config)
            encoding = cfg.getColorSpace(shaper).getEncoding()
            if encoding and encoding != "scene-linear":
                raise InvalidInput(
                    f"shaper colour space {shaper!r} has encoding {encoding!r}; the highlight "
                    "shaper needs a scene-linear space", colourspace=shaper)
            self.shaper_space = shaper
            self._to_shaper = cpu(self.plate_space, shaper)
            self._shaper_to_model = cpu(shaper, self.model_space)
            self._model_to_shaper = cpu(self.model_space, shaper)
            self._shaper_to_plate = cpu(shaper, self.plate_space)
        else:
            self.shaper_space = None
            self._to_model = cpu(self.plate_space, self.model_space)
            self._from_model = cpu(self.model_space, self.plate_space)

    @staticmethod
    def _apply(processor, rgb: np.ndarray) -> np.ndarray:
        out = np.array(rgb, dtype=np.float32, order="C", copy=True)  # OCIO works in place
        if out.shape[-1] != 3:
            raise InvalidInput(f"colour conversion needs RGB (..., 3), got shape {rgb.shape}")
        if out.size:
            processor.applyRGB(out)
        return out

    def to_model(self, rgb: np.ndarray, matte: np.ndarray | None = None) -> tuple[np.ndarray, ClipStats]:
        """Plate RGB -> model RGB in [0, 1], and the out-of-range stats inside `matte`
        (matte > 0; same leading shape as `rgb` without the channel axis)."""
        s = self.settings
        region = None
        if matte is not None:
            region = np.asarray(matte) > 0
            if region.shape != rgb.shape[:-1]:
                raise InvalidInput(f"matte shape {region.shape} does not match the image "
                                   f"{rgb.shape[:-1]} for the clip statistics")
        stats = ClipStats(mode=s.highlight_mode)
        if s.highlight_mode == "shaper":
            lin = self._apply(self._to_shaper, rgb)
            if lin.size:  # over the whole input (the ROI), not only the matte: see from_model
                stats.plate_max = float(np.nanmax(lin))
            model = self._apply(self._shaper_to_model, shaper_forward(lin, s.knee))
        else:
            model = self._apply(self._to_model, rgb)
        sel = model[region] if region is not None else model.reshape(-1, 3)
        stats.pixels = int(sel.shape[0])
        if sel.size:
            stats.above = int(np.count_nonzero((sel > 1.0).any(axis=-1)))
            stats.below = int(np.count_nonzero((sel < 0.0).any(axis=-1)))
            stats.max_value = float(sel.max())
            stats.min_value = float(sel.min())
        np.clip(model, 0.0, 1.0, out=model)
        return model, stats

    def from_model(self, rgb: np.ndarray, max_value: float = HALF_MAX) -> np.ndarray:
        """Model RGB in [0, 1] -> plate RGB. In shaper mode, values that decode above
        `max_value` (shaper space) are capped there: the shaper's asymptote would be infinite."""
        s = self.settings
        if s.highlight_mode == "shaper":
            lin = self._apply(self._model_to_shaper, np.clip(rgb, 0.0, 1.0))
            return self._apply(self._shaper_to_plate, shaper_inverse(lin, s.knee, max_value))
        return self._apply(self._from_model, rgb)

    def plate_to(self, rgb: np.ndarray, space: str) -> np.ndarray:
        """Convert plate RGB into another space of the same config (e.g. for previews)."""
        cfg = load_config(self.settings.config)
        dst = resolve_colourspace(cfg, space, "colour space", self.settings.config)
        return self._apply(cfg.getProcessor(self.plate_space, dst).getDefaultCPUProcessor(), rgb)

    def to_plate(self, rgb: np.ndarray, space: str) -> np.ndarray:
        """Convert RGB from another space of the same config into the plate's space (e.g. an
        edited reference frame delivered as an sRGB PNG)."""
        cfg = load_config(self.settings.config)
        src = resolve_colourspace(cfg, space, "colour space", self.settings.config)
        return self._apply(
            cfg.getProcessor(src, self.plate_space).getOptimizedCPUProcessor(
                ocio.OPTIMIZATION_LOSSLESS), rgb)
