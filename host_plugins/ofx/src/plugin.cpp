// lorafx OpenFX bridge: carries a compositor's one-frame edit through a whole shot by driving
// the lorafx GPU server (protocol/PROTOCOL.md) from any OFX host (Nuke, Resolve, Fusion,
// Natron, Flame).
//
//   Train  (button): reads the plate (Source), the matte (Matte) and the edited frames
//                    (Reference) over the edit's frame range through the host's clip API,
//                    uploads them (shot.create + shot.put_frames) and submits job.train.
//   Render (button): uploads the edited frames again (they may have been touched up since
//                    training) and submits job.render -- after training, if it is still running.
//   Cancel / Refresh (buttons): job.cancel; re-query the server and update the status line.
//   Render action:   the server's rendered frame for time t (result.fetch, cached in memory),
//                    or the Source frame plus a persistent message saying why not.
//
// The host's threads never wait on the network without a bound: uploads run under the host's
// progress bar with abort checks, job polling and result fetching run on a per-instance worker
// thread (session.h), and render threads wait for a fetched frame at most a few seconds.
// Every entry point catches all exceptions: nothing escapes into the host.

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "client.h"
#include "ofx_abi.h"
#include "ofx_support.h"
#include "session.h"

using namespace lorafx;
using namespace lorafx::ofx;

namespace {

constexpr const char* kPluginId = "io.lorafx.LoraEdit";
constexpr unsigned kVersionMajor = LORAFX_OFX_VERSION_MAJOR;
constexpr unsigned kVersionMinor = LORAFX_OFX_VERSION_MINOR;

// Clip names.
constexpr const char* kClipSource = kOfxImageEffectSimpleSourceClipName;
constexpr const char* kClipMatte = "Matte";
constexpr const char* kClipReference = "Reference";
constexpr const char* kClipOutput = kOfxImageEffectOutputClipName;

// Parameter names (also their script names).
constexpr const char* kParamServer = "serverAddress";
constexpr const char* kParamShot = "shotName";
constexpr const char* kParamFirst = "firstFrame";
constexpr const char* kParamLast = "lastFrame";
constexpr const char* kParamSetRange = "setRangeFromInput";
constexpr const char* kParamReferences = "referenceFrames";
constexpr const char* kParamPrompt = "prompt";
constexpr const char* kParamSteps = "trainingSteps";
constexpr const char* kParamSeed = "seed";
constexpr const char* kParamQuality = "quality";
constexpr const char* kParamRenderSteps = "renderSteps";
constexpr const char* kParamUseMatte = "useMatte";
constexpr const char* kParamColorspace = "colorspace";
constexpr const char* kParamTrain = "train";
constexpr const char* kParamRender = "render";
constexpr const char* kParamCancel = "cancel";
constexpr const char* kParamRefresh = "refresh";
constexpr const char* kParamStatus = "status";
constexpr const char* kParamResultVersion = "resultVersion";

constexpr const char* kDefaultServer = "tcp://127.0.0.1:5555";

// Quality presets: render sampling steps and LoRA rank.
struct Preset {
  const char* label;
  int render_steps;
  int rank;
};
constexpr Preset kPresets[] = {{"Draft", 12, 8}, {"Standard", 30, 16}, {"Final", 50, 32}};
constexpr int kDefaultPreset = 1;

const std::regex& shot_name_re() {
  static const std::regex re("^[A-Za-z0-9_.-]{1,64}$");
  return re;
}

// --- per-instance state -----------------------------------------------------------------------

struct Instance {
  OfxImageEffectHandle effect = nullptr;
  std::string context;
  std::mutex session_mu;
  std::unique_ptr<Session> session;  // created on first use
  std::mutex message_mu;
  std::string shown_message;  // the persistent message currently shown ("" = none)

  Session& get_session() {
    std::lock_guard<std::mutex> lk(session_mu);
    if (!session) {
      std::string host = g.host_label.empty() ? g.host_name : g.host_label;
      session = std::make_unique<Session>(host);
    }
    return *session;
  }
  Session* existing_session() {
    std::lock_guard<std::mutex> lk(session_mu);
    return session.get();
  }
};

Instance* instance_of(OfxImageEffectHandle effect) {
  OfxPropertySetHandle props = nullptr;
  if (g.effect->getPropertySet(effect, &props) != kOfxStatOK) return nullptr;
  return static_cast<Instance*>(prop_ptr(props, kOfxPropInstanceData));
}

OfxPropertySetHandle effect_props(OfxImageEffectHandle effect) {
  OfxPropertySetHandle props = nullptr;
  g.effect->getPropertySet(effect, &props);
  return props;
}

OfxImageClipHandle clip(OfxImageEffectHandle effect, const char* name) {
  OfxImageClipHandle c = nullptr;
  if (g.effect->clipGetHandle(effect, name, &c, nullptr) != kOfxStatOK) return nullptr;
  return c;
}

OfxPropertySetHandle clip_props(OfxImageClipHandle c) {
  OfxPropertySetHandle p = nullptr;
  if (!c || g.effect->clipGetPropertySet(c, &p) != kOfxStatOK) return nullptr;
  return p;
}

bool clip_connected(OfxImageClipHandle c) {
  return c && prop_int(clip_props(c), kOfxImageClipPropConnected, 0, 0) != 0;
}

// --- parameters -------------------------------------------------------------------------------

OfxParamHandle param(OfxImageEffectHandle effect, const char* name) {
  OfxParamSetHandle ps = nullptr;
  OfxParamHandle p = nullptr;
  if (g.effect->getParamSet(effect, &ps) != kOfxStatOK) return nullptr;
  if (g.param->paramGetHandle(ps, name, &p, nullptr) != kOfxStatOK) return nullptr;
  return p;
}

int get_int(OfxImageEffectHandle e, const char* name, int dflt) {
  OfxParamHandle p = param(e, name);
  int v = dflt;
  if (!p || g.param->paramGetValue(p, &v) != kOfxStatOK) return dflt;
  return v;
}

std::string get_string(OfxImageEffectHandle e, const char* name, const std::string& dflt = "") {
  OfxParamHandle p = param(e, name);
  char* v = nullptr;
  if (!p || g.param->paramGetValue(p, &v) != kOfxStatOK || !v) return dflt;
  return v;
}

void set_string(OfxImageEffectHandle e, const char* name, const std::string& value) {
  if (OfxParamHandle p = param(e, name)) g.param->paramSetValue(p, value.c_str());
}

void set_int(OfxImageEffectHandle e, const char* name, int value) {
  if (OfxParamHandle p = param(e, name)) g.param->paramSetValue(p, value);
}

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

// Everything Train / Render need, read and validated from the parameters.
struct Settings {
  ShotRef ref;
  std::vector<int> references;
  std::string prompt;
  std::string colorspace;
  int train_steps = 100;
  uint64_t seed = 0;
  Preset preset = kPresets[kDefaultPreset];
  int render_steps = 30;
  bool use_matte = false;
};

// Parses "1001,1025" / "1001 1025" (negative frames allowed). Throws std::invalid_argument.
std::vector<int> parse_frames(const std::string& text) {
  std::vector<int> out;
  std::string token;
  auto flush = [&] {
    if (token.empty()) return;
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(token, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != token.size() || v < INT32_MIN || v > INT32_MAX)
      throw std::invalid_argument("'" + token + "' is not a frame number");
    out.push_back(static_cast<int>(v));
    token.clear();
  };
  for (char ch : text) {
    if (ch == ',' || ch == ';' || std::isspace(static_cast<unsigned char>(ch)))
      flush();
    else
      token += ch;
  }
  flush();
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

ShotRef read_ref(OfxImageEffectHandle e) {
  ShotRef r;
  r.endpoint = trim(get_string(e, kParamServer, kDefaultServer));
  if (r.endpoint.empty()) r.endpoint = kDefaultServer;
  r.shot = trim(get_string(e, kParamShot));
  r.first = get_int(e, kParamFirst, 1001);
  r.last = get_int(e, kParamLast, 1001);
  return r;
}

// Reads and validates the parameters; throws std::invalid_argument with a message for the artist.
Settings read_settings(OfxImageEffectHandle e, const Instance& inst) {
  Settings s;
  s.ref = read_ref(e);
  if (s.ref.shot.empty()) throw std::invalid_argument("set a Shot Name first");
  if (!std::regex_match(s.ref.shot, shot_name_re()) || s.ref.shot == "." || s.ref.shot == "..")
    throw std::invalid_argument("Shot Name '" + s.ref.shot +
                                "' may only use letters, digits, '_', '.', '-' (1-64 characters)");
  if (s.ref.last < s.ref.first)
    throw std::invalid_argument("Last Frame (" + std::to_string(s.ref.last) +
                                ") is before First Frame (" + std::to_string(s.ref.first) + ")");
  if (static_cast<long long>(s.ref.last) - s.ref.first + 1 > 100000)
    throw std::invalid_argument("the frame range is longer than 100000 frames");
  s.references = parse_frames(get_string(e, kParamReferences));
  if (s.references.empty()) s.references.push_back(s.ref.first);
  for (int f : s.references)
    if (f < s.ref.first || f > s.ref.last)
      throw std::invalid_argument("reference frame " + std::to_string(f) + " is outside " +
                                  std::to_string(s.ref.first) + "-" + std::to_string(s.ref.last));
  if (s.references.size() > 16)
    throw std::invalid_argument("at most 16 reference frames");
  s.prompt = trim(get_string(e, kParamPrompt));
  s.colorspace = trim(get_string(e, kParamColorspace));
  s.train_steps = std::max(1, get_int(e, kParamSteps, 100));
  s.seed = static_cast<uint64_t>(std::max(0, get_int(e, kParamSeed, 0)));
  int q = get_int(e, kParamQuality, kDefaultPreset);
  if (q < 0 || q >= static_cast<int>(sizeof kPresets / sizeof kPresets[0])) q = kDefaultPreset;
  s.preset = kPresets[q];
  const int steps = get_int(e, kParamRenderSteps, 0);
  s.render_steps = steps > 0 ? std::min(steps, 1000) : s.preset.render_steps;
  s.use_matte = inst.context == kOfxImageEffectContextGeneral && get_int(e, kParamUseMatte, 1) != 0;
  return s;
}

// --- host messages ----------------------------------------------------------------------------

void post_error(OfxImageEffectHandle e, const std::string& text) {
  if (g.message) g.message->message(e, kOfxMessageError, "lorafx", "%s", text.c_str());
}

void show_persistent(Instance& inst, const std::string& text) {
  std::lock_guard<std::mutex> lk(inst.message_mu);
  if (inst.shown_message == text) return;
  if (!g.message2) return;
  if (text.empty())
    g.message2->clearPersistentMessage(inst.effect);
  else
    g.message2->setPersistentMessage(inst.effect, kOfxMessageWarning, "lorafx", "%s",
                                     ("lorafx: " + text).c_str());
  inst.shown_message = text;
}

// Writes the session's status line and result generation to the parameters. Only called from
// actions in which a plug-in may set parameters (instance changed, sync private data).
void sync_status(Instance& inst) {
  Session* s = inst.existing_session();
  if (!s) return;
  StatusSnapshot st = s->status();
  if (get_string(inst.effect, kParamStatus) != st.text) set_string(inst.effect, kParamStatus, st.text);
  // The hidden generation parameter changes whenever the frames a render would show change,
  // so the host's frame cache drops frames it rendered before the results arrived.
  const int gen = static_cast<int>(st.generation & 0x3fffffff);
  if (get_int(inst.effect, kParamResultVersion, 0) != gen) set_int(inst.effect, kParamResultVersion, gen);
}

// --- geometry ---------------------------------------------------------------------------------

// The frame's full image in pixel coordinates at render scale 1: the host's project window
// (display window / format), falling back to the clip's region of definition.
OfxRectI display_window(OfxImageEffectHandle e, OfxImageClipHandle c, OfxTime t) {
  OfxPropertySetHandle ep = effect_props(e);
  const double sx = prop_double(ep, kOfxImageEffectPropProjectSize, 0, 0.0);
  const double sy = prop_double(ep, kOfxImageEffectPropProjectSize, 1, 0.0);
  const double ox = prop_double(ep, kOfxImageEffectPropProjectOffset, 0, 0.0);
  const double oy = prop_double(ep, kOfxImageEffectPropProjectOffset, 1, 0.0);
  double par = prop_double(clip_props(c), kOfxImagePropPixelAspectRatio, 0, 1.0);
  if (!(par > 0.0)) par = 1.0;
  if (sx >= 1.0 && sy >= 1.0) {
    return {static_cast<int>(std::floor(ox / par + 1e-6)), static_cast<int>(std::floor(oy + 1e-6)),
            static_cast<int>(std::ceil((ox + sx) / par - 1e-6)),
            static_cast<int>(std::ceil(oy + sy - 1e-6))};
  }
  OfxRectD rod{0, 0, 0, 0};
  if (c && g.effect->clipGetRegionOfDefinition(c, t, &rod) == kOfxStatOK && rod.x2 > rod.x1)
    return {static_cast<int>(std::floor(rod.x1 / par)), static_cast<int>(std::floor(rod.y1)),
            static_cast<int>(std::ceil(rod.x2 / par)), static_cast<int>(std::ceil(rod.y2))};
  return {0, 0, 0, 0};
}

// --- Train / Render buttons -------------------------------------------------------------------

// Progress + abort for long actions: the host's progress bar (cancel button) and abort().
class Progress {
 public:
  Progress(OfxImageEffectHandle e, const char* label) : e_(e) {
    if (g.progress) started_ = g.progress->progressStart(e_, label) == kOfxStatOK;
  }
  ~Progress() {
    if (started_) g.progress->progressEnd(e_);
  }
  // false when the artist asked to stop
  bool update(double fraction) {
    if (started_ && g.progress->progressUpdate(e_, fraction) == kOfxStatReplyNo) return false;
    return !(g.effect->abort && g.effect->abort(e_));
  }

 private:
  OfxImageEffectHandle e_;
  bool started_ = false;
};

struct Cancelled {};

// Collects frames of one role and uploads them in ~64 MiB messages as they come.
class Uploader {
 public:
  Uploader(Connection& c, std::string shot, std::string role)
      : c_(c), shot_(std::move(shot)), role_(std::move(role)) {}
  void add(EncodedFrame f) {
    bytes_ += f.data->size();
    batch_.push_back(std::move(f));
    if (bytes_ >= (64u << 20)) flush();
  }
  void flush() {
    if (batch_.empty()) return;
    std::vector<int> stored = put_frames(c_, shot_, role_, batch_);
    count_ += stored.size();
    batch_.clear();
    bytes_ = 0;
  }
  size_t count() const { return count_; }

 private:
  Connection& c_;
  std::string shot_, role_;
  std::vector<EncodedFrame> batch_;
  size_t bytes_ = 0, count_ = 0;
};

// The edited frames: from the Reference input, or (Filter context / Reference not connected)
// from Source, where the edit was painted upstream.
std::vector<EncodedFrame> gather_references(Instance& inst, const Settings& s, const OfxRectI& window,
                                            Progress* progress, double p0, double p1) {
  OfxImageClipHandle refclip = inst.context == kOfxImageEffectContextGeneral
                                   ? clip(inst.effect, kClipReference) : nullptr;
  const bool from_reference = refclip && clip_connected(refclip);
  OfxImageClipHandle src = from_reference ? refclip : clip(inst.effect, kClipSource);
  const char* input = from_reference ? "Reference" : "Source";
  std::vector<EncodedFrame> out;
  for (size_t i = 0; i < s.references.size(); ++i) {
    if (progress && !progress->update(p0 + (p1 - p0) * i / s.references.size())) throw Cancelled{};
    const int f = s.references[i];
    Image img(src, f);
    if (!img.valid())
      throw std::invalid_argument(std::string("the ") + input + " input gave no image at frame " +
                                  std::to_string(f));
    int sanitized = 0;
    bool nonzero = false;
    EncodedFrame ef = encode_colour(img, window, f, &sanitized, &nonzero);
    if (!nonzero)
      throw std::invalid_argument(
          std::string("the ") + input + " input is all black at reference frame " +
          std::to_string(f) +
          " (hosts such as Resolve hand black frames for unconnected inputs): connect the edited "
          "frame");
    out.push_back(std::move(ef));
  }
  return out;
}

void press_train(Instance& inst) {
  OfxImageEffectHandle e = inst.effect;
  Session& session = inst.get_session();
  Settings s;
  try {
    s = read_settings(e, inst);
  } catch (const std::invalid_argument& ex) {
    session.note(std::string("error: ") + ex.what());
    post_error(e, std::string("lorafx: ") + ex.what());
    return;
  }
  OfxImageClipHandle src = clip(e, kClipSource);
  OfxImageClipHandle matte = s.use_matte ? clip(e, kClipMatte) : nullptr;
  const OfxRectI window = display_window(e, src, s.ref.first);
  if (window.x2 <= window.x1 || window.y2 <= window.y1) {
    session.note("error: the Source input has no image size");
    post_error(e, "lorafx: the Source input has no image size (is it connected?)");
    return;
  }

  Connection c(s.ref.endpoint, Timeouts{3000, 30000});
  try {
    hello(c, session.host_name(), 5000);
  } catch (const std::exception& ex) {
    session.note("error: " + describe_error(ex));
    post_error(e, "lorafx: cannot reach the server: " + describe_error(ex));
    return;
  }

  const int nframes = s.ref.last - s.ref.first + 1;
  Progress progress(e, "lorafx: uploading the shot");
  int sanitized = 0;
  try {
    Value::Map create{{"name", s.ref.shot}, {"first", s.ref.first}, {"last", s.ref.last},
                      {"replace", true}, {"settings", Value::Map{}}};
    if (!s.colorspace.empty()) create["colorspace"] = s.colorspace;
    c.call("shot.create", Value(std::move(create)), {}, 30000);

    // Plate (and matte) frame by frame, uploaded in batches while reading.
    const double plate_share = s.use_matte ? 0.45 : 0.9;
    Uploader plate(c, s.ref.shot, "plate");
    for (int i = 0; i < nframes; ++i) {
      if (!progress.update(plate_share * i / nframes)) throw Cancelled{};
      const int f = s.ref.first + i;
      Image img(src, f);
      if (!img.valid())
        throw std::invalid_argument("the Source input gave no image at frame " + std::to_string(f) +
                                    " (is the frame range inside the clip?)");
      bool nonzero = false;
      plate.add(encode_colour(img, window, f, &sanitized, &nonzero));
    }
    plate.flush();
    if (s.use_matte) {
      Uploader mattes(c, s.ref.shot, "matte");
      bool any = false;
      for (int i = 0; i < nframes; ++i) {
        if (!progress.update(0.45 + 0.45 * i / nframes)) throw Cancelled{};
        const int f = s.ref.first + i;
        Image img(matte, f);
        if (!img.valid())
          throw std::invalid_argument("Use Matte is on but the Matte input gave no image at frame " +
                                      std::to_string(f) + ": connect a matte or turn Use Matte off");
        bool nonzero = false;
        mattes.add(encode_matte(img, window, f, &sanitized, &nonzero));
        any = any || nonzero;
      }
      if (!any)
        throw std::invalid_argument(
            "the Matte input is empty on every frame (hosts such as Resolve hand black frames for "
            "unconnected inputs): connect the matte or turn Use Matte off");
      mattes.flush();
    }
    std::vector<EncodedFrame> refs = gather_references(inst, s, window, &progress, 0.9, 0.98);
    put_frames(c, s.ref.shot, "reference", refs);

    Value::Map train_settings{{"steps", s.train_steps},
                              {"rank", s.preset.rank},
                              {"seed", static_cast<unsigned long long>(s.seed)}};
    if (!s.prompt.empty()) train_settings["caption"] = s.prompt;
    Reply r = c.call("job.train",
                     Value(Value::Map{{"shot", s.ref.shot}, {"settings", std::move(train_settings)}}),
                     {}, 30000);
    progress.update(1.0);
    const std::string job = r.body.at("job").as_str("job");
    session.track_train(s.ref, job);
    if (sanitized > 0)
      session.note("training: submitted (job " + job + "); " + std::to_string(sanitized) +
                   " NaN/inf or >65504 values were clamped for upload");
  } catch (const Cancelled&) {
    session.note("upload cancelled: nothing was submitted");
  } catch (const std::invalid_argument& ex) {
    session.note(std::string("error: ") + ex.what());
    post_error(e, std::string("lorafx: ") + ex.what());
  } catch (const std::exception& ex) {
    session.note("error: training not submitted: " + describe_error(ex));
    post_error(e, "lorafx: training not submitted: " + describe_error(ex));
  }
}

void press_render(Instance& inst) {
  OfxImageEffectHandle e = inst.effect;
  Session& session = inst.get_session();
  try {
    Settings s = read_settings(e, inst);
    OfxImageClipHandle src = clip(e, kClipSource);
    const OfxRectI window = display_window(e, src, s.ref.first);
    if (window.x2 <= window.x1 || window.y2 <= window.y1)
      throw std::invalid_argument("the Source input has no image size (is it connected?)");
    RenderRequest req;
    req.ref = s.ref;
    req.seed = s.seed;
    req.steps = s.render_steps;
    req.caption = s.prompt;
    req.edited = gather_references(inst, s, window, nullptr, 0, 0);
    session.request_render(std::move(req));
  } catch (const std::invalid_argument& ex) {
    session.note(std::string("error: ") + ex.what());
    post_error(e, std::string("lorafx: ") + ex.what());
  }
}

void press_set_range(Instance& inst) {
  OfxPropertySetHandle cp = clip_props(clip(inst.effect, kClipSource));
  const double a = prop_double(cp, kOfxImageEffectPropFrameRange, 0, NAN);
  const double b = prop_double(cp, kOfxImageEffectPropFrameRange, 1, NAN);
  if (!std::isfinite(a) || !std::isfinite(b) || b < a) {
    post_error(inst.effect, "lorafx: the host reports no frame range for the Source input");
    return;
  }
  set_int(inst.effect, kParamFirst, static_cast<int>(std::lround(a)));
  set_int(inst.effect, kParamLast, static_cast<int>(std::lround(b)));
}

// --- actions ----------------------------------------------------------------------------------

OfxStatus on_load() {
  if (!g.host || !g.host->fetchSuite) return kOfxStatErrMissingHostFeature;
  auto fetch = [](const char* name, int version) {
    return g.host->fetchSuite(g.host->host, name, version);
  };
  g.prop = static_cast<const OfxPropertySuiteV1*>(fetch(kOfxPropertySuite, 1));
  g.effect = static_cast<const OfxImageEffectSuiteV1*>(fetch(kOfxImageEffectSuite, 1));
  g.param = static_cast<const OfxParameterSuiteV1*>(fetch(kOfxParameterSuite, 1));
  if (!g.prop || !g.effect || !g.param) return kOfxStatErrMissingHostFeature;
  g.memory = static_cast<const OfxMemorySuiteV1*>(fetch(kOfxMemorySuite, 1));
  g.thread = static_cast<const OfxMultiThreadSuiteV1*>(fetch(kOfxMultiThreadSuite, 1));
  g.message2 = static_cast<const OfxMessageSuiteV2*>(fetch(kOfxMessageSuite, 2));
  g.message = g.message2 ? reinterpret_cast<const OfxMessageSuiteV1*>(g.message2)
                         : static_cast<const OfxMessageSuiteV1*>(fetch(kOfxMessageSuite, 1));
  g.progress = static_cast<const OfxProgressSuiteV1*>(fetch(kOfxProgressSuite, 1));
  g.host_name = prop_str(g.host->host, kOfxPropName);
  g.host_label = prop_str(g.host->host, kOfxPropLabel);
  return kOfxStatOK;
}

OfxStatus on_describe(OfxImageEffectHandle desc) {
  OfxPropertySetHandle p = effect_props(desc);
  if (!p) return kOfxStatErrBadHandle;
  g.prop->propSetString(p, kOfxPropLabel, 0, "LoRA Edit");
  g.prop->propSetString(p, kOfxPropShortLabel, 0, "LoRA Edit");
  g.prop->propSetString(p, kOfxPropLongLabel, 0, "lorafx LoRA Edit");
  g.prop->propSetString(p, kOfxImageEffectPluginPropGrouping, 0, "lorafx");
  g.prop->propSetString(p, kOfxPropPluginDescription, 0,
                        "Carries a one-frame edit through the whole shot with a mask-aware LoRA on "
                        "an image-to-video model, trained and rendered by a lorafx server.");
  g.prop->propSetString(p, kOfxImageEffectPropSupportedContexts, 0, kOfxImageEffectContextFilter);
  g.prop->propSetString(p, kOfxImageEffectPropSupportedContexts, 1, kOfxImageEffectContextGeneral);
  g.prop->propSetString(p, kOfxImageEffectPropSupportedPixelDepths, 0, kOfxBitDepthFloat);
  g.prop->propSetInt(p, kOfxImageEffectPluginPropSingleInstance, 0, 0);
  g.prop->propSetString(p, kOfxImageEffectPluginRenderThreadSafety, 0, kOfxImageEffectRenderFullySafe);
  g.prop->propSetInt(p, kOfxImageEffectPluginPropHostFrameThreading, 0, 0);
  g.prop->propSetInt(p, kOfxImageEffectPropSupportsMultiResolution, 0, 1);
  g.prop->propSetInt(p, kOfxImageEffectPropSupportsTiles, 0, 1);
  g.prop->propSetInt(p, kOfxImageEffectPropTemporalClipAccess, 0, 1);
  g.prop->propSetInt(p, kOfxImageEffectPropSupportsMultipleClipDepths, 0, 0);
  g.prop->propSetInt(p, kOfxImageEffectPropSupportsMultipleClipPARs, 0, 0);
  g.prop->propSetInt(p, kOfxImageEffectPluginPropFieldRenderTwiceAlways, 0, 0);
  return kOfxStatOK;
}

OfxPropertySetHandle define_param(OfxParamSetHandle ps, const char* type, const char* name,
                                  const char* label, const char* hint) {
  OfxPropertySetHandle p = nullptr;
  if (g.param->paramDefine(ps, type, name, &p) != kOfxStatOK || !p) return nullptr;
  g.prop->propSetString(p, kOfxPropLabel, 0, label);
  g.prop->propSetString(p, kOfxParamPropScriptName, 0, name);
  g.prop->propSetString(p, kOfxParamPropHint, 0, hint);
  return p;
}

// Integer params get both a range and a display range: Resolve needs both.
// evaluate = false for settings that only matter when Train/Render is pressed: changing them
// must not re-render the node.
void define_int(OfxParamSetHandle ps, const char* name, const char* label, const char* hint,
                int dflt, int min, int max, int dmin, int dmax, bool evaluate = true) {
  OfxPropertySetHandle p = define_param(ps, kOfxParamTypeInteger, name, label, hint);
  if (!p) return;
  g.prop->propSetInt(p, kOfxParamPropDefault, 0, dflt);
  g.prop->propSetInt(p, kOfxParamPropMin, 0, min);
  g.prop->propSetInt(p, kOfxParamPropMax, 0, max);
  g.prop->propSetInt(p, kOfxParamPropDisplayMin, 0, dmin);
  g.prop->propSetInt(p, kOfxParamPropDisplayMax, 0, dmax);
  g.prop->propSetInt(p, kOfxParamPropAnimates, 0, 0);
  g.prop->propSetInt(p, kOfxParamPropEvaluateOnChange, 0, evaluate ? 1 : 0);
}

OfxPropertySetHandle define_string(OfxParamSetHandle ps, const char* name, const char* label,
                                   const char* hint, const char* dflt, const char* mode,
                                   bool evaluate = false) {
  OfxPropertySetHandle p = define_param(ps, kOfxParamTypeString, name, label, hint);
  if (!p) return nullptr;
  g.prop->propSetString(p, kOfxParamPropDefault, 0, dflt);
  g.prop->propSetString(p, kOfxParamPropStringMode, 0, mode);
  g.prop->propSetInt(p, kOfxParamPropAnimates, 0, 0);
  g.prop->propSetInt(p, kOfxParamPropEvaluateOnChange, 0, evaluate ? 1 : 0);
  return p;
}

void define_button(OfxParamSetHandle ps, const char* name, const char* label, const char* hint) {
  // Pressing a button changes no pixel by itself (new results re-render via resultVersion).
  if (OfxPropertySetHandle p = define_param(ps, kOfxParamTypePushButton, name, label, hint))
    g.prop->propSetInt(p, kOfxParamPropEvaluateOnChange, 0, 0);
}


OfxStatus on_describe_in_context(OfxImageEffectHandle desc, OfxPropertySetHandle in_args) {
  const std::string context = prop_str(in_args, kOfxImageEffectPropContext);
  const bool general = context == kOfxImageEffectContextGeneral;
  if (!general && context != kOfxImageEffectContextFilter) return kOfxStatErrUnsupported;

  // Clips.
  OfxPropertySetHandle cp = nullptr;
  g.effect->clipDefine(desc, kClipSource, &cp);
  g.prop->propSetString(cp, kOfxImageEffectPropSupportedComponents, 0, kOfxImageComponentRGBA);
  g.prop->propSetString(cp, kOfxImageEffectPropSupportedComponents, 1, kOfxImageComponentRGB);
  g.prop->propSetInt(cp, kOfxImageEffectPropTemporalClipAccess, 0, 1);
  g.prop->propSetInt(cp, kOfxImageEffectPropSupportsTiles, 0, 1);
  if (general) {
    g.effect->clipDefine(desc, kClipMatte, &cp);
    g.prop->propSetString(cp, kOfxImageEffectPropSupportedComponents, 0, kOfxImageComponentAlpha);
    g.prop->propSetString(cp, kOfxImageEffectPropSupportedComponents, 1, kOfxImageComponentRGBA);
    g.prop->propSetString(cp, kOfxImageEffectPropSupportedComponents, 2, kOfxImageComponentRGB);
    g.prop->propSetInt(cp, kOfxImageClipPropOptional, 0, 1);
    g.prop->propSetInt(cp, kOfxImageClipPropIsMask, 0, 1);
    g.prop->propSetInt(cp, kOfxImageEffectPropTemporalClipAccess, 0, 1);
    g.prop->propSetInt(cp, kOfxImageEffectPropSupportsTiles, 0, 1);
    g.prop->propSetString(cp, kOfxPropLabel, 0, "Matte");

    g.effect->clipDefine(desc, kClipReference, &cp);
    g.prop->propSetString(cp, kOfxImageEffectPropSupportedComponents, 0, kOfxImageComponentRGBA);
    g.prop->propSetString(cp, kOfxImageEffectPropSupportedComponents, 1, kOfxImageComponentRGB);
    g.prop->propSetInt(cp, kOfxImageClipPropOptional, 0, 1);
    g.prop->propSetInt(cp, kOfxImageEffectPropTemporalClipAccess, 0, 1);
    g.prop->propSetInt(cp, kOfxImageEffectPropSupportsTiles, 0, 1);
    g.prop->propSetString(cp, kOfxPropLabel, 0, "Reference");
  }
  g.effect->clipDefine(desc, kClipOutput, &cp);
  g.prop->propSetString(cp, kOfxImageEffectPropSupportedComponents, 0, kOfxImageComponentRGBA);
  g.prop->propSetString(cp, kOfxImageEffectPropSupportedComponents, 1, kOfxImageComponentRGB);
  g.prop->propSetInt(cp, kOfxImageEffectPropSupportsTiles, 0, 1);

  // Parameters.
  OfxParamSetHandle ps = nullptr;
  if (g.effect->getParamSet(desc, &ps) != kOfxStatOK) return kOfxStatErrBadHandle;
  define_string(ps, kParamServer, "Server", "ZeroMQ address of the lorafx server, e.g. tcp://127.0.0.1:5555",
                kDefaultServer, kOfxParamStringIsSingleLine, /*evaluate=*/true);
  define_string(ps, kParamShot, "Shot Name",
                "Name of the shot on the server (letters, digits, _ . -). Train replaces a shot of "
                "the same name.",
                "", kOfxParamStringIsSingleLine, /*evaluate=*/true);
  define_int(ps, kParamFirst, "First Frame", "First frame of the edit's range (inclusive)", 1001,
             -1000000, 10000000, 0, 2000);
  define_int(ps, kParamLast, "Last Frame", "Last frame of the edit's range (inclusive)", 1100,
             -1000000, 10000000, 0, 2000);
  define_button(ps, kParamSetRange, "Use Input Range", "Set First/Last Frame from the Source input's frame range");
  define_string(ps, kParamReferences, "Reference Frames",
                general ? "Frames of the Reference input that carry the edit, e.g. 1001,1025 "
                          "(empty: First Frame). Without a Reference input they are read from Source."
                        : "Frames of Source that carry the edit (painted upstream), e.g. 1001,1025 "
                          "(empty: First Frame)",
                "", kOfxParamStringIsSingleLine);
  define_string(ps, kParamPrompt, "Prompt",
                "Caption of the edited shot (empty: the server captions it)", "",
                kOfxParamStringIsMultiLine);
  define_int(ps, kParamSteps, "Training Steps", "LoRA training steps", 100, 1, 100000, 10, 1000, false);
  define_int(ps, kParamSeed, "Seed", "Seed for training and rendering", 0, 0, 2147483647, 0, 1000, false);
  if (OfxPropertySetHandle p = define_param(ps, kOfxParamTypeChoice, kParamQuality, "Quality",
                                            "Draft: 12 render steps, LoRA rank 8. Standard: 30 "
                                            "steps, rank 16. Final: 50 steps, rank 32.")) {
    for (int i = 0; i < static_cast<int>(sizeof kPresets / sizeof kPresets[0]); ++i)
      g.prop->propSetString(p, kOfxParamPropChoiceOption, i, kPresets[i].label);
    g.prop->propSetInt(p, kOfxParamPropDefault, 0, kDefaultPreset);
    g.prop->propSetInt(p, kOfxParamPropAnimates, 0, 0);
    g.prop->propSetInt(p, kOfxParamPropEvaluateOnChange, 0, 0);
  }
  define_int(ps, kParamRenderSteps, "Render Steps",
             "Sampling steps of the render (0: from Quality)", 0, 0, 1000, 0, 100, false);
  if (general) {
    if (OfxPropertySetHandle p = define_param(
            ps, kOfxParamTypeBoolean, kParamUseMatte, "Use Matte",
            "Upload the Matte input (1 = region to change). Turn off when no matte is connected: "
            "some hosts (Resolve) report every input as connected and hand back black frames.")) {
      g.prop->propSetInt(p, kOfxParamPropDefault, 0, 1);
      g.prop->propSetInt(p, kOfxParamPropAnimates, 0, 0);
      g.prop->propSetInt(p, kOfxParamPropEvaluateOnChange, 0, 0);
    }
  }
  define_string(ps, kParamColorspace, "Colorspace",
                "OCIO colour space of the plate (empty: the server's default, scene-linear Rec.709)",
                "", kOfxParamStringIsSingleLine);
  define_button(ps, kParamTrain, "Train", "Upload the frame range and train the shot's LoRA");
  define_button(ps, kParamRender, "Render", "Render the shot with the trained LoRA and the edited frames");
  define_button(ps, kParamCancel, "Cancel", "Cancel the running training / render");
  define_button(ps, kParamRefresh, "Refresh", "Ask the server for the latest state and results");
  // Read-only status line: a label string, not saved with the project, never re-renders.
  if (OfxPropertySetHandle p = define_string(ps, kParamStatus, "Status", "What the server is doing",
                                             "idle", kOfxParamStringIsLabel))
    g.prop->propSetInt(p, kOfxParamPropPersistant, 0, 0);
  if (OfxPropertySetHandle p = define_param(ps, kOfxParamTypeInteger, kParamResultVersion,
                                            "Result Version", "internal: bumps when new results arrive")) {
    g.prop->propSetInt(p, kOfxParamPropDefault, 0, 0);
    g.prop->propSetInt(p, kOfxParamPropSecret, 0, 1);
    g.prop->propSetInt(p, kOfxParamPropAnimates, 0, 0);
    g.prop->propSetInt(p, kOfxParamPropPersistant, 0, 0);
    g.prop->propSetInt(p, kOfxParamPropMin, 0, 0);
    g.prop->propSetInt(p, kOfxParamPropMax, 0, 0x3fffffff);
    g.prop->propSetInt(p, kOfxParamPropDisplayMin, 0, 0);
    g.prop->propSetInt(p, kOfxParamPropDisplayMax, 0, 100);
  }
  return kOfxStatOK;
}

OfxStatus on_create_instance(OfxImageEffectHandle effect) {
  auto inst = std::make_unique<Instance>();
  inst->effect = effect;
  OfxPropertySetHandle p = effect_props(effect);
  inst->context = prop_str(p, kOfxImageEffectPropContext, 0, kOfxImageEffectContextFilter);
  if (g.prop->propSetPointer(p, kOfxPropInstanceData, 0, inst.get()) != kOfxStatOK)
    return kOfxStatFailed;
  inst.release();
  return kOfxStatOK;
}

OfxStatus on_destroy_instance(OfxImageEffectHandle effect) {
  Instance* inst = instance_of(effect);
  if (inst) {
    g.prop->propSetPointer(effect_props(effect), kOfxPropInstanceData, 0, nullptr);
    delete inst;  // stops and joins the worker (its socket calls are interruptible)
  }
  return kOfxStatOK;
}

OfxStatus on_instance_changed(OfxImageEffectHandle effect, OfxPropertySetHandle in_args) {
  Instance* inst = instance_of(effect);
  if (!inst) return kOfxStatErrBadHandle;
  const std::string type = prop_str(in_args, kOfxPropType);
  const std::string name = prop_str(in_args, kOfxPropName);
  const std::string reason = prop_str(in_args, kOfxPropChangeReason);
  // Our own parameter writes (status line, result version) come back here: ignore them, they
  // must not trigger anything (Nuke calls this re-entrantly from inside paramSetValue).
  if (reason == kOfxChangePluginEdited) return kOfxStatOK;
  if (type == kOfxTypeParameter && reason == kOfxChangeUserEdited) {
    if (name == kParamTrain) {
      press_train(*inst);
    } else if (name == kParamRender) {
      press_render(*inst);
    } else if (name == kParamCancel) {
      inst->get_session().cancel();
    } else if (name == kParamRefresh) {
      Session& s = inst->get_session();
      ShotRef ref = read_ref(effect);
      if (ref.shot.empty())
        s.note("error: set a Shot Name first");
      else
        s.refresh(ref);
    } else if (name == kParamSetRange) {
      press_set_range(*inst);
    }
  }
  sync_status(*inst);
  return kOfxStatOK;
}

// Outside the edit's frame range the effect is a pass-through.
OfxStatus on_is_identity(OfxImageEffectHandle effect, OfxPropertySetHandle in_args,
                         OfxPropertySetHandle out_args) {
  const double t = prop_double(in_args, kOfxPropTime, 0, 0.0);
  const int first = get_int(effect, kParamFirst, 1001), last = get_int(effect, kParamLast, 1001);
  const long frame = std::lround(t);
  if (frame < first || frame > last) {
    g.prop->propSetString(out_args, kOfxPropName, 0, kClipSource);
    g.prop->propSetDouble(out_args, kOfxPropTime, 0, t);
    return kOfxStatOK;
  }
  return kOfxStatReplyDefault;
}

// The output covers exactly the Source's region of definition (a Matte or Reference input
// must not grow it, which the General context's default would do).
OfxStatus on_region_of_definition(OfxImageEffectHandle effect, OfxPropertySetHandle in_args,
                                  OfxPropertySetHandle out_args) {
  const double t = prop_double(in_args, kOfxPropTime, 0, 0.0);
  OfxRectD rod{0, 0, 0, 0};
  if (g.effect->clipGetRegionOfDefinition(clip(effect, kClipSource), t, &rod) != kOfxStatOK)
    return kOfxStatReplyDefault;
  const double v[4] = {rod.x1, rod.y1, rod.x2, rod.y2};
  g.prop->propSetDoubleN(out_args, kOfxImageEffectPropRegionOfDefinition, 4, v);
  return kOfxStatOK;
}

bool strict_batch() {
  const char* v = std::getenv("LORAFX_OFX_STRICT_BATCH");
  return v && *v && std::strcmp(v, "0") != 0;
}

// Copies the Source into the output's render window (component/depth conversion included).
void copy_source(const Image* src, const Image& out, const OfxRectI& win) {
  const int n = out.ncomp();
  for (int y = win.y1; y < win.y2; ++y) {
    for (int x = win.x1; x < win.x2; ++x) {
      const bool in = src && src->contains(x, y);
      if (n == 1) {
        out.write(x, y, 0, in ? src->alpha(x, y) : 0.0f);
        continue;
      }
      out.write(x, y, 0, in ? src->red(x, y) : 0.0f);
      out.write(x, y, 1, in ? src->green(x, y) : 0.0f);
      out.write(x, y, 2, in ? src->blue(x, y) : 0.0f);
      if (n == 4) out.write(x, y, 3, in ? src->alpha(x, y) : 0.0f);
    }
  }
}

OfxStatus on_render(OfxImageEffectHandle effect, OfxPropertySetHandle in_args) {
  Instance* inst = instance_of(effect);
  if (!inst) return kOfxStatErrBadHandle;
  const double t = prop_double(in_args, kOfxPropTime, 0, 0.0);
  OfxRectI win{prop_int(in_args, kOfxImageEffectPropRenderWindow, 0, 0),
               prop_int(in_args, kOfxImageEffectPropRenderWindow, 1, 0),
               prop_int(in_args, kOfxImageEffectPropRenderWindow, 2, 0),
               prop_int(in_args, kOfxImageEffectPropRenderWindow, 3, 0)};
  double sx = prop_double(in_args, kOfxImageEffectPropRenderScale, 0, 1.0);
  double sy = prop_double(in_args, kOfxImageEffectPropRenderScale, 1, 1.0);
  if (!(sx > 0.0)) sx = 1.0;
  if (!(sy > 0.0)) sy = 1.0;
  const bool interactive = prop_int(in_args, kOfxImageEffectPropInteractiveRenderStatus, 0, 0) != 0;

  OfxImageClipHandle src_clip = clip(effect, kClipSource);
  Image out(clip(effect, kClipOutput), t);
  if (!out.valid()) return kOfxStatFailed;
  // The output image covers the render window; never write outside either.
  win.x1 = std::max(win.x1, out.bounds().x1);
  win.y1 = std::max(win.y1, out.bounds().y1);
  win.x2 = std::min(win.x2, out.bounds().x2);
  win.y2 = std::min(win.y2, out.bounds().y2);
  if (win.x2 <= win.x1 || win.y2 <= win.y1) return kOfxStatOK;

  std::unique_ptr<Image> src;
  auto source = [&]() -> const Image* {
    if (!src) src = std::make_unique<Image>(src_clip, t);
    return src->valid() ? src.get() : nullptr;
  };

  const ShotRef ref = read_ref(effect);
  const long frame = std::lround(t);
  std::string reason;
  std::shared_ptr<const RemoteFrame> result;
  if (frame < ref.first || frame > ref.last) {
    reason.clear();  // outside the edit: the source, silently
  } else if (ref.shot.empty()) {
    reason = "set a Shot Name, then press Train";
  } else {
    // Batch renders wait for a slow fetch; interactive ones must stay snappy.
    ResultLookup r = inst->get_session().result_for(ref, static_cast<int>(frame),
                                                    interactive ? 10000 : 120000);
    result = r.frame;
    reason = r.reason;
  }

  if (!result) {
    if (frame >= ref.first && frame <= ref.last) {
      // Farm renders can insist on the real thing: a missing result fails the frame instead of
      // quietly writing the unedited plate (LORAFX_OFX_STRICT_BATCH=1 in the render environment).
      if (!interactive && strict_batch()) {
        show_persistent(*inst, "no result for frame " + std::to_string(frame) + ": " + reason);
        return kOfxStatFailed;
      }
      show_persistent(*inst, "showing the source: " + reason);
    }
    copy_source(source(), out, win);
    return kOfxStatOK;
  }

  // The result is the frame's full image (display window), top row first; map every output
  // pixel (at this render scale) into it. Outside the display window the source shows through.
  const OfxRectI dw = display_window(effect, src_clip, t);
  const double dww = dw.x2 - dw.x1, dwh = dw.y2 - dw.y1;
  const RemoteFrame& rf = *result;
  const int ci_r = rf.channel_index("R") >= 0 ? rf.channel_index("R") : 0;
  const int ci_g = rf.channel_index("G") >= 0 ? rf.channel_index("G") : std::min(1, rf.channels - 1);
  const int ci_b = rf.channel_index("B") >= 0 ? rf.channel_index("B") : std::min(2, rf.channels - 1);
  const int ci_a = rf.channel_index("A");
  const int n = out.ncomp();
  for (int y = win.y1; y < win.y2; ++y) {
    const double v = (y + 0.5) / sy;  // full-resolution pixel coordinates
    const long row_up = dwh > 0 ? static_cast<long>(std::floor((v - dw.y1) * rf.height / dwh)) : -1;
    for (int x = win.x1; x < win.x2; ++x) {
      const double u = (x + 0.5) / sx;
      const long col = dww > 0 ? static_cast<long>(std::floor((u - dw.x1) * rf.width / dww)) : -1;
      if (row_up < 0 || row_up >= rf.height || col < 0 || col >= rf.width) {
        const Image* s = source();
        const bool in = s && s->contains(x, y);
        if (n == 1) {
          out.write(x, y, 0, in ? s->alpha(x, y) : 0.0f);
        } else {
          out.write(x, y, 0, in ? s->red(x, y) : 0.0f);
          out.write(x, y, 1, in ? s->green(x, y) : 0.0f);
          out.write(x, y, 2, in ? s->blue(x, y) : 0.0f);
          if (n == 4) out.write(x, y, 3, in ? s->alpha(x, y) : 0.0f);
        }
        continue;
      }
      const size_t base = (static_cast<size_t>(rf.height - 1 - row_up) * rf.width + col) * rf.channels;
      float a;
      if (ci_a >= 0) {
        a = rf.sample(base + ci_a);
      } else {
        const Image* s = source();
        a = (s && s->contains(x, y)) ? s->alpha(x, y) : 1.0f;
      }
      if (n == 1) {
        out.write(x, y, 0, a);
        continue;
      }
      out.write(x, y, 0, rf.sample(base + ci_r));
      out.write(x, y, 1, rf.sample(base + ci_g));
      out.write(x, y, 2, rf.sample(base + ci_b));
      if (n == 4) out.write(x, y, 3, a);
    }
  }
  show_persistent(*inst, "");
  return kOfxStatOK;
}

OfxStatus main_entry(const char* action, const void* handle, OfxPropertySetHandle in_args,
                     OfxPropertySetHandle out_args) {
  if (!action) return kOfxStatErrBadHandle;
  auto effect = static_cast<OfxImageEffectHandle>(const_cast<void*>(handle));
  try {
    if (std::strcmp(action, kOfxActionLoad) == 0) return on_load();
    if (!g.prop || !g.effect || !g.param) return kOfxStatErrMissingHostFeature;  // not loaded
    if (std::strcmp(action, kOfxActionUnload) == 0) {
      shutdown_transport();  // no ZeroMQ thread may outlive the host's dlclose
      return kOfxStatOK;
    }
    if (std::strcmp(action, kOfxActionDescribe) == 0) return on_describe(effect);
    if (std::strcmp(action, kOfxImageEffectActionDescribeInContext) == 0)
      return on_describe_in_context(effect, in_args);
    if (std::strcmp(action, kOfxActionCreateInstance) == 0) return on_create_instance(effect);
    if (std::strcmp(action, kOfxActionDestroyInstance) == 0) return on_destroy_instance(effect);
    if (std::strcmp(action, kOfxActionInstanceChanged) == 0)
      return on_instance_changed(effect, in_args);
    if (std::strcmp(action, kOfxImageEffectActionRender) == 0) return on_render(effect, in_args);
    if (std::strcmp(action, kOfxImageEffectActionIsIdentity) == 0)
      return on_is_identity(effect, in_args, out_args);
    if (std::strcmp(action, kOfxImageEffectActionGetRegionOfDefinition) == 0)
      return on_region_of_definition(effect, in_args, out_args);
    if (std::strcmp(action, kOfxImageEffectActionBeginSequenceRender) == 0 ||
        std::strcmp(action, kOfxImageEffectActionEndSequenceRender) == 0)
      return kOfxStatOK;
    if (std::strcmp(action, kOfxActionPurgeCaches) == 0) {
      if (Instance* inst = instance_of(effect))
        if (Session* s = inst->existing_session()) s->purge_cache();
      return kOfxStatOK;
    }
    if (std::strcmp(action, kOfxActionSyncPrivateData) == 0) {
      if (Instance* inst = instance_of(effect)) sync_status(*inst);
      return kOfxStatOK;
    }
    return kOfxStatReplyDefault;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "lorafx.ofx: %s failed: %s\n", action, ex.what());
    return kOfxStatFailed;
  } catch (...) {
    std::fprintf(stderr, "lorafx.ofx: %s failed with an unknown exception\n", action);
    return kOfxStatFailed;
  }
}

void set_host(OfxHost* host) { g.host = host; }

OfxPlugin g_plugin = {kOfxImageEffectPluginApi, kOfxImageEffectPluginApiVersion, kPluginId,
                      kVersionMajor, kVersionMinor, set_host, main_entry};

}  // namespace

extern "C" {
OfxExport int OfxGetNumberOfPlugins(void) { return 1; }
OfxExport OfxPlugin* OfxGetPlugin(int nth) { return nth == 0 ? &g_plugin : nullptr; }
}
