"""OpenColorIO plate <-> model conversion, highlight handling, name validation."""

from __future__ import annotations

import numpy as np
import pytest

from lorafx.errors import InvalidInput
from lorafx.server.media.colour import (ColourSettings, ColourTransform, shaper_forward,
                                        shaper_inverse)

HALF_RTOL = 2.0 ** -10  # one half-float ulp, relative


def test_default_names_exist_in_both_builtin_configs():
    for config in ("ocio://default", "ocio://studio-config-latest"):
        t = ColourTransform(ColourSettings(config=config))
        assert t.plate_space == "Linear Rec.709 (sRGB)"
        assert t.model_space == "sRGB Encoded Rec.709 (sRGB)"


def test_shaper_curve_is_identity_below_knee_bounded_and_exactly_invertible():
    x = np.linspace(0.0, 16.0, 200001, dtype=np.float32)
    y = shaper_forward(x, 0.8)
    below = x <= 0.8
    np.testing.assert_array_equal(y[below], x[below])
    assert y.max() < 1.0 and np.all(np.diff(y) >= 0)
    back = shaper_inverse(y, 0.8)
    np.testing.assert_allclose(back, x, rtol=HALF_RTOL, atol=1e-6)
    # Slope 1 at the knee (no kink a compositor would see as a band).
    eps = 1e-3
    assert abs((shaper_forward(np.float32(0.8 + eps)) - 0.8) / eps - 1.0) < 0.01
    # The asymptote decodes to the cap, not to infinity.
    assert shaper_inverse(np.float32(1.0), 0.8, max_value=50.0) == pytest.approx(50.0)


@pytest.mark.parametrize("config", ["ocio://default", "ocio://studio-config-latest"])
def test_shaper_round_trip_over_0_16_through_ocio(config):
    rng = np.random.default_rng(1)
    rgb = np.concatenate([
        rng.uniform(0.0, 16.0, (20000, 3)),
        np.repeat(np.linspace(0.0, 16.0, 3001)[:, None], 3, axis=1),  # greys incl. 0 and 16
    ]).astype(np.float32)
    t = ColourTransform(ColourSettings(config=config, highlight_mode="shaper"))
    model, stats = t.to_model(rgb)
    assert model.min() >= 0.0 and model.max() < 1.0
    assert stats.above == 0 and stats.plate_max == pytest.approx(16.0, rel=1e-3)
    back = t.from_model(model, max_value=16.0)
    np.testing.assert_allclose(back, rgb, rtol=HALF_RTOL, atol=1e-4)


def test_shaper_in_an_aces_plate_space_round_trips():
    rng = np.random.default_rng(2)
    rgb = rng.uniform(0.0, 4.0, (5000, 3)).astype(np.float32)
    t = ColourTransform(ColourSettings(plate_space="ACEScg", highlight_mode="shaper"))
    model, _ = t.to_model(rgb)
    back = t.from_model(model)
    # ACEScg -> Rec.709 leaves some saturated colours below 0 (out of gamut): those are
    # clipped for the model; every in-gamut colour must come back.
    lin709 = t.plate_to(rgb, "Linear Rec.709 (sRGB)")
    in_gamut = (lin709 >= 0).all(axis=1)
    assert in_gamut.mean() > 0.5
    np.testing.assert_allclose(back[in_gamut], rgb[in_gamut], rtol=1e-3, atol=1e-4)


def test_clip_mode_clips_for_the_model_and_reports_inside_the_matte():
    rgb = np.full((4, 10, 3), 0.18, np.float32)
    rgb[0, :5] = 4.0  # hot highlights, inside the matte
    rgb[3, :] = 8.0  # hotter, outside the matte
    rgb[1, 0] = -0.05  # a negative pixel inside the matte
    matte = np.zeros((4, 10), np.float32)
    matte[:2] = 1.0
    t = ColourTransform(ColourSettings(highlight_mode="clip"))
    model, stats = t.to_model(rgb, matte=matte)
    assert model.min() == 0.0 and model.max() == 1.0
    assert stats.pixels == 20 and stats.above == 5 and stats.below == 1
    assert stats.above_fraction == pytest.approx(0.25)
    assert stats.max_value > 1.5  # encoded 4.0 is ~1.8: reported before clipping
    md = stats.as_metadata()
    assert md["colour/highlight_mode"] == "clip"
    assert md["colour/clipped_above_fraction"] == pytest.approx(0.25)
    # Mid-grey survives the clip-mode round trip.
    back = t.from_model(model)
    np.testing.assert_allclose(back[2], rgb[2], rtol=1e-4)


def test_wrong_colourspace_name_lists_close_matches():
    with pytest.raises(InvalidInput, match=r"'Linear Rec709'.*did you mean.*Linear Rec\.709 \(sRGB\)") as e:
        ColourTransform(ColourSettings(plate_space="Linear Rec709"))
    assert "Linear Rec.709 (sRGB)" in e.value.details["suggestions"]
    with pytest.raises(InvalidInput, match="model colour space 'sRGB Display'"):
        ColourTransform(ColourSettings(model_space="sRGB Display"))


def test_aliases_and_roles_are_accepted():
    t = ColourTransform(ColourSettings(plate_space="lin_rec709_srgb", model_space="color_picking"))
    assert t.plate_space == "Linear Rec.709 (sRGB)"
    assert t.model_space == "sRGB Encoded Rec.709 (sRGB)"


def test_bad_config_and_bad_settings():
    with pytest.raises(InvalidInput, match="cannot load OCIO config '/no/such/config.ocio'"):
        ColourTransform(ColourSettings(config="/no/such/config.ocio"))
    with pytest.raises(InvalidInput, match="highlight_mode"):
        ColourSettings(highlight_mode="tonemap")
    with pytest.raises(InvalidInput, match="knee"):
        ColourSettings(knee=1.0)
    with pytest.raises(InvalidInput, match="scene-linear"):
        ColourTransform(ColourSettings(highlight_mode="shaper", shaper_space="ACEScct"))
