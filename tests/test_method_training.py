"""Training and rendering on the tiny stack: LoRA save/load in diffusers format, resume,
cancellation, temporal windows, low-memory switches, and the real footage."""

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from lorafx.errors import Cancelled, InvalidInput
from lorafx.server.method import lora as lora_mod
from lorafx.server.method.sampler import RenderSettings, render
from lorafx.server.method.stack import apply_low_memory, build_tiny_stack, load_stack, save_stack
from lorafx.server.method.trainer import (LoraTrainer, TrainSettings, appearance_schedule, prepare_samples,
                                          window_starts)

F, H, W = 9, 32, 32


def _shot(seed=0):
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(F, 3, H, W, generator=g) * 2 - 1
    keep = torch.ones(F, H, W)
    keep[:, 8:24, 8:24] = 0
    return source, keep


def _forward(stack, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 36, 3, H // 8, W // 8, generator=g)
    text = torch.randn(1, 512, 32, generator=g)
    img = torch.randn(1, 17, 16, generator=g)
    with torch.no_grad():
        return stack.transformer(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                                 encoder_hidden_states_image=img, return_dict=False)[0]


def _train(stack, settings, name="shot", painted=None, **kw):
    source, keep = _shot()
    motion, appearance = prepare_samples(stack, source, keep, settings, painted=painted)
    return LoraTrainer(stack, name, settings).train(motion, appearance, **kw)


def test_training_reduces_loss_and_targets_the_right_modules():
    stack = build_tiny_stack(seed=0)
    settings = TrainSettings(steps=30, lr=3e-3, seed=3)
    result = _train(stack, settings)
    assert result.steps == 30 and len(result.losses) == 30
    assert np.mean(result.losses[-8:]) < np.mean(result.losses[:8])
    names = {k.split(".lora_")[0].split("blocks.0.")[-1] for k in result.lora if k.startswith("blocks.0.")}
    assert names == set(lora_mod.DEFAULT_TARGETS), names
    assert not any("add_k_proj" in k or "add_v_proj" in k for k in result.lora)


def test_lora_loads_in_diffusers_pipeline_and_reproduces_model(tmp_path):
    stack = build_tiny_stack(seed=0)
    settings = TrainSettings(steps=5, lr=1e-2, rank=4, alpha=8)
    _train(stack, settings, name="shot")
    trained = _forward(stack)
    tensors, header = lora_mod.diffusers_payload(stack.transformer, "shot", settings.lora_spec())
    safetensors.torch.save_file(tensors, str(tmp_path / "pytorch_lora_weights.safetensors"), metadata=header)

    fresh = build_tiny_stack(seed=0)
    base = _forward(fresh)
    assert not torch.allclose(base, trained, atol=1e-5), "training must have changed the model"
    fresh.pipe.load_lora_weights(str(tmp_path), adapter_name="loaded")  # diffusers' own loader
    assert torch.allclose(_forward(fresh), trained, atol=1e-5)
    # and lorafx's hot-swap path: bare model <-> adapter
    other = build_tiny_stack(seed=0)
    loaded, hdr = safetensors.torch.load_file(str(tmp_path / "pytorch_lora_weights.safetensors")), header
    lora_mod.load_into_stack(other, "s1", loaded, hdr)
    assert torch.allclose(_forward(other), trained, atol=1e-5)
    lora_mod.activate(other, None)
    assert torch.allclose(_forward(other), base, atol=1e-6)
    assert json.loads(header["lora_adapter_metadata"])["transformer.lora_alpha"] == 8


def test_resume_from_checkpoint_matches_uninterrupted_run():
    settings = TrainSettings(steps=6, lr=1e-2, checkpoint_every=3, seed=5)
    full = _train(build_tiny_stack(seed=0), settings)
    checkpoints = []
    stop_after = iter([False, False, False, True])
    with pytest.raises(Cancelled, match="step 3"):
        _train(build_tiny_stack(seed=0), settings, checkpoint_fn=checkpoints.append,
               should_stop=lambda: next(stop_after))
    assert [c.step for c in checkpoints] == [3]
    resumed = _train(build_tiny_stack(seed=0), settings, resume=checkpoints[0])
    assert resumed.losses == pytest.approx(full.losses[3:], rel=1e-5)
    for k in full.lora:
        assert torch.allclose(full.lora[k], resumed.lora[k], atol=1e-6), k


def test_appearance_stage_continues_adapter_with_schedule():
    settings = TrainSettings(steps=3, appearance_epochs=2, appearance_repeats=2, lr=1e-2)
    sched = appearance_schedule(1, 1, settings)
    assert len(sched) == 2 * (1 + 2) and sum(k == "appearance" for k, _ in sched) == 4
    # one painted frame at the defaults: 10 epochs x (1 motion + 9 painted) = 100 steps
    assert len(appearance_schedule(1, 1, TrainSettings())) == 100
    stages = []
    source, _ = _shot()
    _train(build_tiny_stack(seed=0), settings, painted={4: source[4] * 0.5},
           on_progress=lambda stage, step, total, loss: stages.append((stage, step, total)))
    assert stages[0] == ("motion", 1, 9) and stages[-1] == ("appearance", 9, 9)


def test_temporal_windows():
    assert window_starts(49, 13, 12) == [0, 12, 24, 36]
    assert window_starts(49, 9, 4)[-1] == 40
    assert window_starts(17, 9, 8) == [0, 8]
    stack = build_tiny_stack(seed=0)
    source, keep = _shot()
    motion, _ = prepare_samples(stack, torch.cat([source, source[1:]]), torch.cat([keep, keep[1:]]),
                                TrainSettings(window=9))
    assert [m.frames for m in motion] == [(0, 8), (8, 16)]
    assert all(m.condition.shape[2] == 3 for m in motion)
    with pytest.raises(InvalidInput, match="4k"):
        TrainSettings(window=10)


def test_colour_augment_adds_recoloured_copies_of_the_plate_with_the_same_structure():
    from lorafx.server.method.trainer import COLOUR_VARIANTS, recolour

    source, keep = _shot()
    copies = [recolour(source, v) for v in range(len(COLOUR_VARIANTS))]
    assert len({tuple(c[0, :, 0, 0].tolist()) for c in [source, *copies]}) == len(COLOUR_VARIANTS) + 1
    for c in copies:  # colours change, structure does not: the sorted per-pixel |values| are the plate's
        assert not torch.equal(c, source)
        assert torch.equal(c.abs().sort(dim=1).values, source.abs().sort(dim=1).values)
    stack = build_tiny_stack(seed=0)
    plain, _ = prepare_samples(stack, source, keep, TrainSettings())
    augmented, _ = prepare_samples(stack, source, keep, TrainSettings(colour_augment=3))
    assert len(plain) == 1 and len(augmented) == 4
    assert torch.equal(augmented[0].x0, plain[0].x0), "the plate itself comes first, unchanged"
    assert not torch.equal(augmented[1].x0, plain[0].x0)
    assert all(torch.equal(a.condition[:, :4], plain[0].condition[:, :4]) for a in augmented), "same mask"
    with pytest.raises(InvalidInput, match="colour_augment"):
        TrainSettings(colour_augment=len(COLOUR_VARIANTS) + 1)


@pytest.mark.parametrize("switches", [dict(group_offload=True), dict(fp8_storage=True),
                                      dict(group_offload=True, fp8_storage=True)])
def test_low_memory_switches_train_and_render(switches):
    stack = apply_low_memory(build_tiny_stack(seed=0), **switches)
    settings = TrainSettings(steps=2, gradient_checkpointing=True)
    result = _train(stack, settings)
    assert all(np.isfinite(result.losses))
    source, keep = _shot()
    video = render(stack, source, keep, source[0], RenderSettings(steps=2), adapter="shot")
    assert video.shape == (F, 3, H, W) and torch.isfinite(video).all()


def test_render_is_seeded_and_baseline_runs():
    stack = build_tiny_stack(seed=0)
    source, keep = _shot()
    _train(stack, TrainSettings(steps=2))
    a = render(stack, source, keep, source[0], RenderSettings(steps=3, seed=7), adapter="shot")
    b = render(stack, source, keep, source[0], RenderSettings(steps=3, seed=7), adapter="shot")
    c = render(stack, source, keep, source[0], RenderSettings(steps=3, seed=8), adapter="shot")
    assert torch.equal(a, b) and not torch.equal(a, c)
    blend = render(stack, source, keep, source[0],
                   RenderSettings(steps=3, config="i2v", baseline="feature_blend", sampler="unipc", cfg=1.0))
    assert blend.shape == a.shape
    with pytest.raises(Cancelled):
        render(stack, source, keep, source[0], RenderSettings(steps=3), should_stop=lambda: True)
    with pytest.raises(InvalidInput, match="unknown sampler"):
        RenderSettings(sampler="ddim")
    with pytest.raises(InvalidInput, match="unknown training settings: stepz"):
        TrainSettings.from_dict({"stepz": 3})


def test_saved_tiny_stack_loads_through_the_real_loader(tmp_path):
    stack = build_tiny_stack(seed=0)
    save_stack(stack, tmp_path / "wan")
    loaded = load_stack(tmp_path / "wan", device="cpu", dtype=torch.float32)
    assert torch.allclose(_forward(stack), _forward(loaded), atol=1e-6)
    assert loaded.transformer.config.added_kv_proj_dim == stack.transformer.config.added_kv_proj_dim
    with pytest.raises(Exception, match="does not exist"):
        load_stack(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="model_index.json"):
        load_stack(tmp_path / "empty")


def test_train_and_render_on_real_footage(bedroom_dir):
    """9 real bedroom frames at 112x64: the full method path on real motion, not synthetic squares."""
    import OpenImageIO as oiio

    frames = []
    for i in range(9):
        buf = oiio.ImageBufAlgo.resize(oiio.ImageBuf(str(bedroom_dir / f"{i:05d}.jpg")),
                                       roi=oiio.ROI(0, 112, 0, 64, 0, 1, 0, 3))
        frames.append(torch.from_numpy(buf.get_pixels(oiio.FLOAT)).permute(2, 0, 1) * 2 - 1)
    source = torch.stack(frames)
    keep = torch.ones(9, 64, 112)
    keep[:, 16:48, 40:80] = 0  # the bed / child region
    stack = build_tiny_stack(seed=0)
    settings = TrainSettings(steps=3, caption="a child in a bedroom")
    motion, _ = prepare_samples(stack, source, keep, settings)
    result = LoraTrainer(stack, "bedroom", settings).train(motion)
    assert np.isfinite(result.final_loss)
    out = render(stack, source, keep, source[0], RenderSettings(steps=2, cfg=1.0), adapter="bedroom")
    assert out.shape == source.shape and torch.isfinite(out).all()
