"""host_plugins/ofx/src/ofx_abi.h against the OpenFX specification, and the plug-in's protocol
building blocks (IEEE half conversion, msgpack framing) against numpy / msgpack / PROTOCOL.md.

The expected values below are transcribed from the OpenFX programming reference (ofxCore,
ofxImageEffect, ofxParam, ofxProperty, ofxMemory, ofxMultiThread, ofxMessage, ofxProgress),
independently of the header: a wrong status code, string or suite member order would make a
real host call the wrong function, silently."""

from __future__ import annotations

import json
import subprocess

import msgpack
import numpy as np
import pytest

from test_ofx_build import ofx  # noqa: F401  (session fixture)

SPEC_STATUS = {
    "kOfxStatOK": 0, "kOfxStatFailed": 1, "kOfxStatErrFatal": 2, "kOfxStatErrUnknown": 3,
    "kOfxStatErrMissingHostFeature": 4, "kOfxStatErrUnsupported": 5, "kOfxStatErrExists": 6,
    "kOfxStatErrFormat": 7, "kOfxStatErrMemory": 8, "kOfxStatErrBadHandle": 9,
    "kOfxStatErrBadIndex": 10, "kOfxStatErrValue": 11, "kOfxStatReplyYes": 12, "kOfxStatReplyNo": 13,
    "kOfxStatReplyDefault": 14, "kOfxStatErrImageFormat": 1000,
}

# Constants whose value is the name without the leading "k" (most of the standard).
SAME_AS_NAME = [
    "kOfxActionLoad", "kOfxActionDescribe", "kOfxActionUnload", "kOfxActionPurgeCaches",
    "kOfxActionSyncPrivateData", "kOfxActionCreateInstance", "kOfxActionDestroyInstance",
    "kOfxActionInstanceChanged", "kOfxActionBeginInstanceChanged", "kOfxActionEndInstanceChanged",
    "kOfxActionBeginInstanceEdit", "kOfxActionEndInstanceEdit",
    "kOfxImageEffectActionGetRegionOfDefinition", "kOfxImageEffectActionGetRegionsOfInterest",
    "kOfxImageEffectActionGetTimeDomain", "kOfxImageEffectActionGetFramesNeeded",
    "kOfxImageEffectActionGetClipPreferences", "kOfxImageEffectActionIsIdentity",
    "kOfxImageEffectActionRender", "kOfxImageEffectActionBeginSequenceRender",
    "kOfxImageEffectActionEndSequenceRender", "kOfxImageEffectActionDescribeInContext",
    "kOfxImageEffectContextFilter", "kOfxImageEffectContextGeneral",
    "kOfxPropType", "kOfxPropName", "kOfxPropLabel", "kOfxPropTime", "kOfxPropInstanceData",
    "kOfxPropChangeReason", "kOfxChangeUserEdited", "kOfxChangePluginEdited", "kOfxChangeTime",
    "kOfxTypeImageEffectHost", "kOfxTypeImageEffect", "kOfxTypeImageEffectInstance",
    "kOfxTypeParameter", "kOfxTypeParameterInstance", "kOfxTypeClip", "kOfxTypeImage",
    "kOfxImageEffectPropContext", "kOfxImageEffectPropSupportedContexts",
    "kOfxImageEffectPluginPropGrouping", "kOfxImageEffectPluginRenderThreadSafety",
    "kOfxImageEffectRenderFullySafe", "kOfxImageEffectPropSupportsTiles",
    "kOfxImageEffectPropSupportsMultiResolution", "kOfxImageEffectPropTemporalClipAccess",
    "kOfxImageEffectPropSupportedPixelDepths", "kOfxImageEffectPropSupportedComponents",
    "kOfxImageEffectPropProjectSize", "kOfxImageEffectPropProjectOffset",
    "kOfxImageEffectPropProjectExtent", "kOfxImageEffectPropFrameRange",
    "kOfxImageEffectPropRenderScale", "kOfxImageEffectPropRenderWindow",
    "kOfxImageEffectPropFieldToRender", "kOfxImageEffectPropSequentialRenderStatus",
    "kOfxImageEffectPropInteractiveRenderStatus", "kOfxImageEffectPropRegionOfDefinition",
    "kOfxImageClipPropConnected", "kOfxImageClipPropOptional", "kOfxImageClipPropIsMask",
    "kOfxImageEffectPropPixelDepth", "kOfxImageEffectPropComponents",
    "kOfxImageEffectPropPreMultiplication", "kOfxImagePropPixelAspectRatio", "kOfxImagePropData",
    "kOfxImagePropBounds", "kOfxImagePropRegionOfDefinition", "kOfxImagePropRowBytes",
    "kOfxImagePropField", "kOfxBitDepthFloat", "kOfxBitDepthHalf", "kOfxBitDepthShort",
    "kOfxBitDepthByte", "kOfxImageComponentRGBA", "kOfxImageComponentRGB",
    "kOfxImageComponentAlpha", "kOfxImageOpaque", "kOfxPropertySuite", "kOfxImageEffectSuite",
    "kOfxParameterSuite", "kOfxMemorySuite", "kOfxMultiThreadSuite", "kOfxMessageSuite",
    "kOfxProgressSuite", "kOfxParamTypeInteger", "kOfxParamTypeDouble", "kOfxParamTypeBoolean",
    "kOfxParamTypeChoice", "kOfxParamTypeString", "kOfxParamTypePushButton",
    "kOfxParamTypeInteger2D", "kOfxParamTypeInteger3D", "kOfxParamTypeDouble2D",
    "kOfxParamTypeGroup", "kOfxParamTypePage", "kOfxParamPropType", "kOfxParamPropScriptName",
    "kOfxParamPropHint", "kOfxParamPropDefault", "kOfxParamPropAnimates",
    "kOfxParamPropPersistant", "kOfxParamPropEvaluateOnChange", "kOfxParamPropSecret",
    "kOfxParamPropMin", "kOfxParamPropMax", "kOfxParamPropDisplayMin", "kOfxParamPropDisplayMax",
    "kOfxParamPropChoiceOption", "kOfxParamPropStringMode", "kOfxParamStringIsSingleLine",
    "kOfxParamStringIsMultiLine", "kOfxParamStringIsLabel", "kOfxMessageError",
    "kOfxMessageWarning", "kOfxMessageMessage",
]

# The standard's irregular ones.
SPEC_STRINGS = {
    **{k: k[1:] for k in SAME_AS_NAME},
    "kOfxImageEffectPluginApi": "OfxImageEffectPluginAPI",
    "kOfxImageEffectOutputClipName": "Output",
    "kOfxImageEffectSimpleSourceClipName": "Source",
    "kOfxImagePreMultiplied": "OfxImageAlphaPremultiplied",
    "kOfxImageUnPreMultiplied": "OfxImageAlphaUnPremultiplied",
    "kOfxImageFieldNone": "OfxFieldNone",
    "kOfxImageEffectPropProjectPixelAspectRatio": "OfxImageEffectPropPixelAspectRatio",
}

# Suite members in the standard's order (the order IS the ABI).
SPEC_SUITES = {
    "OfxPropertySuiteV1": [
        "propSetPointer", "propSetString", "propSetDouble", "propSetInt", "propSetPointerN",
        "propSetStringN", "propSetDoubleN", "propSetIntN", "propGetPointer", "propGetString",
        "propGetDouble", "propGetInt", "propGetPointerN", "propGetStringN", "propGetDoubleN",
        "propGetIntN", "propReset", "propGetDimension"],
    "OfxImageEffectSuiteV1": [
        "getPropertySet", "getParamSet", "clipDefine", "clipGetHandle", "clipGetPropertySet",
        "clipGetImage", "clipReleaseImage", "clipGetRegionOfDefinition", "abort",
        "imageMemoryAlloc", "imageMemoryFree", "imageMemoryLock", "imageMemoryUnlock"],
    "OfxParameterSuiteV1": [
        "paramDefine", "paramGetHandle", "paramSetGetPropertySet", "paramGetPropertySet",
        "paramGetValue", "paramGetValueAtTime", "paramGetDerivative", "paramGetIntegral",
        "paramSetValue", "paramSetValueAtTime", "paramGetNumKeys", "paramGetKeyTime",
        "paramGetKeyIndex", "paramDeleteKey", "paramDeleteAllKeys", "paramCopy", "paramEditBegin",
        "paramEditEnd"],
    "OfxMemorySuiteV1": ["memoryAlloc", "memoryFree"],
    "OfxMultiThreadSuiteV1": [
        "multiThread", "multiThreadNumCPUs", "multiThreadIndex", "multiThreadIsSpawnedThread",
        "mutexCreate", "mutexDestroy", "mutexLock", "mutexUnLock", "mutexTryLock"],
    "OfxMessageSuiteV1": ["message"],
    "OfxMessageSuiteV2": ["message", "setPersistentMessage", "clearPersistentMessage"],
    "OfxProgressSuiteV1": ["progressStart", "progressUpdate", "progressEnd"],
    "OfxHost": ["host", "fetchSuite"],
}


@pytest.fixture(scope="module")
def abi(ofx):  # noqa: F811
    out = subprocess.run([str(ofx.abi_dump)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_status_codes_match_the_spec(abi):
    assert abi["status"] == SPEC_STATUS


def test_strings_match_the_spec(abi):
    assert set(SPEC_STRINGS) <= set(abi["strings"]), sorted(set(SPEC_STRINGS) - set(abi["strings"]))
    wrong = {k: (abi["strings"][k], v) for k, v in SPEC_STRINGS.items() if abi["strings"][k] != v}
    assert not wrong, wrong
    assert abi["api_version"] == 1


def test_suite_layouts_follow_the_spec_order(abi):
    ptr = abi["pointer_size"]
    for suite, members in SPEC_SUITES.items():
        layout = abi["layouts"][suite]
        assert [name for name, _ in layout["fields"]] == members, suite
        assert [off for _, off in layout["fields"]] == [k * ptr for k in range(len(members))], suite
        assert layout["size"] == len(members) * ptr, suite


def test_plain_structs(abi):
    lay = abi["layouts"]
    ptr = abi["pointer_size"]
    assert ptr == 8  # the CI target is LP64
    # OfxPlugin: const char*, int, const char*, unsigned, unsigned, setHost, mainEntry
    assert lay["OfxPlugin"]["fields"] == [["pluginApi", 0], ["apiVersion", 8], ["pluginIdentifier", 16],
                                          ["pluginVersionMajor", 24], ["pluginVersionMinor", 28],
                                          ["setHost", 32], ["mainEntry", 40]]
    assert lay["OfxPlugin"]["size"] == 48
    assert lay["OfxRectI"]["size"] == 16 and [o for _, o in lay["OfxRectI"]["fields"]] == [0, 4, 8, 12]
    assert lay["OfxRectD"]["size"] == 32 and [o for _, o in lay["OfxRectD"]["fields"]] == [0, 8, 16, 24]
    assert lay["OfxPointD"]["size"] == 16 and lay["OfxRangeD"]["size"] == 16


# --- protocol building blocks -----------------------------------------------------------------


def test_float_to_half_matches_numpy(ofx, tmp_path):  # noqa: F811
    rng = np.random.default_rng(7)
    specials = np.array([0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 1e6, -1e6, np.inf, -np.inf,
                         np.nan, 6.1035156e-05, 6.0975552e-05, 5.9604645e-08, 2.9802322e-08,
                         2.9802326e-08, 1e-9, 0.1, 1 / 3, 2049.0, 2051.0, 4097.0], np.float32)
    values = np.concatenate([
        specials,
        rng.normal(0, 3, 20000).astype(np.float32),
        (rng.random(20000) * 70000).astype(np.float32),
        np.ldexp(rng.random(20000), rng.integers(-30, -10, 20000)).astype(np.float32),
    ])
    # every half value and every midpoint between neighbours (the rounding ties)
    halves = np.arange(0, 0x7c00, dtype=np.uint16).view(np.float16).astype(np.float32)
    mids = ((halves[:-1].astype(np.float64) + halves[1:]) / 2).astype(np.float32)
    values = np.concatenate([values, halves, -halves, mids, -mids])
    src, dst = tmp_path / "in.f32", tmp_path / "out.u16"
    values.tofile(src)
    subprocess.run([str(ofx.unit), "f2h", str(src), str(dst)], check=True)
    ours = np.fromfile(dst, dtype=np.uint16)
    with np.errstate(over="ignore"):
        ref = values.astype(np.float16).view(np.uint16)
    bad = np.nonzero(ours != ref)[0]
    assert bad.size == 0, [(float(values[i]), hex(ours[i]), hex(ref[i])) for i in bad[:10]]


def test_half_to_float_matches_numpy(ofx, tmp_path):  # noqa: F811
    dst = tmp_path / "h2f.f32"
    subprocess.run([str(ofx.unit), "h2f", str(dst)], check=True)
    ours = np.fromfile(dst, dtype=np.float32)
    ref = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(ours[~nan].view(np.uint32), ref[~nan].view(np.uint32))


SPEC_HELLO_HEX = """84 a1 76 01 a4 74 79 70 65 a5 68 65 6c 6c 6f a2 69 64 01 a4 62 6f 64 79
82 a6 63 6c 69 65 6e 74 aa 6c 6f 72 61 66 78 2d 6f 66 78 ae 63 6c 69 65
6e 74 5f 76 65 72 73 69 6f 6e a3 30 2e 31"""


def _decode(ofx, hexstr):  # noqa: F811
    return subprocess.run([str(ofx.unit), "decode", hexstr], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_msgpack_header_codec(ofx):  # noqa: F811
    # PROTOCOL.md §11's worked example decodes.
    out = _decode(ofx, SPEC_HELLO_HEX)
    assert out.startswith("ok ") and "client: lorafx-ofx" in out and "type: hello" in out, out
    # What the plug-in sends is the same header (map key order is not significant).
    hexed = subprocess.run([str(ofx.unit), "encode-hello"], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert msgpack.unpackb(bytes.fromhex(hexed), raw=False) == msgpack.unpackb(
        bytes.fromhex(SPEC_HELLO_HEX.replace("\n", " ")), raw=False)
    # §2: exactly one object, str keys, no ext, no bin where str is expected.
    assert _decode(ofx, SPEC_HELLO_HEX + " c0").startswith("error trailing bytes")
    assert _decode(ofx, "81 a1 78 d4 01 00").startswith("error")  # ext value
    assert _decode(ofx, "81 a1 78 c4 01 61").startswith("error")  # bin value
    assert _decode(ofx, "81 01 02").startswith("error")  # int key
    assert _decode(ofx, "dc ff ff").startswith("error")  # array declaring 65535 items, no data
    assert _decode(ofx, "").startswith("error")
    deep = "91" * 40 + "c0"
    assert _decode(ofx, deep).startswith("error")
