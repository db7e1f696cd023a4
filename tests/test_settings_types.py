"""Settings arrive as msgpack maps from any client (lorafx.settings.typed): each value is checked
against the type its dataclass declares, and a wrong one is an error naming the setting."""

from __future__ import annotations

import math

import pytest

from lorafx.errors import InvalidInput
from lorafx.server.method.sampler import RenderSettings
from lorafx.server.method.trainer import TrainSettings


def test_values_of_the_declared_types_pass_and_numbers_are_normalised():
    s = TrainSettings.from_dict({"steps": 12.0, "lr": 1, "betas": [0.8, 0.9], "window": None, "caption": "x",
                                 "gradient_checkpointing": True})
    assert s.steps == 12 and isinstance(s.steps, int)
    assert s.lr == 1.0 and isinstance(s.lr, float) and s.betas == (0.8, 0.9) and s.window is None
    r = RenderSettings.from_dict({"cfg": 3, "seed": 7, "baseline": None})
    assert r.cfg == 3.0 and isinstance(r.cfg, float) and r.seed == 7


@pytest.mark.parametrize("cls,values,message", [
    (TrainSettings, {"steps": "many"}, "training setting 'steps' must be a whole number, got 'many'"),
    (TrainSettings, {"steps": 2.5}, "'steps' must be a whole number, got 2.5"),
    (TrainSettings, {"steps": True}, "'steps' must be a whole number, got True"),
    (TrainSettings, {"lr": "1e-4"}, "training setting 'lr' must be a number"),
    (TrainSettings, {"lr": math.inf}, "'lr' must be finite"),
    (TrainSettings, {"betas": [0.9]}, "'betas' must be a list of 2 numbers"),
    (TrainSettings, {"gradient_checkpointing": 1}, "'gradient_checkpointing' must be true or false"),
    (TrainSettings, {"caption": ["a"]}, "'caption' must be a string"),
    (TrainSettings, {"window": "9"}, "'window' must be a whole number"),
    (TrainSettings, {"rank": 0}, "LoRA rank must be >= 1"),
    (TrainSettings, {"dropout": 1.0}, "dropout must lie in \\[0, 1\\)"),
    (TrainSettings, {"stepz": 1}, "unknown training settings: stepz"),
    (RenderSettings, {"seed": "s"}, "render setting 'seed' must be a whole number"),
    (RenderSettings, {"negative_prompt": None}, "'negative_prompt' must be a string"),
    (RenderSettings, {"bogus": 1}, "unknown render settings: bogus"),
])
def test_wrong_values_are_refused_naming_the_setting(cls, values, message):
    with pytest.raises(InvalidInput, match=message):
        cls.from_dict(values)
