"""miniworld: synthetic footage generator, tiny Wan2.1-I2V stack and its shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lorafx.server.miniworld import footage
from lorafx.server.miniworld.footage import (EDIT_KINDS, HELDOUT_SEEDS, PRETRAIN_SEEDS, make_clip,
                                             make_shot)
from lorafx.server.miniworld.model import WEIGHTS_DIR, has_weights


def _dilate(m: np.ndarray, r: int = 1) -> np.ndarray:
    out = m.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out = np.maximum(out, np.roll(np.roll(m, dy, axis=-2), dx, axis=-1))
    return out


# ------------------------------------------------------------------------------- footage


def test_generator_is_deterministic():
    a = make_shot(123, 17, 64)
    b = make_shot(123, 17, 64)
    for name in ("source", "matte", "edited", "edit_matte"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.caption == b.caption and a.edited_caption == b.edited_caption and a.edit_kind == b.edit_kind
    c = make_shot(124, 17, 64)
    assert not np.array_equal(a.source, c.source)
    v, cap = make_clip(123, 17, 64)
    assert np.array_equal(v, a.source) and cap == a.caption


def test_shapes_dtypes_ranges():
    for frames, size in ((17, 64), (33, 64), (17, 96)):
        s = make_shot(7, frames, size)
        assert s.source.shape == (frames, size, size, 3) and s.source.dtype == np.float32
        assert s.edited.shape == s.source.shape
        assert s.matte.shape == (frames, size, size) and s.matte.dtype == np.float32
        for a in (s.source, s.edited, s.matte, s.edit_matte):
            assert a.min() >= 0.0 and a.max() <= 1.0
    t = make_shot(7).as_tensors()
    assert t["source"].shape == (17, 3, 64, 64) and float(t["source"].min()) >= -1.0


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_edit_differs_only_inside_matte(kind):
    for seed in (HELDOUT_SEEDS[0], HELDOUT_SEEDS[1], 3, 42):
        s = make_shot(seed, 17, 64, edit=kind)
        diff = np.abs(s.edited - s.source).max(-1)
        # compositing with the matte's own alphas makes this exact; the 1 px dilation is slack
        assert float(diff[_dilate(s.edit_matte) == 0].max(initial=0.0)) == 0.0
        assert float(diff.max()) > 0.05, "the edit must change something"
        # the target is visible in frame 1 (the frame the compositor edits)
        assert float(s.matte[0].sum()) > 20.0
        if kind != "replace":
            assert np.array_equal(s.edit_matte, s.matte)
        else:
            assert np.all(s.edit_matte >= s.matte)
        assert s.caption != s.edited_caption


def test_matte_is_the_target_object():
    # the matte is exactly where the target shows: re-rendering without the target changes the
    # frame only where the matte is nonzero
    from dataclasses import replace

    s = make_shot(5)
    scene = s.scene
    obj = scene.objects[scene.target]
    gone = replace(scene, objects=tuple(replace(o, radius=1e-3) if i == scene.target else o
                                        for i, o in enumerate(scene.objects)))
    v, _ = footage.render(gone, 17, 64)
    diff = np.abs(v - s.source).max(-1)
    assert float(diff[s.matte == 0].max(initial=0.0)) < 1e-6
    assert float(diff[s.matte > 0.99].min()) >= 0.0 and obj.radius > 1


def test_heldout_disjoint_from_pretraining():
    assert set(PRETRAIN_SEEDS).isdisjoint(HELDOUT_SEEDS)
    assert HELDOUT_SEEDS.start >= PRETRAIN_SEEDS.stop
    from lorafx.server.miniworld.pretrain import dit_seed, vae_seeds

    gen = vae_seeds(0)
    for i in range(200):
        assert dit_seed(0, i) in PRETRAIN_SEEDS and not footage.is_heldout(dit_seed(0, i))
        assert next(gen) in PRETRAIN_SEEDS
    assert footage.is_heldout(footage.heldout_shots(1)[0].seed)


def test_captions_use_the_vocabulary():
    from lorafx.server.miniworld.model import build_tokenizer

    tok = build_tokenizer()
    unk = tok.convert_tokens_to_ids("<unk>")
    for seed in range(40):
        s = make_shot(seed)
        for cap in (s.caption, s.edited_caption, "p3rs0n, " + s.caption):
            ids = tok(cap)["input_ids"]
            assert unk not in ids, cap
            assert ids[-1] == tok.eos_token_id


# ------------------------------------------------------------------------------- model


def test_compact_text_attention_is_exact():
    from lorafx.server.miniworld.model import (TRANSFORMER_CONFIG, compact_text, use_compact_text,
                                               use_standard_attention)
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    cfg = dict(TRANSFORMER_CONFIG, num_layers=1)
    tr = WanTransformer3DModel(**cfg).eval()
    x = torch.randn(2, 36, 2, 4, 4)
    t = torch.tensor([100.0, 900.0])
    text = torch.zeros(2, 512, cfg["text_dim"])
    text[0, :7] = torch.randn(7, cfg["text_dim"])
    text[1, :3] = torch.randn(3, cfg["text_dim"])
    img = torch.randn(2, 9, cfg["image_dim"])
    with torch.no_grad():
        ref = tr(x, t, text, encoder_hidden_states_image=img, return_dict=False)[0]
        short, bias = compact_text(text)
        proc = use_compact_text(tr, 9)
        proc.bias = bias
        out = tr(x, t, short, encoder_hidden_states_image=img, return_dict=False)[0]
        use_standard_attention(tr)
    assert short.shape[1] == 8
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


needs_weights = pytest.mark.skipif(not has_weights(), reason="miniworld weights not trained yet")


@needs_weights
def test_shipped_weights_load_through_load_stack():
    from lorafx.server.miniworld.model import load_miniworld

    stack = load_miniworld("cpu", torch.float32)
    cfg = stack.transformer.config
    assert cfg.in_channels == 36 and cfg.out_channels == 16
    assert cfg.added_kv_proj_dim is not None and cfg.image_dim is not None
    assert tuple(cfg.patch_size) == (1, 2, 2)
    vcfg = stack.vae.config
    assert vcfg.z_dim == 16 and list(vcfg.temperal_downsample) == [False, True, True]
    assert stack.spatial_factor == 8 and stack.temporal_factor == 4
    # latent statistics were measured (not diffusers' defaults for the real VAE)
    from diffusers import AutoencoderKLWan

    assert list(vcfg.latents_std) != list(AutoencoderKLWan().config.latents_std)
    assert stack.transformer.dtype == torch.float32

    from lorafx.server.method.encode import encode_image, encode_prompt, encode_video

    shot = make_shot(HELDOUT_SEEDS[3])
    src = shot.as_tensors()["source"]
    lat = encode_video(stack, src)
    assert lat.shape == (1, 16, 5, 8, 8)
    text = encode_prompt(stack, [shot.caption])
    assert text.shape == (1, 512, stack.text_encoder.config.d_model)
    img = encode_image(stack, src[0])
    mask = torch.zeros(1, 4, 5, 8, 8)
    with torch.no_grad():
        out = stack.transformer(torch.cat([lat, mask, lat], 1), torch.tensor([500.0]), text,
                                encoder_hidden_states_image=img, return_dict=False)[0]
    assert out.shape == lat.shape and torch.isfinite(out).all()


@needs_weights
def test_shipped_weights_metadata_and_size():
    settings = json.loads((WEIGHTS_DIR / "pretrain_settings.json").read_text())
    assert settings["heldout_range"] == [HELDOUT_SEEDS.start, HELDOUT_SEEDS.stop]
    assert (WEIGHTS_DIR / "train_log.txt").is_file()
    size = sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file())
    assert size < 9_000_000
    index = json.loads((WEIGHTS_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "WanImageToVideoPipeline"


@needs_weights
def test_a_later_pretraining_stage_continues_the_shipped_stack_and_keeps_its_latent_space(tmp_path):
    """`pretrain --init-from`: a one-minute stage on top of the shipped weights writes a directory
    that loads through the Wan loader, with the encoder and latent statistics untouched (so the
    transformer stays valid) and the earlier stage's log kept beside the new one."""
    from lorafx.server.miniworld import pretrain
    from lorafx.server.miniworld.model import load_miniworld

    out = tmp_path / "stage"
    assert pretrain.main(["--init-from", str(WEIGHTS_DIR), "--out", str(out), "--minutes", "0.5",
                          "--decoder-minutes", "0.05", "--eval-seeds", "1", "--data-share", "0.1"]) == 0
    settings = json.loads((out / "pretrain_settings.json").read_text())
    assert settings["continued_from"]["seed"] == 0 and settings["transformer"]["steps"] > 10
    assert "kept" in settings["decoder_finetune"]
    assert "dit done" in (out / "train_log.txt").read_text()
    assert len(list(out.glob("train_log_stage*.txt"))) == len(list(WEIGHTS_DIR.glob("train_log*.txt")))
    shipped, later = load_miniworld(), load_miniworld(path=out)
    assert later.vae.config.latents_mean == shipped.vae.config.latents_mean
    enc = dict(shipped.vae.encoder.named_parameters())
    assert all(torch.equal(p, enc[n]) for n, p in later.vae.encoder.named_parameters())
    assert any(not torch.equal(p, q) for p, q in zip(later.transformer.parameters(),
                                                      shipped.transformer.parameters()))


def test_model_directory_train_defaults_are_read_and_checked(tmp_path):
    from lorafx.errors import InvalidInput
    from lorafx.server.app.models import TINY, _info_for

    (tmp_path / "lorafx_model.json").write_text(json.dumps(
        {"name": "m", "resolution": [64, 64], "window_frames": 17, "train_defaults": {"lr": 0.002, "steps": 7}}))
    assert _info_for(tmp_path, TINY).train_defaults == {"lr": 0.002, "steps": 7}
    (tmp_path / "lorafx_model.json").write_text(json.dumps({"train_defaults": {"learning_rate": 1}}))
    with pytest.raises(InvalidInput, match="lorafx_model.json: train_defaults: unknown training settings: learning_rate"):
        _info_for(tmp_path, TINY)
    (tmp_path / "lorafx_model.json").write_text(json.dumps({"train_defaults": {"colour_augment": 99}}))
    with pytest.raises(InvalidInput,
                       match="lorafx_model.json: train_defaults: colour_augment must be in 0..8, got 99"):
        _info_for(tmp_path, TINY)
    assert _info_for(tmp_path / "nothing", TINY).train_defaults == {}


@needs_weights
def test_the_shipped_model_recommends_the_settings_the_harness_measured():
    from lorafx.server.app.models import TINY, _info_for

    assert _info_for(WEIGHTS_DIR, TINY).train_defaults == {"steps": 60, "lr": 0.001, "colour_augment": 5}
