"""What the OpenFX plug-in tells a host about itself, as the test OFX host records it after
Load -> Describe -> DescribeInContext: contexts, pixel depths, clips (the Matte's isMask flag,
temporal access on Reference), and every parameter with its type and properties. The host is
strict about property types, so a property set with the wrong type fails here too."""

from __future__ import annotations

import pytest

from test_ofx_build import ofx, ofx_host  # noqa: F401

GENERAL = "OfxImageEffectContextGeneral"
FILTER = "OfxImageEffectContextFilter"

EXPECTED_PARAMS = {  # name -> OFX type, in definition order
    "serverAddress": "String", "shotName": "String", "firstFrame": "Integer", "lastFrame": "Integer",
    "setRangeFromInput": "PushButton", "referenceFrames": "String", "prompt": "String",
    "trainingSteps": "Integer", "seed": "Integer", "quality": "Choice", "renderSteps": "Integer",
    "useMatte": "Boolean", "colorspace": "String", "train": "PushButton", "render": "PushButton",
    "cancel": "PushButton", "refresh": "PushButton", "status": "String", "resultVersion": "Integer",
}


@pytest.fixture(scope="module")
def described(ofx, tmp_path_factory):  # noqa: F811
    from test_ofx_build import OfxHost

    host = OfxHost(ofx, tmp_path_factory.mktemp("describe"))
    try:
        load = host.ok(f"load {ofx.plugin}")
        general = host.ok(f"describe {GENERAL}")["description"]
        filt = host.ok(f"describe {FILTER}")["description"]
        stats = host.ok("stats")
        host.ok("unload")
    finally:
        assert host.close() == 0
    return load, general, filt, stats


def _params(desc):
    return {p["name"]: p for p in desc["params"]}


def _clips(desc):
    return {c["name"]: c["props"] for c in desc["clips"]}


def test_plugin_identity_and_capabilities(described):
    load, general, _, stats = described
    assert load["plugins"] == 1 and load["id"] == "io.lorafx.LoraEdit" and load["version"] == [0, 1]
    d = load["descriptor"]
    assert d["OfxImageEffectPropSupportedContexts"] == [FILTER, GENERAL]
    assert d["OfxImageEffectPropSupportedPixelDepths"] == ["OfxBitDepthFloat"]  # Nuke is float only
    assert d["OfxImageEffectPluginRenderThreadSafety"] == ["OfxImageEffectRenderFullySafe"]
    assert d["OfxImageEffectPropTemporalClipAccess"] == [1]
    assert d["OfxImageEffectPropSupportsTiles"] == [1]
    assert d["OfxImageEffectPluginPropGrouping"] == ["lorafx"] and d["OfxPropLabel"] == ["LoRA Edit"]
    assert stats["violations"] == [], stats["violations"]


def test_clips_per_context(described):
    _, general, filt, _ = described
    g = _clips(general)
    assert list(g) == ["Source", "Matte", "Reference", "Output"]
    for name in ("Source", "Reference", "Output"):
        assert g[name]["OfxImageEffectPropSupportedComponents"][:2] == ["OfxImageComponentRGBA",
                                                                        "OfxImageComponentRGB"], name
    assert g["Source"]["OfxImageClipPropOptional"] == [0]
    assert g["Matte"]["OfxImageClipPropIsMask"] == [1] and g["Matte"]["OfxImageClipPropOptional"] == [1]
    assert "OfxImageComponentAlpha" in g["Matte"]["OfxImageEffectPropSupportedComponents"]
    assert g["Reference"]["OfxImageEffectPropTemporalClipAccess"] == [1]
    assert g["Reference"]["OfxImageClipPropOptional"] == [1] and g["Reference"]["OfxImageClipPropIsMask"] == [0]
    assert g["Source"]["OfxImageEffectPropTemporalClipAccess"] == [1]
    assert list(_clips(filt)) == ["Source", "Output"]


def test_parameters(described):
    _, general, filt, _ = described
    params = _params(general)
    assert list(params) == list(EXPECTED_PARAMS)
    for name, kind in EXPECTED_PARAMS.items():
        assert params[name]["type"] == "OfxParamType" + kind, name
    # Resolve crashes on Integer2D/3D: none of those, nor any other multi-dimensional type.
    assert not any(p["type"] in ("OfxParamTypeInteger2D", "OfxParamTypeInteger3D", "OfxParamTypeDouble2D",
                                 "OfxParamTypeDouble3D") for p in general["params"] + filt["params"])
    for name, p in params.items():
        props = p["props"]
        assert props["OfxParamPropScriptName"] == [name]
        assert props["OfxPropLabel"][0] and props["OfxParamPropHint"][0], name
        if p["type"] == "OfxParamTypeInteger":
            # Resolve wants both the range and the display range on integers.
            lo, hi = props["OfxParamPropMin"][0], props["OfxParamPropMax"][0]
            dlo, dhi = props["OfxParamPropDisplayMin"][0], props["OfxParamPropDisplayMax"][0]
            assert -(2**31) < lo <= dlo < dhi <= hi < 2**31 - 1 or name == "seed", (name, lo, dlo, dhi, hi)
            assert lo <= props["OfxParamPropDefault"][0] <= hi, name
        if p["type"] != "OfxParamTypePushButton":
            assert props["OfxParamPropAnimates"] == [0], name  # shot settings never animate
    assert params["serverAddress"]["props"]["OfxParamPropDefault"] == ["tcp://127.0.0.1:5555"]
    assert params["firstFrame"]["props"]["OfxParamPropDefault"] == [1001]
    assert params["quality"]["props"]["OfxParamPropChoiceOption"] == ["Draft", "Standard", "Final"]
    assert params["quality"]["props"]["OfxParamPropDefault"] == [1]
    assert params["useMatte"]["props"]["OfxParamPropDefault"] == [1]
    assert params["prompt"]["props"]["OfxParamPropStringMode"] == ["OfxParamStringIsMultiLine"]
    status = params["status"]["props"]
    assert status["OfxParamPropStringMode"] == ["OfxParamStringIsLabel"]  # read-only
    assert status["OfxParamPropEvaluateOnChange"] == [0] and status["OfxParamPropPersistant"] == [0]
    version = params["resultVersion"]["props"]
    assert version["OfxParamPropSecret"] == [1] and version["OfxParamPropEvaluateOnChange"] == [1]
    # Only what changes the rendered pixels re-renders the node; settings read when a button is
    # pressed, and the buttons themselves, do not.
    evaluates = {n for n, p in params.items() if p["props"].get("OfxParamPropEvaluateOnChange") == [1]}
    assert evaluates == {"serverAddress", "shotName", "firstFrame", "lastFrame", "resultVersion"}, evaluates
    # Filter context: no matte input, so no Use Matte.
    assert list(_params(filt)) == [n for n in EXPECTED_PARAMS if n != "useMatte"]


def test_instance_lifecycle_without_a_server(ofx_host, ofx):  # noqa: F811
    """Load -> Describe -> CreateInstance -> InstanceChanged -> DestroyInstance -> Unload with
    nothing connected and no server: clean, no leaks, no plug-in threads touching the host."""
    from test_ofx_standin import free_endpoint

    host = ofx_host()
    host.ok(f"load {ofx.plugin}")
    host.ok(f"create {GENERAL}")
    host.ok(f"set serverAddress {free_endpoint()}")
    host.ok("set shotName sh020")
    r = host.ok("press train")
    assert "no image size" in r["status"] or "error" in r["status"], r
    r = host.ok("render 1001 1001 -")
    assert r["frames"][0]["status"] == 0  # an unconnected Source renders black, not a failure
    st = host.ok("stats")
    assert st["violations"] == [] and st["leaked_images"] == 0
    host.ok("destroy")
    host.ok("unload")
    assert host.close() == 0
