"""The quality harness in reduced form: on a held-out miniworld shot with a fixed seed, the
mask-aware LoRA must beat the stock model (no LoRA) on edit propagation by a clear margin, and keep
the background far better. Needs the shipped miniworld weights (the full table is a benchmark:
benchmarks/quality/harness.py, results in benchmarks/RESULTS.md)."""

import math

import pytest

from benchmarks.quality import harness
from lorafx.server.miniworld import model as mini


needs_weights = pytest.mark.skipif(not mini.has_weights(), reason="the miniworld weights are not in this checkout")


@pytest.fixture(scope="module")
def stock_vs_method():
    """One held-out shot, fixed seed: the stock model (no LoRA) against the mask-aware LoRA."""
    from lorafx.server.app.models import open_model
    from lorafx.server.miniworld.footage import heldout_shots

    stack, _ = open_model("mini")
    shots = heldout_shots(1, frames=17, edit="recolour")
    return {r["variant"]: r for r in harness.run(stack, shots, ["no_lora", "masked"], steps=60, render_steps=12,
                                                 lr=1e-3, log=lambda *_: None)}


@needs_weights
def test_mask_aware_lora_keeps_the_background_better_than_the_stock_model(stock_vs_method):
    rows = stock_vs_method
    assert all(math.isfinite(rows[v]["edit_psnr"]) for v in rows)
    # measured 2026-11-23 with the shipped weights: 23.4 dB vs 19.7 dB
    assert rows["masked"]["bg_psnr"] > rows["no_lora"]["bg_psnr"] + 2.0, rows


@needs_weights
@pytest.mark.xfail(strict=True, reason="issue #5 open: with the 54-min CPU-pretrained miniworld model the method "
                                       "gains only +0.2 dB edit PSNR over the stock model at 60 steps (13.05 vs "
                                       "12.86); strict, so this turns red the day the claim is reproduced")
def test_mask_aware_lora_beats_stock_model_on_edit_propagation(stock_vs_method):
    rows = stock_vs_method
    assert rows["masked"]["edit_psnr"] > rows["no_lora"]["edit_psnr"] + 1.0, rows


def test_scores_are_exact_on_known_outputs():
    from lorafx.server.miniworld.footage import heldout_shots

    shot = heldout_shots(1, frames=9)[0]
    perfect = harness.score(shot.edited, shot)
    assert perfect.edit_psnr == float("inf") and perfect.temporal_err == 0.0
    copy = harness.score(shot.source, shot)  # no edit at all: background perfect, edit wrong
    assert copy.bg_psnr == float("inf") and copy.bg_max_err == 0.0
    assert copy.edit_psnr < 30 and copy.edit_err > 0.01
