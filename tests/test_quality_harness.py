"""The quality harness in reduced form: on the first four held-out miniworld shots, fixed seed, the
mask-aware LoRA must beat the stock model (no LoRA) on edit propagation by a clear margin, and keep
the background far better. Needs the shipped miniworld weights (the full table is a benchmark:
benchmarks/quality/harness.py, results in benchmarks/RESULTS.md)."""

import math

import numpy as np
import pytest

from benchmarks.quality import harness
from lorafx.server.miniworld import model as mini


needs_weights = pytest.mark.skipif(not mini.has_weights(), reason="the miniworld weights are not in this checkout")


@pytest.fixture(scope="module")
def stock_vs_method():
    """Four held-out shots (one shot decides little: per shot the gap runs from -2.6 to +4.2 dB), fixed
    seed: the stock model (no LoRA) against the mask-aware LoRA, means over the shots."""
    from lorafx.server.app.models import open_model
    from lorafx.server.miniworld.footage import heldout_shots

    stack, _ = open_model("mini")
    shots = heldout_shots(4, frames=17, edit="recolour")
    return {r["variant"]: r for r in harness.run(stack, shots, ["no_lora", "masked", "masked+colour_aug"],
                                                 steps=60, render_steps=12,
                                                 lr=1e-3, log=lambda *_: None)}


@needs_weights
def test_mask_aware_lora_keeps_the_background_better_than_the_stock_model(stock_vs_method):
    rows = stock_vs_method
    assert all(math.isfinite(rows[v]["edit_psnr"]) for v in rows)
    # measured 2026-11-23 with the shipped (stage 2) weights: 23.0 dB vs 20.7 dB
    assert rows["masked"]["bg_psnr"] > rows["no_lora"]["bg_psnr"] + 1.5, rows


@needs_weights
@pytest.mark.xfail(strict=True, reason="the paper's method alone (no colour augmentation) gains only "
                                       "+0.5 dB edit PSNR over the stock model on these shots (13.69 vs 13.21; "
                                       "+0.06 dB over 8 shots in benchmarks/RESULTS.md); strict, so this turns "
                                       "red the day the claim is reproduced")
def test_mask_aware_lora_beats_stock_model_on_edit_propagation(stock_vs_method):
    rows = stock_vs_method
    assert rows["masked"]["edit_psnr"] > rows["no_lora"]["edit_psnr"] + 1.0, rows


@needs_weights
def test_mask_aware_lora_with_colour_augmentation_beats_the_stock_model_on_edit_propagation(stock_vs_method):
    """Issue #5's criterion, met with lorafx's colour augmentation (the paper's method alone is the
    strict xfail above): recoloured plate copies stop the LoRA memorising the plate's colours."""
    rows = stock_vs_method
    # measured 2026-11-23 on these four shots: 15.2 dB vs 13.2 dB, background 21.6 vs 20.7 dB
    assert rows["masked+colour_aug"]["edit_psnr"] > rows["no_lora"]["edit_psnr"] + 1.0, rows
    assert rows["masked+colour_aug"]["bg_psnr"] > rows["no_lora"]["bg_psnr"], rows


def test_scores_are_exact_on_known_outputs():
    from lorafx.server.miniworld.footage import heldout_shots

    shot = heldout_shots(1, frames=9)[0]
    perfect = harness.score(shot.edited, shot)
    assert perfect.edit_psnr == float("inf") and perfect.temporal_err == 0.0
    copy = harness.score(shot.source, shot)  # no edit at all: background perfect, edit wrong
    assert copy.bg_psnr == float("inf") and copy.bg_max_err == 0.0
    assert copy.edit_psnr < 30 and copy.edit_err > 0.01


def test_late_score_leaves_out_the_painted_last_frame():
    # The appearance variant trains on the true edited last frame; scoring it would reward recall.
    from lorafx.server.miniworld.footage import heldout_shots

    shot = heldout_shots(1, frames=9)[0]
    out = np.clip(shot.edited + np.random.default_rng(0).normal(0, 0.01, shot.edited.shape), 0, 1)
    base = harness.score(out, shot)
    out[-1] = 1.0 - out[-1]  # only the painted frame goes wrong: the late score must not move
    painted_wrong = harness.score(out, shot)
    assert painted_wrong.edit_psnr_late == base.edit_psnr_late and painted_wrong.edit_psnr < base.edit_psnr - 3
    out[-2] = 1.0 - out[-2]  # a later frame it was not trained on goes wrong: now it counts
    assert harness.score(out, shot).edit_psnr_late < base.edit_psnr_late - 3


def _row(name, bg, edit, late=None):
    return {"variant": name, "bg_psnr": bg, "edit_psnr": edit, "edit_psnr_late": late if late is not None else edit}


def test_claims_are_judged_from_the_numbers():
    rows = [_row("no_lora", 19.0, 12.0), _row("naive_lora", 20.0, 13.2), _row("feature_blend", 25.0, 12.5),
            _row("masked", 23.0, 14.0, late=13.0), _row("masked+appearance", 23.0, 14.2, late=13.8),
            _row("masked_tight", 24.0, 14.9), _row("masked_win9", 22.5, 13.8)]
    verdicts = {claim.split(" (")[0]: ok for claim, ok, _ in harness.claims(rows)}
    assert verdicts == {
        "the method beats the stock model on edit propagation": True,
        "the method beats naive_lora on background and edit": True,
        "the method beats feature_blend on background and edit": False,  # feature blend keeps more bg
        "a painted last frame improves the later frames it was not trained on": True,
        "loose": False,  # bbox 14.0 is more than 0.5 dB under tight 14.9
        "9-frame windows stay close to whole-clip training": True,
    }
    assert harness.claims(rows[:2]) == [], "claims whose variants did not run are left out"
    text = harness.format_claims(harness.claims([_row("no_lora", 19.0, 12.7), _row("masked", 23.0, 13.1)]))
    assert text == ("- the method beats the stock model on edit propagation (issue #5; by > 0.5 dB): "
                    "**not reproduced** (13.10 vs 12.70 dB)"), "a gain inside the spread is not a win"


def test_results_section_is_replaced_in_place_and_the_rest_kept(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## Protocol\n\nratio 0.85\n")
    harness.write_section(str(path), "## Quality\n\nfirst run")
    harness.write_section(str(path), "## Quality\n\nsecond run")
    text = path.read_text()
    assert text.count(harness.SECTION_START) == 1 and "second run" in text and "first run" not in text
    assert text.startswith("# Benchmark results\n\n## Protocol\n\nratio 0.85\n")
