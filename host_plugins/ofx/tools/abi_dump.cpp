// Prints, as JSON, the values and struct layouts that src/ofx_abi.h declares, so
// tests/test_ofx_abi.py can compare them with the OpenFX specification.
#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "ofx_abi.h"

namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o;
}

struct Field {
  const char* name;
  size_t offset;
};

void layout(const char* name, size_t size, const std::vector<Field>& fields, bool last = false) {
  std::printf("    \"%s\": {\"size\": %zu, \"fields\": [", name, size);
  for (size_t i = 0; i < fields.size(); ++i)
    std::printf("%s[\"%s\", %zu]", i ? ", " : "", fields[i].name, fields[i].offset);
  std::printf("]}%s\n", last ? "" : ",");
}

}  // namespace

#define STAT(x) {#x, x}
#define STR(x) {#x, x}
#define F(T, m) Field{#m, offsetof(T, m)}

int main() {
  const std::pair<const char*, int> stats[] = {
      STAT(kOfxStatOK),           STAT(kOfxStatFailed),        STAT(kOfxStatErrFatal),
      STAT(kOfxStatErrUnknown),   STAT(kOfxStatErrMissingHostFeature),
      STAT(kOfxStatErrUnsupported), STAT(kOfxStatErrExists),   STAT(kOfxStatErrFormat),
      STAT(kOfxStatErrMemory),    STAT(kOfxStatErrBadHandle),  STAT(kOfxStatErrBadIndex),
      STAT(kOfxStatErrValue),     STAT(kOfxStatReplyYes),      STAT(kOfxStatReplyNo),
      STAT(kOfxStatReplyDefault), STAT(kOfxStatErrImageFormat)};
  const std::pair<const char*, const char*> strings[] = {
      STR(kOfxActionLoad), STR(kOfxActionDescribe), STR(kOfxActionUnload),
      STR(kOfxActionPurgeCaches), STR(kOfxActionSyncPrivateData), STR(kOfxActionCreateInstance),
      STR(kOfxActionDestroyInstance), STR(kOfxActionInstanceChanged),
      STR(kOfxActionBeginInstanceChanged), STR(kOfxActionEndInstanceChanged),
      STR(kOfxActionBeginInstanceEdit), STR(kOfxActionEndInstanceEdit),
      STR(kOfxImageEffectActionGetRegionOfDefinition),
      STR(kOfxImageEffectActionGetRegionsOfInterest), STR(kOfxImageEffectActionGetTimeDomain),
      STR(kOfxImageEffectActionGetFramesNeeded), STR(kOfxImageEffectActionGetClipPreferences),
      STR(kOfxImageEffectActionIsIdentity), STR(kOfxImageEffectActionRender),
      STR(kOfxImageEffectActionBeginSequenceRender), STR(kOfxImageEffectActionEndSequenceRender),
      STR(kOfxImageEffectActionDescribeInContext), STR(kOfxImageEffectPluginApi),
      STR(kOfxImageEffectContextFilter), STR(kOfxImageEffectContextGeneral),
      STR(kOfxImageEffectOutputClipName), STR(kOfxImageEffectSimpleSourceClipName),
      STR(kOfxPropType), STR(kOfxPropName), STR(kOfxPropLabel), STR(kOfxPropTime),
      STR(kOfxPropInstanceData), STR(kOfxPropChangeReason), STR(kOfxChangeUserEdited),
      STR(kOfxChangePluginEdited), STR(kOfxChangeTime), STR(kOfxTypeImageEffectHost),
      STR(kOfxTypeImageEffect), STR(kOfxTypeImageEffectInstance), STR(kOfxTypeParameter),
      STR(kOfxTypeParameterInstance), STR(kOfxTypeClip), STR(kOfxTypeImage),
      STR(kOfxImageEffectPropContext), STR(kOfxImageEffectPropSupportedContexts),
      STR(kOfxImageEffectPluginPropGrouping), STR(kOfxImageEffectPluginRenderThreadSafety),
      STR(kOfxImageEffectRenderFullySafe), STR(kOfxImageEffectPropSupportsTiles),
      STR(kOfxImageEffectPropSupportsMultiResolution), STR(kOfxImageEffectPropTemporalClipAccess),
      STR(kOfxImageEffectPropSupportedPixelDepths), STR(kOfxImageEffectPropSupportedComponents),
      STR(kOfxImageEffectPropProjectSize), STR(kOfxImageEffectPropProjectOffset),
      STR(kOfxImageEffectPropProjectExtent), STR(kOfxImageEffectPropProjectPixelAspectRatio),
      STR(kOfxImageEffectPropFrameRange), STR(kOfxImageEffectPropRenderScale),
      STR(kOfxImageEffectPropRenderWindow), STR(kOfxImageEffectPropFieldToRender),
      STR(kOfxImageEffectPropSequentialRenderStatus),
      STR(kOfxImageEffectPropInteractiveRenderStatus),
      STR(kOfxImageEffectPropRegionOfDefinition), STR(kOfxImageClipPropConnected),
      STR(kOfxImageClipPropOptional), STR(kOfxImageClipPropIsMask),
      STR(kOfxImageEffectPropPixelDepth), STR(kOfxImageEffectPropComponents),
      STR(kOfxImageEffectPropPreMultiplication), STR(kOfxImagePropPixelAspectRatio),
      STR(kOfxImagePropData), STR(kOfxImagePropBounds), STR(kOfxImagePropRegionOfDefinition),
      STR(kOfxImagePropRowBytes), STR(kOfxImagePropField), STR(kOfxBitDepthFloat),
      STR(kOfxBitDepthHalf), STR(kOfxBitDepthShort), STR(kOfxBitDepthByte),
      STR(kOfxImageComponentRGBA), STR(kOfxImageComponentRGB), STR(kOfxImageComponentAlpha),
      STR(kOfxImagePreMultiplied), STR(kOfxImageUnPreMultiplied), STR(kOfxImageOpaque),
      STR(kOfxImageFieldNone), STR(kOfxPropertySuite), STR(kOfxImageEffectSuite),
      STR(kOfxParameterSuite), STR(kOfxMemorySuite), STR(kOfxMultiThreadSuite),
      STR(kOfxMessageSuite), STR(kOfxProgressSuite), STR(kOfxParamTypeInteger),
      STR(kOfxParamTypeDouble), STR(kOfxParamTypeBoolean), STR(kOfxParamTypeChoice),
      STR(kOfxParamTypeString), STR(kOfxParamTypePushButton), STR(kOfxParamTypeInteger2D),
      STR(kOfxParamTypeInteger3D), STR(kOfxParamTypeDouble2D), STR(kOfxParamTypeGroup),
      STR(kOfxParamTypePage), STR(kOfxParamPropType), STR(kOfxParamPropScriptName),
      STR(kOfxParamPropHint), STR(kOfxParamPropDefault), STR(kOfxParamPropAnimates),
      STR(kOfxParamPropPersistant), STR(kOfxParamPropEvaluateOnChange), STR(kOfxParamPropSecret),
      STR(kOfxParamPropMin), STR(kOfxParamPropMax), STR(kOfxParamPropDisplayMin),
      STR(kOfxParamPropDisplayMax), STR(kOfxParamPropChoiceOption), STR(kOfxParamPropStringMode),
      STR(kOfxParamStringIsSingleLine), STR(kOfxParamStringIsMultiLine),
      STR(kOfxParamStringIsLabel), STR(kOfxMessageError), STR(kOfxMessageWarning),
      STR(kOfxMessageMessage)};

  std::printf("{\n  \"pointer_size\": %zu,\n  \"status\": {", sizeof(void*));
  bool first = true;
  for (const auto& s : stats) {
    std::printf("%s\"%s\": %d", first ? "" : ", ", s.first, s.second);
    first = false;
  }
  std::printf("},\n  \"api_version\": %d,\n  \"strings\": {\n", kOfxImageEffectPluginApiVersion);
  first = true;
  for (const auto& s : strings) {
    std::printf("%s    \"%s\": \"%s\"", first ? "" : ",\n", s.first, esc(s.second).c_str());
    first = false;
  }
  std::printf("\n  },\n  \"layouts\": {\n");
  layout("OfxHost", sizeof(OfxHost), {F(OfxHost, host), F(OfxHost, fetchSuite)});
  layout("OfxPlugin", sizeof(OfxPlugin),
         {F(OfxPlugin, pluginApi), F(OfxPlugin, apiVersion), F(OfxPlugin, pluginIdentifier),
          F(OfxPlugin, pluginVersionMajor), F(OfxPlugin, pluginVersionMinor),
          F(OfxPlugin, setHost), F(OfxPlugin, mainEntry)});
  layout("OfxRectI", sizeof(OfxRectI), {F(OfxRectI, x1), F(OfxRectI, y1), F(OfxRectI, x2), F(OfxRectI, y2)});
  layout("OfxRectD", sizeof(OfxRectD), {F(OfxRectD, x1), F(OfxRectD, y1), F(OfxRectD, x2), F(OfxRectD, y2)});
  layout("OfxPointD", sizeof(OfxPointD), {F(OfxPointD, x), F(OfxPointD, y)});
  layout("OfxRangeD", sizeof(OfxRangeD), {F(OfxRangeD, min), F(OfxRangeD, max)});
  using P = OfxPropertySuiteV1;
  layout("OfxPropertySuiteV1", sizeof(P),
         {F(P, propSetPointer), F(P, propSetString), F(P, propSetDouble), F(P, propSetInt),
          F(P, propSetPointerN), F(P, propSetStringN), F(P, propSetDoubleN), F(P, propSetIntN),
          F(P, propGetPointer), F(P, propGetString), F(P, propGetDouble), F(P, propGetInt),
          F(P, propGetPointerN), F(P, propGetStringN), F(P, propGetDoubleN), F(P, propGetIntN),
          F(P, propReset), F(P, propGetDimension)});
  using E = OfxImageEffectSuiteV1;
  layout("OfxImageEffectSuiteV1", sizeof(E),
         {F(E, getPropertySet), F(E, getParamSet), F(E, clipDefine), F(E, clipGetHandle),
          F(E, clipGetPropertySet), F(E, clipGetImage), F(E, clipReleaseImage),
          F(E, clipGetRegionOfDefinition), F(E, abort), F(E, imageMemoryAlloc),
          F(E, imageMemoryFree), F(E, imageMemoryLock), F(E, imageMemoryUnlock)});
  using PA = OfxParameterSuiteV1;
  layout("OfxParameterSuiteV1", sizeof(PA),
         {F(PA, paramDefine), F(PA, paramGetHandle), F(PA, paramSetGetPropertySet),
          F(PA, paramGetPropertySet), F(PA, paramGetValue), F(PA, paramGetValueAtTime),
          F(PA, paramGetDerivative), F(PA, paramGetIntegral), F(PA, paramSetValue),
          F(PA, paramSetValueAtTime), F(PA, paramGetNumKeys), F(PA, paramGetKeyTime),
          F(PA, paramGetKeyIndex), F(PA, paramDeleteKey), F(PA, paramDeleteAllKeys),
          F(PA, paramCopy), F(PA, paramEditBegin), F(PA, paramEditEnd)});
  layout("OfxMemorySuiteV1", sizeof(OfxMemorySuiteV1),
         {F(OfxMemorySuiteV1, memoryAlloc), F(OfxMemorySuiteV1, memoryFree)});
  using MT = OfxMultiThreadSuiteV1;
  layout("OfxMultiThreadSuiteV1", sizeof(MT),
         {F(MT, multiThread), F(MT, multiThreadNumCPUs), F(MT, multiThreadIndex),
          F(MT, multiThreadIsSpawnedThread), F(MT, mutexCreate), F(MT, mutexDestroy),
          F(MT, mutexLock), F(MT, mutexUnLock), F(MT, mutexTryLock)});
  layout("OfxMessageSuiteV1", sizeof(OfxMessageSuiteV1), {F(OfxMessageSuiteV1, message)});
  layout("OfxMessageSuiteV2", sizeof(OfxMessageSuiteV2),
         {F(OfxMessageSuiteV2, message), F(OfxMessageSuiteV2, setPersistentMessage),
          F(OfxMessageSuiteV2, clearPersistentMessage)});
  layout("OfxProgressSuiteV1", sizeof(OfxProgressSuiteV1),
         {F(OfxProgressSuiteV1, progressStart), F(OfxProgressSuiteV1, progressUpdate),
          F(OfxProgressSuiteV1, progressEnd)},
         true);
  std::printf("  }\n}\n");
  return 0;
}
