// ofx_test_host: a small but strict OpenFX image effect host for testing plug-ins.
//
// It loads a plug-in binary exactly as a host does (dlopen, OfxGetNumberOfPlugins,
// OfxGetPlugin, setHost, then actions through mainEntry), provides the property, image effect,
// parameter, memory, multi-thread, message (V1/V2) and progress suites, feeds clips from raw
// float32 files (or black / disconnected, like Resolve), and is driven line by line from stdin
// so a test can act between steps (kill a server, restart it...). Every command answers one
// JSON line on stdout.
//
// Strictness, to catch plug-in bugs a forgiving host would hide:
//  - properties are typed: the host pre-declares the spec's properties with their types, and a
//    get/set of the wrong type fails (kOfxStatErrUnknown) and is recorded as a type error;
//  - handles carry a magic number: a wrong handle is kOfxStatErrBadHandle, recorded;
//  - suite calls from a thread other than the host's (outside multiThread) are recorded;
//  - paramSetValue during a render is recorded; images not released are reported as leaks;
//  - paramSetValue re-enters kOfxActionInstanceChanged synchronously, as Nuke does.
//
// Commands (one per line; '#' starts a comment):
//   load PATH                      dlopen + Load + Describe
//   describe CONTEXT               DescribeInContext on a fresh descriptor -> JSON of it
//   project W H                    project size (the display window), default 64 48
//   layout padded|packed|topdown   memory layout of images handed to the plug-in
//   clip NAME files PATTERN W H C FIRST LAST | clip NAME black | clip NAME disconnected
//   create CONTEXT                 instance: DescribeInContext + CreateInstance
//   set PARAM VALUE...             user edit of a parameter (+ InstanceChanged)
//   press PARAM                    push a button (InstanceChanged, user edited)
//   get PARAM
//   wait TIMEOUT_S PRESS WATCH TEXT[|TEXT...]  press PRESS every 0.25 s until WATCH contains a TEXT
//   abort_after N                  abort() answers 1 after N calls (-1: never)
//   cancel_progress_after N        progressUpdate answers kOfxStatReplyNo after N calls
//   render FIRST LAST OUT_PATTERN|- [tiles N] [interactive]
//   sleep SECONDS
//   destroy | unload | stats | quit
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <climits>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ofx_abi.h"

namespace {

// --- JSON output ------------------------------------------------------------------------------

std::string jstr(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          o += b;
        } else {
          o += static_cast<char>(c);
        }
    }
  }
  return o + "\"";
}

std::string jnum(double d) {
  if (!std::isfinite(d)) return "null";
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", d);
  std::string s = b;
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

// --- diagnostics ------------------------------------------------------------------------------

std::mutex g_diag_mu;
std::vector<std::string> g_violations;  // plug-in misbehaviour seen by the host
std::vector<std::string> g_messages;    // host messages posted since the last command
std::thread::id g_main_thread;
thread_local bool t_spawned = false;    // inside multiThread
std::atomic<int> g_in_render{0};

void violation(const std::string& what) {
  std::lock_guard<std::mutex> lk(g_diag_mu);
  if (g_violations.size() < 200) g_violations.push_back(what);
}

void check_thread(const char* fn) {
  if (std::this_thread::get_id() != g_main_thread && !t_spawned)
    violation(std::string(fn) + " called from a plug-in thread (not a host or multiThread thread)");
}

// --- properties -------------------------------------------------------------------------------

constexpr uint32_t kMagicProps = 0x50524f50, kMagicEffect = 0x45464654, kMagicParam = 0x5041524d,
                   kMagicParamSet = 0x50534554, kMagicClip = 0x434c4950, kMagicMem = 0x4d454d4f;

struct Prop {
  char type = 's';  // 'i' int, 'd' double, 's' string, 'p' pointer
  std::vector<int> i;
  std::vector<double> d;
  std::vector<std::string> s;
  std::vector<void*> p;
  bool declared = false;  // pre-declared by the host (vs created by a plug-in set)
  size_t size() const {
    return type == 'i' ? i.size() : type == 'd' ? d.size() : type == 's' ? s.size() : p.size();
  }
};

struct PropSet {
  uint32_t magic = kMagicProps;
  std::string what;
  std::map<std::string, Prop> props;
  std::vector<std::string> order;  // creation order

  Prop& declare(const std::string& name, char type) {
    auto it = props.find(name);
    if (it == props.end()) order.push_back(name);
    Prop& p = props[name];
    p.type = type;
    p.declared = true;
    p.i.clear();
    p.d.clear();
    p.s.clear();
    p.p.clear();
    return p;
  }
  void seti(const std::string& n, std::vector<int> v) { declare(n, 'i').i = std::move(v); }
  void setd(const std::string& n, std::vector<double> v) { declare(n, 'd').d = std::move(v); }
  void sets(const std::string& n, std::vector<std::string> v) { declare(n, 's').s = std::move(v); }
  void setp(const std::string& n, std::vector<void*> v) { declare(n, 'p').p = std::move(v); }
  int geti(const std::string& n, int idx = 0, int dflt = 0) const {
    auto it = props.find(n);
    if (it == props.end() || it->second.type != 'i' || idx >= (int)it->second.i.size()) return dflt;
    return it->second.i[idx];
  }
  double getd(const std::string& n, int idx = 0, double dflt = 0) const {
    auto it = props.find(n);
    if (it == props.end() || it->second.type != 'd' || idx >= (int)it->second.d.size()) return dflt;
    return it->second.d[idx];
  }
  std::string gets(const std::string& n, int idx = 0, const std::string& dflt = "") const {
    auto it = props.find(n);
    if (it == props.end() || it->second.type != 's' || idx >= (int)it->second.s.size()) return dflt;
    return it->second.s[idx];
  }
  std::string json() const {
    std::string o = "{";
    bool first = true;
    for (const std::string& name : order) {
      const Prop& p = props.at(name);
      o += (first ? "" : ", ") + jstr(name) + ": [";
      first = false;
      for (size_t k = 0; k < p.size(); ++k) {
        if (k) o += ", ";
        if (p.type == 'i') o += std::to_string(p.i[k]);
        else if (p.type == 'd') o += jnum(p.d[k]);
        else if (p.type == 's') o += jstr(p.s[k]);
        else o += p.p[k] ? "\"<ptr>\"" : "null";
      }
      o += "]";
    }
    return o + "}";
  }
};

std::recursive_mutex g_prop_mu;

PropSet* as_props(OfxPropertySetHandle h, const char* fn) {
  auto* ps = reinterpret_cast<PropSet*>(h);
  if (!ps || ps->magic != kMagicProps) {
    violation(std::string(fn) + ": bad property set handle");
    return nullptr;
  }
  return ps;
}

const char* type_name(char t) {
  return t == 'i' ? "int" : t == 'd' ? "double" : t == 's' ? "string" : "pointer";
}

template <typename Fn>
OfxStatus prop_set(OfxPropertySetHandle h, const char* name, int index, char type, const char* fn,
                   Fn assign) {
  check_thread(fn);
  std::lock_guard<std::recursive_mutex> lk(g_prop_mu);
  PropSet* ps = as_props(h, fn);
  if (!ps || !name) return kOfxStatErrBadHandle;
  auto it = ps->props.find(name);
  if (it == ps->props.end()) {
    ps->order.push_back(name);
    Prop& p = ps->props[name];
    p.type = type;
    it = ps->props.find(name);
  } else if (it->second.type != type) {
    violation(std::string(fn) + "(" + name + ") on " + ps->what + ": the property is " +
              type_name(it->second.type) + ", not " + type_name(type));
    return kOfxStatErrUnknown;
  }
  if (index < 0) return kOfxStatErrBadIndex;
  assign(it->second, index);
  return kOfxStatOK;
}

template <typename Fn>
OfxStatus prop_get(OfxPropertySetHandle h, const char* name, int index, char type, const char* fn,
                   Fn fetch) {
  check_thread(fn);
  std::lock_guard<std::recursive_mutex> lk(g_prop_mu);
  PropSet* ps = as_props(h, fn);
  if (!ps || !name) return kOfxStatErrBadHandle;
  auto it = ps->props.find(name);
  if (it == ps->props.end()) return kOfxStatErrUnknown;
  if (it->second.type != type) {
    violation(std::string(fn) + "(" + name + ") on " + ps->what + ": the property is " +
              type_name(it->second.type) + ", not " + type_name(type));
    return kOfxStatErrUnknown;
  }
  if (index < 0 || index >= static_cast<int>(it->second.size())) return kOfxStatErrBadIndex;
  fetch(it->second, index);
  return kOfxStatOK;
}

OfxStatus propSetPointer(OfxPropertySetHandle h, const char* n, int i, void* v) {
  return prop_set(h, n, i, 'p', "propSetPointer", [&](Prop& p, int k) {
    if ((int)p.p.size() <= k) p.p.resize(k + 1, nullptr);
    p.p[k] = v;
  });
}
OfxStatus propSetString(OfxPropertySetHandle h, const char* n, int i, const char* v) {
  return prop_set(h, n, i, 's', "propSetString", [&](Prop& p, int k) {
    if ((int)p.s.size() <= k) p.s.resize(k + 1);
    p.s[k] = v ? v : "";
  });
}
OfxStatus propSetDouble(OfxPropertySetHandle h, const char* n, int i, double v) {
  return prop_set(h, n, i, 'd', "propSetDouble", [&](Prop& p, int k) {
    if ((int)p.d.size() <= k) p.d.resize(k + 1, 0.0);
    p.d[k] = v;
  });
}
OfxStatus propSetInt(OfxPropertySetHandle h, const char* n, int i, int v) {
  return prop_set(h, n, i, 'i', "propSetInt", [&](Prop& p, int k) {
    if ((int)p.i.size() <= k) p.i.resize(k + 1, 0);
    p.i[k] = v;
  });
}
OfxStatus propSetPointerN(OfxPropertySetHandle h, const char* n, int c, void* const* v) {
  return prop_set(h, n, 0, 'p', "propSetPointerN", [&](Prop& p, int) { p.p.assign(v, v + c); });
}
OfxStatus propSetStringN(OfxPropertySetHandle h, const char* n, int c, const char* const* v) {
  return prop_set(h, n, 0, 's', "propSetStringN", [&](Prop& p, int) {
    p.s.clear();
    for (int k = 0; k < c; ++k) p.s.push_back(v[k] ? v[k] : "");
  });
}
OfxStatus propSetDoubleN(OfxPropertySetHandle h, const char* n, int c, const double* v) {
  return prop_set(h, n, 0, 'd', "propSetDoubleN", [&](Prop& p, int) { p.d.assign(v, v + c); });
}
OfxStatus propSetIntN(OfxPropertySetHandle h, const char* n, int c, const int* v) {
  return prop_set(h, n, 0, 'i', "propSetIntN", [&](Prop& p, int) { p.i.assign(v, v + c); });
}
OfxStatus propGetPointer(OfxPropertySetHandle h, const char* n, int i, void** v) {
  return prop_get(h, n, i, 'p', "propGetPointer", [&](Prop& p, int k) { *v = p.p[k]; });
}
OfxStatus propGetString(OfxPropertySetHandle h, const char* n, int i, char** v) {
  return prop_get(h, n, i, 's', "propGetString",
                  [&](Prop& p, int k) { *v = const_cast<char*>(p.s[k].c_str()); });
}
OfxStatus propGetDouble(OfxPropertySetHandle h, const char* n, int i, double* v) {
  return prop_get(h, n, i, 'd', "propGetDouble", [&](Prop& p, int k) { *v = p.d[k]; });
}
OfxStatus propGetInt(OfxPropertySetHandle h, const char* n, int i, int* v) {
  return prop_get(h, n, i, 'i', "propGetInt", [&](Prop& p, int k) { *v = p.i[k]; });
}
OfxStatus propGetPointerN(OfxPropertySetHandle h, const char* n, int c, void** v) {
  return prop_get(h, n, c - 1, 'p', "propGetPointerN", [&](Prop& p, int) {
    for (int k = 0; k < c; ++k) v[k] = p.p[k];
  });
}
OfxStatus propGetStringN(OfxPropertySetHandle h, const char* n, int c, char** v) {
  return prop_get(h, n, c - 1, 's', "propGetStringN", [&](Prop& p, int) {
    for (int k = 0; k < c; ++k) v[k] = const_cast<char*>(p.s[k].c_str());
  });
}
OfxStatus propGetDoubleN(OfxPropertySetHandle h, const char* n, int c, double* v) {
  return prop_get(h, n, c - 1, 'd', "propGetDoubleN", [&](Prop& p, int) {
    for (int k = 0; k < c; ++k) v[k] = p.d[k];
  });
}
OfxStatus propGetIntN(OfxPropertySetHandle h, const char* n, int c, int* v) {
  return prop_get(h, n, c - 1, 'i', "propGetIntN", [&](Prop& p, int) {
    for (int k = 0; k < c; ++k) v[k] = p.i[k];
  });
}
OfxStatus propReset(OfxPropertySetHandle h, const char* n) {
  check_thread("propReset");
  std::lock_guard<std::recursive_mutex> lk(g_prop_mu);
  PropSet* ps = as_props(h, "propReset");
  if (!ps) return kOfxStatErrBadHandle;
  return ps->props.count(n) ? kOfxStatOK : kOfxStatErrUnknown;
}
OfxStatus propGetDimension(OfxPropertySetHandle h, const char* n, int* count) {
  check_thread("propGetDimension");
  std::lock_guard<std::recursive_mutex> lk(g_prop_mu);
  PropSet* ps = as_props(h, "propGetDimension");
  if (!ps) return kOfxStatErrBadHandle;
  auto it = ps->props.find(n);
  if (it == ps->props.end()) return kOfxStatErrUnknown;
  *count = static_cast<int>(it->second.size());
  return kOfxStatOK;
}

const OfxPropertySuiteV1 kPropertySuite = {
    propSetPointer,  propSetString,  propSetDouble,  propSetInt,     propSetPointerN,
    propSetStringN,  propSetDoubleN, propSetIntN,    propGetPointer, propGetString,
    propGetDouble,   propGetInt,     propGetPointerN, propGetStringN, propGetDoubleN,
    propGetIntN,     propReset,      propGetDimension};

// --- host objects -----------------------------------------------------------------------------

struct Effect;

struct Param {
  uint32_t magic = kMagicParam;
  std::string type, name;
  PropSet props;
  int ival[3] = {0, 0, 0};
  double dval[4] = {0, 0, 0, 0};
  std::string sval;
  Effect* owner = nullptr;  // instance owning it (null for descriptors)
};

struct ParamSet {
  uint32_t magic = kMagicParamSet;
  PropSet props;
  std::vector<std::unique_ptr<Param>> params;
  Param* find(const std::string& n) {
    for (auto& p : params)
      if (p->name == n) return p.get();
    return nullptr;
  }
};

struct ClipConfig {
  enum Mode { Disconnected, Files, Black } mode = Disconnected;
  std::string pattern;
  int w = 0, h = 0, c = 4, first = 0, last = -1;
};

struct Clip {
  uint32_t magic = kMagicClip;
  std::string name;
  PropSet props;
  Effect* owner = nullptr;
  ClipConfig config;
  std::map<int, std::shared_ptr<std::vector<float>>> frames;  // loaded file frames (top-down)
};

struct Effect {
  uint32_t magic = kMagicEffect;
  PropSet props;
  ParamSet params;
  std::vector<std::unique_ptr<Clip>> clips;
  bool instance = false;
  std::string context;
  Clip* clip(const std::string& n) {
    for (auto& c : clips)
      if (c->name == n) return c.get();
    return nullptr;
  }
};

struct HostImage {
  PropSet props;  // must be first: the image handle is the property set
  std::shared_ptr<std::vector<unsigned char>> buffer;
};

// Host state.
OfxHost g_host;
PropSet g_host_props;
OfxPlugin* g_plugin = nullptr;
void* g_dl = nullptr;
std::string g_bundle_binary;
std::unique_ptr<Effect> g_desc;                          // from Describe
std::map<std::string, std::unique_ptr<Effect>> g_ctx;    // from DescribeInContext
std::unique_ptr<Effect> g_inst;
int g_proj_w = 64, g_proj_h = 48;
std::string g_layout = "padded";
std::map<std::string, ClipConfig> g_clip_configs;
std::map<PropSet*, std::unique_ptr<HostImage>> g_images;  // live images
std::mutex g_images_mu;
int g_abort_after = -1, g_abort_calls = 0;
int g_cancel_progress_after = -1, g_progress_calls = 0;
int g_reentrant_changes = 0, g_action_depth = 0;
std::string g_persistent;  // the instance's persistent message
std::shared_ptr<std::vector<unsigned char>> g_output;  // output buffer of the current render
OfxRectI g_output_bounds{0, 0, 0, 0};
int g_output_comps = 4;

OfxStatus call_action(const char* action, const void* handle, PropSet* in, PropSet* out) {
  ++g_action_depth;
  OfxStatus st = g_plugin->mainEntry(action, handle, reinterpret_cast<OfxPropertySetHandle>(in),
                                     reinterpret_cast<OfxPropertySetHandle>(out));
  --g_action_depth;
  return st;
}

// --- parameter suite --------------------------------------------------------------------------

ParamSet* as_paramset(OfxParamSetHandle h, const char* fn) {
  auto* ps = reinterpret_cast<ParamSet*>(h);
  if (!ps || ps->magic != kMagicParamSet) {
    violation(std::string(fn) + ": bad parameter set handle");
    return nullptr;
  }
  return ps;
}

Param* as_param(OfxParamHandle h, const char* fn) {
  auto* p = reinterpret_cast<Param*>(h);
  if (!p || p->magic != kMagicParam) {
    violation(std::string(fn) + ": bad parameter handle");
    return nullptr;
  }
  return p;
}

bool valid_param_type(const std::string& t) {
  static const std::set<std::string> types = {
      kOfxParamTypeInteger, kOfxParamTypeDouble,    kOfxParamTypeBoolean,  kOfxParamTypeChoice,
      kOfxParamTypeRGBA,    kOfxParamTypeRGB,       kOfxParamTypeDouble2D, kOfxParamTypeInteger2D,
      kOfxParamTypeDouble3D, kOfxParamTypeInteger3D, kOfxParamTypeString,  kOfxParamTypeCustom,
      kOfxParamTypeGroup,   kOfxParamTypePage,      kOfxParamTypePushButton};
  return types.count(t) != 0;
}

int value_dims(const std::string& t) {
  if (t == kOfxParamTypeInteger2D || t == kOfxParamTypeDouble2D) return 2;
  if (t == kOfxParamTypeInteger3D || t == kOfxParamTypeDouble3D || t == kOfxParamTypeRGB) return 3;
  if (t == kOfxParamTypeRGBA) return 4;
  return 1;
}

bool int_valued(const std::string& t) {
  return t == kOfxParamTypeInteger || t == kOfxParamTypeBoolean || t == kOfxParamTypeChoice ||
         t == kOfxParamTypeInteger2D || t == kOfxParamTypeInteger3D;
}
bool double_valued(const std::string& t) {
  return t == kOfxParamTypeDouble || t == kOfxParamTypeDouble2D || t == kOfxParamTypeDouble3D ||
         t == kOfxParamTypeRGB || t == kOfxParamTypeRGBA;
}
bool string_valued(const std::string& t) {
  return t == kOfxParamTypeString || t == kOfxParamTypeCustom;
}

void declare_param_props(Param& p) {
  PropSet& ps = p.props;
  ps.what = "parameter " + p.name;
  ps.sets(kOfxPropType, {kOfxTypeParameter});
  ps.sets(kOfxPropName, {p.name});
  ps.sets(kOfxPropLabel, {p.name});
  ps.sets(kOfxPropShortLabel, {p.name});
  ps.sets(kOfxPropLongLabel, {p.name});
  ps.sets(kOfxParamPropType, {p.type});
  ps.sets(kOfxParamPropScriptName, {p.name});
  ps.sets(kOfxParamPropHint, {""});
  ps.sets(kOfxParamPropParent, {""});
  ps.seti(kOfxParamPropSecret, {0});
  ps.seti(kOfxParamPropEnabled, {1});
  ps.seti(kOfxParamPropCanUndo, {1});
  ps.setp(kOfxParamPropDataPtr, {nullptr});
  const std::string& t = p.type;
  if (t == kOfxParamTypeGroup) {
    ps.seti(kOfxParamPropGroupOpen, {1});
    return;
  }
  if (t == kOfxParamTypePage) {
    ps.sets(kOfxParamPropPageChild, {});
    return;
  }
  ps.seti(kOfxParamPropEvaluateOnChange, {1});
  ps.seti(kOfxParamPropPersistant, {t == kOfxParamTypePushButton ? 0 : 1});
  if (t == kOfxParamTypePushButton) return;
  ps.seti(kOfxParamPropAnimates, {1});
  ps.seti(kOfxParamPropIsAnimating, {0});
  ps.seti(kOfxParamPropIsAutoKeying, {0});
  const int n = value_dims(t);
  if (int_valued(t)) {
    ps.seti(kOfxParamPropDefault, std::vector<int>(n, 0));
    if (t != kOfxParamTypeBoolean && t != kOfxParamTypeChoice) {
      ps.seti(kOfxParamPropMin, std::vector<int>(n, INT_MIN));
      ps.seti(kOfxParamPropMax, std::vector<int>(n, INT_MAX));
      ps.seti(kOfxParamPropDisplayMin, std::vector<int>(n, INT_MIN));
      ps.seti(kOfxParamPropDisplayMax, std::vector<int>(n, INT_MAX));
    }
    if (t == kOfxParamTypeChoice) ps.sets(kOfxParamPropChoiceOption, {});
  } else if (double_valued(t)) {
    ps.setd(kOfxParamPropDefault, std::vector<double>(n, 0.0));
    ps.setd(kOfxParamPropMin, std::vector<double>(n, -1e300));
    ps.setd(kOfxParamPropMax, std::vector<double>(n, 1e300));
    ps.setd(kOfxParamPropDisplayMin, std::vector<double>(n, -1e300));
    ps.setd(kOfxParamPropDisplayMax, std::vector<double>(n, 1e300));
    ps.setd(kOfxParamPropIncrement, {1.0});
    ps.seti(kOfxParamPropDigits, {2});
  } else if (string_valued(t)) {
    ps.sets(kOfxParamPropDefault, {""});
    ps.sets(kOfxParamPropStringMode, {kOfxParamStringIsSingleLine});
    ps.seti(kOfxParamPropStringFilePathExists, {1});
  }
}

OfxStatus paramDefine(OfxParamSetHandle h, const char* type, const char* name, OfxPropertySetHandle* props) {
  check_thread("paramDefine");
  ParamSet* ps = as_paramset(h, "paramDefine");
  if (!ps || !type || !name) return kOfxStatErrBadHandle;
  if (!valid_param_type(type)) {
    violation(std::string("paramDefine: unknown parameter type ") + type);
    return kOfxStatErrUnknown;
  }
  if (ps->find(name)) return kOfxStatErrExists;
  auto p = std::make_unique<Param>();
  p->type = type;
  p->name = name;
  declare_param_props(*p);
  if (props) *props = reinterpret_cast<OfxPropertySetHandle>(&p->props);
  ps->params.push_back(std::move(p));
  return kOfxStatOK;
}

OfxStatus paramGetHandle(OfxParamSetHandle h, const char* name, OfxParamHandle* param, OfxPropertySetHandle* props) {
  check_thread("paramGetHandle");
  ParamSet* ps = as_paramset(h, "paramGetHandle");
  if (!ps || !name) return kOfxStatErrBadHandle;
  Param* p = ps->find(name);
  if (!p) return kOfxStatErrUnknown;
  if (param) *param = reinterpret_cast<OfxParamHandle>(p);
  if (props) *props = reinterpret_cast<OfxPropertySetHandle>(&p->props);
  return kOfxStatOK;
}

OfxStatus paramSetGetPropertySet(OfxParamSetHandle h, OfxPropertySetHandle* props) {
  ParamSet* ps = as_paramset(h, "paramSetGetPropertySet");
  if (!ps) return kOfxStatErrBadHandle;
  *props = reinterpret_cast<OfxPropertySetHandle>(&ps->props);
  return kOfxStatOK;
}

OfxStatus paramGetPropertySet(OfxParamHandle h, OfxPropertySetHandle* props) {
  Param* p = as_param(h, "paramGetPropertySet");
  if (!p) return kOfxStatErrBadHandle;
  *props = reinterpret_cast<OfxPropertySetHandle>(&p->props);
  return kOfxStatOK;
}

OfxStatus get_value(Param* p, va_list ap) {
  if (!p->owner) {
    violation("paramGetValue on a parameter descriptor");
    return kOfxStatErrBadHandle;
  }
  const int n = value_dims(p->type);
  if (int_valued(p->type)) {
    for (int k = 0; k < n; ++k) *va_arg(ap, int*) = p->ival[k];
  } else if (double_valued(p->type)) {
    for (int k = 0; k < n; ++k) *va_arg(ap, double*) = p->dval[k];
  } else if (string_valued(p->type)) {
    *va_arg(ap, char**) = const_cast<char*>(p->sval.c_str());
  } else {
    return kOfxStatErrUnsupported;
  }
  return kOfxStatOK;
}

OfxStatus paramGetValue(OfxParamHandle h, ...) {
  check_thread("paramGetValue");
  Param* p = as_param(h, "paramGetValue");
  if (!p) return kOfxStatErrBadHandle;
  va_list ap;
  va_start(ap, h);
  OfxStatus st = get_value(p, ap);
  va_end(ap);
  return st;
}

OfxStatus paramGetValueAtTime(OfxParamHandle h, OfxTime t, ...) {
  check_thread("paramGetValueAtTime");
  Param* p = as_param(h, "paramGetValueAtTime");
  if (!p) return kOfxStatErrBadHandle;
  va_list ap;
  va_start(ap, t);
  OfxStatus st = get_value(p, ap);
  va_end(ap);
  return st;
}

OfxStatus paramGetDerivative(OfxParamHandle, OfxTime, ...) { return kOfxStatErrUnsupported; }
OfxStatus paramGetIntegral(OfxParamHandle, OfxTime, OfxTime, ...) { return kOfxStatErrUnsupported; }

void instance_changed(Effect* e, const std::string& name, const char* reason);

OfxStatus set_value(Param* p, va_list ap) {
  if (!p->owner) {
    violation("paramSetValue on a parameter descriptor");
    return kOfxStatErrBadHandle;
  }
  if (g_in_render) violation("paramSetValue(" + p->name + ") during a render action");
  const int n = value_dims(p->type);
  if (int_valued(p->type)) {
    for (int k = 0; k < n; ++k) p->ival[k] = va_arg(ap, int);
  } else if (double_valued(p->type)) {
    for (int k = 0; k < n; ++k) p->dval[k] = va_arg(ap, double);
  } else if (string_valued(p->type)) {
    const char* s = va_arg(ap, const char*);
    p->sval = s ? s : "";
  } else {
    return kOfxStatErrUnsupported;
  }
  return kOfxStatOK;
}

OfxStatus paramSetValue(OfxParamHandle h, ...) {
  check_thread("paramSetValue");
  Param* p = as_param(h, "paramSetValue");
  if (!p) return kOfxStatErrBadHandle;
  va_list ap;
  va_start(ap, h);
  OfxStatus st = set_value(p, ap);
  va_end(ap);
  // Like Nuke: the plug-in hears about its own change at once, re-entrantly.
  if (st == kOfxStatOK && p->owner) {
    if (g_action_depth > 0) ++g_reentrant_changes;
    instance_changed(p->owner, p->name, kOfxChangePluginEdited);
  }
  return st;
}

OfxStatus paramSetValueAtTime(OfxParamHandle h, OfxTime t, ...) {
  check_thread("paramSetValueAtTime");
  Param* p = as_param(h, "paramSetValueAtTime");
  if (!p) return kOfxStatErrBadHandle;
  va_list ap;
  va_start(ap, t);
  OfxStatus st = set_value(p, ap);
  va_end(ap);
  if (st == kOfxStatOK && p->owner) instance_changed(p->owner, p->name, kOfxChangePluginEdited);
  return st;
}

OfxStatus paramGetNumKeys(OfxParamHandle, unsigned int* n) {
  *n = 0;
  return kOfxStatOK;
}
OfxStatus paramGetKeyTime(OfxParamHandle, unsigned int, OfxTime*) { return kOfxStatErrBadIndex; }
OfxStatus paramGetKeyIndex(OfxParamHandle, OfxTime, int, int*) { return kOfxStatFailed; }
OfxStatus paramDeleteKey(OfxParamHandle, OfxTime) { return kOfxStatErrBadIndex; }
OfxStatus paramDeleteAllKeys(OfxParamHandle) { return kOfxStatOK; }
OfxStatus paramCopy(OfxParamHandle, OfxParamHandle, OfxTime, const OfxRangeD*) { return kOfxStatErrUnsupported; }
OfxStatus paramEditBegin(OfxParamSetHandle, const char*) { return kOfxStatOK; }
OfxStatus paramEditEnd(OfxParamSetHandle) { return kOfxStatOK; }

const OfxParameterSuiteV1 kParameterSuite = {
    paramDefine,        paramGetHandle,   paramSetGetPropertySet, paramGetPropertySet,
    paramGetValue,      paramGetValueAtTime, paramGetDerivative,  paramGetIntegral,
    paramSetValue,      paramSetValueAtTime, paramGetNumKeys,     paramGetKeyTime,
    paramGetKeyIndex,   paramDeleteKey,   paramDeleteAllKeys,     paramCopy,
    paramEditBegin,     paramEditEnd};

// --- image effect suite -----------------------------------------------------------------------

Effect* as_effect(OfxImageEffectHandle h, const char* fn) {
  auto* e = reinterpret_cast<Effect*>(h);
  if (!e || e->magic != kMagicEffect) {
    violation(std::string(fn) + ": bad image effect handle");
    return nullptr;
  }
  return e;
}

Clip* as_clip(OfxImageClipHandle h, const char* fn) {
  auto* c = reinterpret_cast<Clip*>(h);
  if (!c || c->magic != kMagicClip) {
    violation(std::string(fn) + ": bad clip handle");
    return nullptr;
  }
  return c;
}

OfxStatus getPropertySet(OfxImageEffectHandle h, OfxPropertySetHandle* props) {
  check_thread("getPropertySet");
  Effect* e = as_effect(h, "getPropertySet");
  if (!e) return kOfxStatErrBadHandle;
  *props = reinterpret_cast<OfxPropertySetHandle>(&e->props);
  return kOfxStatOK;
}

OfxStatus getParamSet(OfxImageEffectHandle h, OfxParamSetHandle* ps) {
  check_thread("getParamSet");
  Effect* e = as_effect(h, "getParamSet");
  if (!e) return kOfxStatErrBadHandle;
  *ps = reinterpret_cast<OfxParamSetHandle>(&e->params);
  return kOfxStatOK;
}

void declare_clip_props(Clip& c) {
  PropSet& p = c.props;
  p.what = "clip " + c.name;
  p.sets(kOfxPropType, {kOfxTypeClip});
  p.sets(kOfxPropName, {c.name});
  p.sets(kOfxPropLabel, {c.name});
  p.sets(kOfxPropShortLabel, {c.name});
  p.sets(kOfxPropLongLabel, {c.name});
  p.sets(kOfxImageEffectPropSupportedComponents, {});
  p.seti(kOfxImageEffectPropTemporalClipAccess, {0});
  p.seti(kOfxImageClipPropOptional, {0});
  p.seti(kOfxImageClipPropIsMask, {0});
  p.sets(kOfxImageClipPropFieldExtraction, {"OfxFieldDoubled"});
  p.seti(kOfxImageEffectPropSupportsTiles, {1});
}

OfxStatus clipDefine(OfxImageEffectHandle h, const char* name, OfxPropertySetHandle* props) {
  check_thread("clipDefine");
  Effect* e = as_effect(h, "clipDefine");
  if (!e || !name) return kOfxStatErrBadHandle;
  if (e->instance) {
    violation("clipDefine on an instance");
    return kOfxStatErrBadHandle;
  }
  if (e->clip(name)) return kOfxStatErrExists;
  auto c = std::make_unique<Clip>();
  c->name = name;
  declare_clip_props(*c);
  if (props) *props = reinterpret_cast<OfxPropertySetHandle>(&c->props);
  e->clips.push_back(std::move(c));
  return kOfxStatOK;
}

OfxStatus clipGetHandle(OfxImageEffectHandle h, const char* name, OfxImageClipHandle* clip, OfxPropertySetHandle* props) {
  check_thread("clipGetHandle");
  Effect* e = as_effect(h, "clipGetHandle");
  if (!e || !name) return kOfxStatErrBadHandle;
  Clip* c = e->clip(name);
  if (!c) return kOfxStatErrUnknown;
  if (clip) *clip = reinterpret_cast<OfxImageClipHandle>(c);
  if (props) *props = reinterpret_cast<OfxPropertySetHandle>(&c->props);
  return kOfxStatOK;
}

OfxStatus clipGetPropertySet(OfxImageClipHandle h, OfxPropertySetHandle* props) {
  check_thread("clipGetPropertySet");
  Clip* c = as_clip(h, "clipGetPropertySet");
  if (!c) return kOfxStatErrBadHandle;
  *props = reinterpret_cast<OfxPropertySetHandle>(&c->props);
  return kOfxStatOK;
}

std::string frame_path(const std::string& pattern, int frame) {
  char buf[4096];
  std::snprintf(buf, sizeof buf, pattern.c_str(), frame);
  return buf;
}

std::shared_ptr<std::vector<float>> load_frame(Clip& c, int frame) {
  auto it = c.frames.find(frame);
  if (it != c.frames.end()) return it->second;
  const ClipConfig& cfg = c.config;
  const size_t n = static_cast<size_t>(cfg.w) * cfg.h * cfg.c;
  auto data = std::make_shared<std::vector<float>>(n, 0.0f);
  std::ifstream f(frame_path(cfg.pattern, frame), std::ios::binary);
  if (!f) return nullptr;
  f.read(reinterpret_cast<char*>(data->data()), static_cast<std::streamsize>(n * 4));
  if (static_cast<size_t>(f.gcount()) != n * 4) return nullptr;
  c.frames[frame] = data;
  return data;
}

const char* comps_name(int c) {
  return c == 1 ? kOfxImageComponentAlpha : c == 3 ? kOfxImageComponentRGB : kOfxImageComponentRGBA;
}

// Wraps pixels (top-down rows, W x H x C floats) in an image in the current memory layout.
HostImage* make_image(const std::string& clip_name, int w, int h, int c, const float* topdown,
                      OfxTime t) {
  auto img = std::make_unique<HostImage>();
  const int pad = g_layout == "padded" ? 48 : 0;
  const int row = w * c * 4 + pad;
  img->buffer = std::make_shared<std::vector<unsigned char>>(static_cast<size_t>(row) * h + 64, 0xcd);
  unsigned char* base = img->buffer->data();
  const bool topdown_mem = g_layout == "topdown";
  for (int r = 0; r < h; ++r) {  // r: row from the top
    const int y = h - 1 - r;     // OFX y (bottom-up)
    const int mem_row = topdown_mem ? r : y;
    unsigned char* dst = base + static_cast<size_t>(mem_row) * row;
    if (topdown)
      std::memcpy(dst, topdown + static_cast<size_t>(r) * w * c, static_cast<size_t>(w) * c * 4);
    else
      std::memset(dst, 0, static_cast<size_t>(w) * c * 4);
  }
  void* data = topdown_mem ? base + static_cast<size_t>(h - 1) * row : base;  // lower-left pixel
  const int row_bytes = topdown_mem ? -row : row;
  PropSet& p = img->props;
  p.what = "image of " + clip_name;
  p.sets(kOfxPropType, {kOfxTypeImage});
  p.sets(kOfxImageEffectPropPixelDepth, {kOfxBitDepthFloat});
  p.sets(kOfxImageEffectPropComponents, {comps_name(c)});
  p.sets(kOfxImageEffectPropPreMultiplication, {kOfxImagePreMultiplied});
  p.setd(kOfxImageEffectPropRenderScale, {1.0, 1.0});
  p.setd(kOfxImagePropPixelAspectRatio, {1.0});
  p.setp(kOfxImagePropData, {data});
  p.seti(kOfxImagePropBounds, {0, 0, w, h});
  p.seti(kOfxImagePropRegionOfDefinition, {0, 0, w, h});
  p.seti(kOfxImagePropRowBytes, {row_bytes});
  p.sets(kOfxImagePropField, {kOfxImageFieldNone});
  p.sets(kOfxImagePropUniqueIdentifier, {clip_name + "@" + std::to_string(t)});
  HostImage* raw = img.get();
  std::lock_guard<std::mutex> lk(g_images_mu);
  g_images[&raw->props] = std::move(img);
  return raw;
}

OfxStatus clipGetImage(OfxImageClipHandle h, OfxTime t, const OfxRectD* /*region*/, OfxPropertySetHandle* out) {
  check_thread("clipGetImage");
  Clip* c = as_clip(h, "clipGetImage");
  if (!c || !out) return kOfxStatErrBadHandle;
  if (!c->owner) {
    violation("clipGetImage on a clip descriptor");
    return kOfxStatErrBadHandle;
  }
  *out = nullptr;
  if (c->name == kOfxImageEffectOutputClipName) {
    if (!g_output) return kOfxStatFailed;  // outside a render
    auto img = std::make_unique<HostImage>();
    img->buffer = g_output;
    const int w = g_output_bounds.x2 - g_output_bounds.x1;
    PropSet& p = img->props;
    p.what = "image of Output";
    p.sets(kOfxPropType, {kOfxTypeImage});
    p.sets(kOfxImageEffectPropPixelDepth, {kOfxBitDepthFloat});
    p.sets(kOfxImageEffectPropComponents, {comps_name(g_output_comps)});
    p.sets(kOfxImageEffectPropPreMultiplication, {kOfxImagePreMultiplied});
    p.setd(kOfxImageEffectPropRenderScale, {1.0, 1.0});
    p.setd(kOfxImagePropPixelAspectRatio, {1.0});
    p.setp(kOfxImagePropData, {g_output->data()});
    p.seti(kOfxImagePropBounds, {g_output_bounds.x1, g_output_bounds.y1, g_output_bounds.x2, g_output_bounds.y2});
    p.seti(kOfxImagePropRegionOfDefinition, {0, 0, g_proj_w, g_proj_h});
    p.seti(kOfxImagePropRowBytes, {w * g_output_comps * 4});
    p.sets(kOfxImagePropField, {kOfxImageFieldNone});
    p.sets(kOfxImagePropUniqueIdentifier, {"Output@" + std::to_string(t)});
    HostImage* raw = img.get();
    {
      std::lock_guard<std::mutex> lk(g_images_mu);
      g_images[&raw->props] = std::move(img);
    }
    *out = reinterpret_cast<OfxPropertySetHandle>(&raw->props);
    return kOfxStatOK;
  }
  const ClipConfig& cfg = c->config;
  const int frame = static_cast<int>(std::lround(t));
  if (cfg.mode == ClipConfig::Disconnected) return kOfxStatFailed;
  if (cfg.mode == ClipConfig::Black) {  // Resolve: "connected", black
    HostImage* img = make_image(c->name, g_proj_w, g_proj_h, 4, nullptr, t);
    *out = reinterpret_cast<OfxPropertySetHandle>(&img->props);
    return kOfxStatOK;
  }
  if (frame < cfg.first || frame > cfg.last) return kOfxStatFailed;
  auto data = load_frame(*c, frame);
  if (!data) return kOfxStatFailed;
  HostImage* img = make_image(c->name, cfg.w, cfg.h, cfg.c, data->data(), t);
  *out = reinterpret_cast<OfxPropertySetHandle>(&img->props);
  return kOfxStatOK;
}

OfxStatus clipReleaseImage(OfxPropertySetHandle h) {
  check_thread("clipReleaseImage");
  std::lock_guard<std::mutex> lk(g_images_mu);
  auto it = g_images.find(reinterpret_cast<PropSet*>(h));
  if (it == g_images.end()) {
    violation("clipReleaseImage of an unknown image handle");
    return kOfxStatErrBadHandle;
  }
  g_images.erase(it);
  return kOfxStatOK;
}

OfxStatus clipGetRegionOfDefinition(OfxImageClipHandle h, OfxTime, OfxRectD* bounds) {
  check_thread("clipGetRegionOfDefinition");
  Clip* c = as_clip(h, "clipGetRegionOfDefinition");
  if (!c || !bounds) return kOfxStatErrBadHandle;
  if (c->config.mode == ClipConfig::Disconnected && c->name != kOfxImageEffectOutputClipName) {
    *bounds = {0, 0, 0, 0};
    return kOfxStatOK;
  }
  const int w = c->config.mode == ClipConfig::Files ? c->config.w : g_proj_w;
  const int hh = c->config.mode == ClipConfig::Files ? c->config.h : g_proj_h;
  *bounds = {0, 0, static_cast<double>(w), static_cast<double>(hh)};
  return kOfxStatOK;
}

int abortFn(OfxImageEffectHandle h) {
  check_thread("abort");
  as_effect(h, "abort");
  ++g_abort_calls;
  return (g_abort_after >= 0 && g_abort_calls > g_abort_after) ? 1 : 0;
}

struct MemBlock {
  uint32_t magic = kMagicMem;
  std::vector<unsigned char> data;
};
OfxStatus imageMemoryAlloc(OfxImageEffectHandle, size_t n, OfxImageMemoryHandle* m) {
  auto* b = new MemBlock();
  b->data.resize(n);
  *m = reinterpret_cast<OfxImageMemoryHandle>(b);
  return kOfxStatOK;
}
OfxStatus imageMemoryFree(OfxImageMemoryHandle m) {
  auto* b = reinterpret_cast<MemBlock*>(m);
  if (!b || b->magic != kMagicMem) return kOfxStatErrBadHandle;
  delete b;
  return kOfxStatOK;
}
OfxStatus imageMemoryLock(OfxImageMemoryHandle m, void** p) {
  auto* b = reinterpret_cast<MemBlock*>(m);
  if (!b || b->magic != kMagicMem) return kOfxStatErrBadHandle;
  *p = b->data.data();
  return kOfxStatOK;
}
OfxStatus imageMemoryUnlock(OfxImageMemoryHandle) { return kOfxStatOK; }

const OfxImageEffectSuiteV1 kImageEffectSuite = {
    getPropertySet,   getParamSet,      clipDefine,       clipGetHandle,
    clipGetPropertySet, clipGetImage,   clipReleaseImage, clipGetRegionOfDefinition,
    abortFn,          imageMemoryAlloc, imageMemoryFree,  imageMemoryLock,
    imageMemoryUnlock};

// --- memory, threads, messages, progress ------------------------------------------------------

OfxStatus memoryAlloc(void*, size_t n, void** out) {
  *out = std::malloc(n ? n : 1);
  return *out ? kOfxStatOK : kOfxStatErrMemory;
}
OfxStatus memoryFree(void* p) {
  std::free(p);
  return kOfxStatOK;
}
const OfxMemorySuiteV1 kMemorySuite = {memoryAlloc, memoryFree};

thread_local unsigned t_thread_index = 0;
OfxStatus multiThread(OfxThreadFunctionV1 fn, unsigned n, void* arg) {
  if (n == 0) n = 1;
  std::vector<std::thread> ts;
  for (unsigned k = 0; k < n; ++k)
    ts.emplace_back([=] {
      t_spawned = true;
      t_thread_index = k;
      fn(k, n, arg);
    });
  for (auto& t : ts) t.join();
  return kOfxStatOK;
}
OfxStatus multiThreadNumCPUs(unsigned* n) {
  *n = std::max(1u, std::thread::hardware_concurrency());
  return kOfxStatOK;
}
OfxStatus multiThreadIndex(unsigned* i) {
  *i = t_thread_index;
  return kOfxStatOK;
}
int multiThreadIsSpawnedThread() { return t_spawned ? 1 : 0; }
OfxStatus mutexCreate(OfxMutexHandle* m, int lock_count) {
  auto* mu = new std::recursive_mutex();
  for (int k = 0; k < lock_count; ++k) mu->lock();
  *m = reinterpret_cast<OfxMutexHandle>(mu);
  return kOfxStatOK;
}
OfxStatus mutexDestroy(const OfxMutexHandle m) {
  delete reinterpret_cast<std::recursive_mutex*>(m);
  return kOfxStatOK;
}
OfxStatus mutexLock(const OfxMutexHandle m) {
  reinterpret_cast<std::recursive_mutex*>(m)->lock();
  return kOfxStatOK;
}
OfxStatus mutexUnLock(const OfxMutexHandle m) {
  reinterpret_cast<std::recursive_mutex*>(m)->unlock();
  return kOfxStatOK;
}
OfxStatus mutexTryLock(const OfxMutexHandle m) {
  return reinterpret_cast<std::recursive_mutex*>(m)->try_lock() ? kOfxStatOK : kOfxStatFailed;
}
const OfxMultiThreadSuiteV1 kMultiThreadSuite = {
    multiThread, multiThreadNumCPUs, multiThreadIndex, multiThreadIsSpawnedThread,
    mutexCreate, mutexDestroy,       mutexLock,        mutexUnLock, mutexTryLock};

std::string vformat(const char* fmt, va_list ap) {
  char buf[8192];
  std::vsnprintf(buf, sizeof buf, fmt ? fmt : "", ap);
  return buf;
}

OfxStatus message(void*, const char* type, const char* id, const char* fmt, ...) {
  check_thread("message");
  va_list ap;
  va_start(ap, fmt);
  std::string text = vformat(fmt, ap);
  va_end(ap);
  std::lock_guard<std::mutex> lk(g_diag_mu);
  g_messages.push_back(std::string(type ? type : "?") + ": " + text);
  return kOfxStatOK;
}
OfxStatus setPersistentMessage(void*, const char* type, const char* id, const char* fmt, ...) {
  check_thread("setPersistentMessage");
  va_list ap;
  va_start(ap, fmt);
  std::string text = vformat(fmt, ap);
  va_end(ap);
  std::lock_guard<std::mutex> lk(g_diag_mu);
  g_persistent = text;
  return kOfxStatOK;
}
OfxStatus clearPersistentMessage(void*) {
  check_thread("clearPersistentMessage");
  std::lock_guard<std::mutex> lk(g_diag_mu);
  g_persistent.clear();
  return kOfxStatOK;
}
const OfxMessageSuiteV2 kMessageSuite = {message, setPersistentMessage, clearPersistentMessage};

bool g_progress_open = false;
OfxStatus progressStart(void*, const char* label) {
  check_thread("progressStart");
  if (g_progress_open) violation("progressStart while a progress is open");
  g_progress_open = true;
  return kOfxStatOK;
}
OfxStatus progressUpdate(void*, double) {
  check_thread("progressUpdate");
  if (!g_progress_open) violation("progressUpdate without progressStart");
  ++g_progress_calls;
  return (g_cancel_progress_after >= 0 && g_progress_calls > g_cancel_progress_after) ? kOfxStatReplyNo
                                                                                      : kOfxStatOK;
}
OfxStatus progressEnd(void*) {
  check_thread("progressEnd");
  if (!g_progress_open) violation("progressEnd without progressStart");
  g_progress_open = false;
  return kOfxStatOK;
}
const OfxProgressSuiteV1 kProgressSuite = {progressStart, progressUpdate, progressEnd};

const void* fetchSuite(OfxPropertySetHandle host, const char* name, int version) {
  if (reinterpret_cast<PropSet*>(host) != &g_host_props) violation("fetchSuite: bad host handle");
  const std::string n = name ? name : "";
  if (n == kOfxPropertySuite && version == 1) return &kPropertySuite;
  if (n == kOfxImageEffectSuite && version == 1) return &kImageEffectSuite;
  if (n == kOfxParameterSuite && version == 1) return &kParameterSuite;
  if (n == kOfxMemorySuite && version == 1) return &kMemorySuite;
  if (n == kOfxMultiThreadSuite && version == 1) return &kMultiThreadSuite;
  if (n == kOfxMessageSuite && (version == 1 || version == 2)) return &kMessageSuite;
  if (n == kOfxProgressSuite && version == 1) return &kProgressSuite;
  return nullptr;
}

// --- host actions -----------------------------------------------------------------------------

void declare_effect_descriptor_props(Effect& e) {
  PropSet& p = e.props;
  p.what = "effect descriptor";
  p.sets(kOfxPropType, {kOfxTypeImageEffect});
  p.sets(kOfxPropLabel, {""});
  p.sets(kOfxPropShortLabel, {""});
  p.sets(kOfxPropLongLabel, {""});
  p.sets(kOfxPropPluginDescription, {""});
  p.sets(kOfxPluginPropFilePath, {g_bundle_binary});
  p.sets(kOfxImageEffectPropSupportedContexts, {});
  p.sets(kOfxImageEffectPluginPropGrouping, {""});
  p.seti(kOfxImageEffectPluginPropSingleInstance, {0});
  p.sets(kOfxImageEffectPluginRenderThreadSafety, {kOfxImageEffectRenderInstanceSafe});
  p.seti(kOfxImageEffectPluginPropHostFrameThreading, {1});
  p.seti(kOfxImageEffectPropSupportsMultiResolution, {1});
  p.seti(kOfxImageEffectPropSupportsTiles, {1});
  p.seti(kOfxImageEffectPropTemporalClipAccess, {0});
  p.sets(kOfxImageEffectPropSupportedPixelDepths, {});
  p.seti(kOfxImageEffectPluginPropFieldRenderTwiceAlways, {1});
  p.seti(kOfxImageEffectPropSupportsMultipleClipDepths, {0});
  p.seti(kOfxImageEffectPropSupportsMultipleClipPARs, {0});
  p.sets(kOfxImageEffectPropClipPreferencesSlaveParam, {});
}

void declare_host_props() {
  PropSet& p = g_host_props;
  p.what = "host";
  p.sets(kOfxPropType, {kOfxTypeImageEffectHost});
  p.sets(kOfxPropName, {"io.lorafx.OfxTestHost"});
  p.sets(kOfxPropLabel, {"lorafx OFX test host"});
  p.seti(kOfxPropAPIVersion, {1, 4});
  p.seti(kOfxPropVersion, {1, 0, 0});
  p.sets(kOfxPropVersionLabel, {"1.0"});
  p.seti(kOfxImageEffectHostPropIsBackground, {0});
  p.seti(kOfxImageEffectPropSupportsOverlays, {0});
  p.seti(kOfxImageEffectPropSupportsMultiResolution, {1});
  p.seti(kOfxImageEffectPropSupportsTiles, {1});
  p.seti(kOfxImageEffectPropTemporalClipAccess, {1});
  p.sets(kOfxImageEffectPropSupportedComponents,
         {kOfxImageComponentRGBA, kOfxImageComponentRGB, kOfxImageComponentAlpha});
  p.sets(kOfxImageEffectPropSupportedContexts, {kOfxImageEffectContextFilter, kOfxImageEffectContextGeneral});
  p.sets(kOfxImageEffectPropSupportedPixelDepths, {kOfxBitDepthFloat});
  p.seti(kOfxImageEffectPropSupportsMultipleClipDepths, {0});
  p.seti(kOfxImageEffectPropSupportsMultipleClipPARs, {0});
  p.seti(kOfxParamHostPropMaxParameters, {-1});
  p.seti(kOfxParamHostPropMaxPages, {0});
  p.seti(kOfxParamHostPropSupportsStringAnimation, {0});
  p.seti(kOfxParamHostPropSupportsChoiceAnimation, {0});
  p.seti(kOfxParamHostPropSupportsBooleanAnimation, {0});
  p.seti(kOfxParamHostPropSupportsCustomAnimation, {0});
  g_host.host = reinterpret_cast<OfxPropertySetHandle>(&g_host_props);
  g_host.fetchSuite = fetchSuite;
}

std::string describe_json(const Effect& e) {
  std::string o = "{\"effect\": " + e.props.json() + ", \"clips\": [";
  for (size_t k = 0; k < e.clips.size(); ++k)
    o += (k ? ", " : "") + std::string("{\"name\": ") + jstr(e.clips[k]->name) +
         ", \"props\": " + e.clips[k]->props.json() + "}";
  o += "], \"params\": [";
  for (size_t k = 0; k < e.params.params.size(); ++k) {
    const Param& p = *e.params.params[k];
    o += (k ? ", " : "") + std::string("{\"name\": ") + jstr(p.name) + ", \"type\": " + jstr(p.type) +
         ", \"props\": " + p.props.json() + "}";
  }
  return o + "]}";
}

OfxStatus describe_in_context(const std::string& context, std::string* json) {
  auto e = std::make_unique<Effect>();
  e->props = g_desc->props;  // the context descriptor starts from the plug-in's Describe
  e->props.what = "effect descriptor (" + context + ")";
  e->params.props.what = "parameter set";
  e->context = context;
  PropSet in;
  in.what = "DescribeInContext inArgs";
  in.sets(kOfxImageEffectPropContext, {context});
  OfxStatus st = call_action(kOfxImageEffectActionDescribeInContext, e.get(), &in, nullptr);
  if (json) *json = describe_json(*e);
  g_ctx[context] = std::move(e);
  return st;
}

void instance_changed(Effect* e, const std::string& name, const char* reason) {
  PropSet in;
  in.what = "InstanceChanged inArgs";
  in.sets(kOfxPropType, {kOfxTypeParameter});
  in.sets(kOfxPropName, {name});
  in.sets(kOfxPropChangeReason, {reason});
  in.setd(kOfxPropTime, {static_cast<double>(g_inst ? g_inst->props.getd(kOfxImageEffectPropFrameRange, 0, 0) : 0)});
  in.setd(kOfxImageEffectPropRenderScale, {1.0, 1.0});
  call_action(kOfxActionInstanceChanged, e, &in, nullptr);
}

// A user edit: Begin/InstanceChanged/End, as hosts bracket it.
void user_change(Effect* e, const std::string& name) {
  PropSet br;
  br.what = "BeginInstanceChanged inArgs";
  br.sets(kOfxPropChangeReason, {kOfxChangeUserEdited});
  call_action(kOfxActionBeginInstanceChanged, e, &br, nullptr);
  instance_changed(e, name, kOfxChangeUserEdited);
  call_action(kOfxActionEndInstanceChanged, e, &br, nullptr);
}

OfxStatus create_instance(const std::string& context) {
  if (!g_ctx.count(context)) describe_in_context(context, nullptr);
  const Effect& d = *g_ctx[context];
  auto e = std::make_unique<Effect>();
  e->instance = true;
  e->context = context;
  e->props = d.props;
  e->props.what = "effect instance";
  e->props.sets(kOfxPropType, {kOfxTypeImageEffectInstance});
  e->props.sets(kOfxImageEffectPropContext, {context});
  e->props.setp(kOfxPropInstanceData, {nullptr});
  e->props.setd(kOfxImageEffectPropProjectSize, {double(g_proj_w), double(g_proj_h)});
  e->props.setd(kOfxImageEffectPropProjectOffset, {0.0, 0.0});
  e->props.setd(kOfxImageEffectPropProjectExtent, {double(g_proj_w), double(g_proj_h)});
  e->props.setd(kOfxImageEffectPropProjectPixelAspectRatio, {1.0});
  e->props.setd(kOfxImageEffectInstancePropEffectDuration, {100.0});
  e->props.seti(kOfxImageEffectInstancePropSequentialRender, {0});
  e->props.setd(kOfxImageEffectPropFrameRate, {24.0});
  e->props.seti(kOfxPropIsInteractive, {1});
  e->params.props.what = "parameter set";
  for (const auto& dp : d.params.params) {
    auto p = std::make_unique<Param>();
    p->type = dp->type;
    p->name = dp->name;
    p->props = dp->props;
    p->owner = e.get();
    const PropSet& pp = dp->props;
    for (int k = 0; k < 3; ++k) p->ival[k] = pp.geti(kOfxParamPropDefault, k, 0);
    for (int k = 0; k < 4; ++k) p->dval[k] = pp.getd(kOfxParamPropDefault, k, 0.0);
    p->sval = pp.gets(kOfxParamPropDefault, 0, "");
    e->params.params.push_back(std::move(p));
  }
  int src_c = 4;
  if (g_clip_configs.count(kOfxImageEffectSimpleSourceClipName))
    src_c = g_clip_configs[kOfxImageEffectSimpleSourceClipName].c;
  for (const auto& dc : d.clips) {
    auto c = std::make_unique<Clip>();
    c->name = dc->name;
    c->props = dc->props;
    c->owner = e.get();
    auto cfg = g_clip_configs.find(c->name);
    if (cfg != g_clip_configs.end()) c->config = cfg->second;
    const bool output = c->name == kOfxImageEffectOutputClipName;
    const bool connected = output || c->config.mode != ClipConfig::Disconnected;
    const int comps = output ? src_c : (c->config.mode == ClipConfig::Files ? c->config.c : 4);
    PropSet& p = c->props;
    p.what = "clip " + c->name;
    p.sets(kOfxImageEffectPropPixelDepth, {connected ? kOfxBitDepthFloat : kOfxBitDepthNone});
    p.sets(kOfxImageEffectPropComponents, {connected ? comps_name(comps) : kOfxImageComponentNone});
    p.sets(kOfxImageClipPropUnmappedPixelDepth, {kOfxBitDepthFloat});
    p.sets(kOfxImageClipPropUnmappedComponents, {comps_name(comps)});
    p.sets(kOfxImageEffectPropPreMultiplication, {kOfxImagePreMultiplied});
    p.setd(kOfxImagePropPixelAspectRatio, {1.0});
    p.setd(kOfxImageEffectPropFrameRate, {24.0});
    const double f0 = c->config.mode == ClipConfig::Files ? c->config.first : 1.0;
    const double f1 = c->config.mode == ClipConfig::Files ? c->config.last : 1.0;
    p.setd(kOfxImageEffectPropFrameRange, {f0, f1});
    p.setd(kOfxImageEffectPropUnmappedFrameRange, {f0, f1});
    p.setd(kOfxImageEffectPropUnmappedFrameRate, {24.0});
    p.sets(kOfxImageClipPropFieldOrder, {kOfxImageFieldNone});
    p.seti(kOfxImageClipPropConnected, {connected ? 1 : 0});
    p.seti(kOfxImageClipPropContinuousSamples, {0});
    if (output) {
      g_output_comps = comps;
    }
    e->clips.push_back(std::move(c));
  }
  g_inst = std::move(e);
  return call_action(kOfxActionCreateInstance, g_inst.get(), nullptr, nullptr);
}

int components_of(HostImage* hi) {
  const std::string c = hi->props.gets(kOfxImageEffectPropComponents);
  return c == kOfxImageComponentAlpha ? 1 : c == kOfxImageComponentRGB ? 3 : 4;
}

bool write_raw(const std::string& path, const float* data, size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * 4));
  return static_cast<bool>(f);
}

// Renders [first, last]: BeginSequenceRender, per frame RoD + IsIdentity + Render (in tiles),
// EndSequenceRender. Writes each output frame as raw float32, top row first.
std::string render(int first, int last, const std::string& pattern, int tiles, bool interactive) {
  Effect* e = g_inst.get();
  std::string frames_json;
  PropSet seq;
  seq.what = "SequenceRender inArgs";
  seq.setd(kOfxImageEffectPropFrameRange, {double(first), double(last)});
  seq.setd(kOfxImageEffectPropFrameStep, {1.0});
  seq.seti(kOfxPropIsInteractive, {interactive ? 1 : 0});
  seq.setd(kOfxImageEffectPropRenderScale, {1.0, 1.0});
  seq.seti(kOfxImageEffectPropSequentialRenderStatus, {interactive ? 0 : 1});
  seq.seti(kOfxImageEffectPropInteractiveRenderStatus, {interactive ? 1 : 0});
  OfxStatus st_begin = call_action(kOfxImageEffectActionBeginSequenceRender, e, &seq, nullptr);
  const int w = g_proj_w, h = g_proj_h, nc = g_output_comps;
  for (int t = first; t <= last; ++t) {
    const auto t0 = std::chrono::steady_clock::now();
    // Region of definition.
    PropSet rin, rout;
    rin.what = "GetRegionOfDefinition inArgs";
    rin.setd(kOfxPropTime, {double(t)});
    rin.setd(kOfxImageEffectPropRenderScale, {1.0, 1.0});
    rout.what = "GetRegionOfDefinition outArgs";
    rout.setd(kOfxImageEffectPropRegionOfDefinition, {0.0, 0.0, double(w), double(h)});
    OfxStatus st_rod = call_action(kOfxImageEffectActionGetRegionOfDefinition, e, &rin, &rout);
    std::string rod = "[" + jnum(rout.getd(kOfxImageEffectPropRegionOfDefinition, 0)) + ", " +
                      jnum(rout.getd(kOfxImageEffectPropRegionOfDefinition, 1)) + ", " +
                      jnum(rout.getd(kOfxImageEffectPropRegionOfDefinition, 2)) + ", " +
                      jnum(rout.getd(kOfxImageEffectPropRegionOfDefinition, 3)) + "]";
    // Identity?
    PropSet iin, iout;
    iin.what = "IsIdentity inArgs";
    iin.setd(kOfxPropTime, {double(t)});
    iin.sets(kOfxImageEffectPropFieldToRender, {kOfxImageFieldNone});
    iin.seti(kOfxImageEffectPropRenderWindow, {0, 0, w, h});
    iin.setd(kOfxImageEffectPropRenderScale, {1.0, 1.0});
    iout.what = "IsIdentity outArgs";
    iout.sets(kOfxPropName, {""});
    iout.setd(kOfxPropTime, {double(t)});
    OfxStatus st_id = call_action(kOfxImageEffectActionIsIdentity, e, &iin, &iout);
    std::vector<float> frame(static_cast<size_t>(w) * h * nc, 0.0f);
    std::string identity_clip;
    OfxStatus st_render = kOfxStatOK;
    if (st_id == kOfxStatOK) {
      // The host copies the named clip at the named time.
      identity_clip = iout.gets(kOfxPropName);
      Clip* c = e->clip(identity_clip);
      OfxPropertySetHandle img = nullptr;
      if (c && clipGetImage(reinterpret_cast<OfxImageClipHandle>(c), iout.getd(kOfxPropTime), nullptr, &img) == kOfxStatOK) {
        auto* hi = reinterpret_cast<HostImage*>(img);
        const int ic = components_of(hi);
        const auto* base = static_cast<const unsigned char*>(hi->props.props[kOfxImagePropData].p[0]);
        const int rb = hi->props.geti(kOfxImagePropRowBytes);
        for (int y = 0; y < h; ++y)
          for (int x = 0; x < w; ++x)
            for (int k = 0; k < nc; ++k) {
              const float* px = reinterpret_cast<const float*>(base + static_cast<ptrdiff_t>(y) * rb) + x * ic;
              float v = k < ic ? px[k] : 1.0f;
              frame[(static_cast<size_t>(h - 1 - y) * w + x) * nc + k] = v;
            }
        clipReleaseImage(img);
      }
    } else {
      // Render in `tiles` horizontal bands.
      const int n = std::max(1, std::min(tiles, h));
      for (int k = 0; k < n && st_render == kOfxStatOK; ++k) {
        const int y1 = h * k / n, y2 = h * (k + 1) / n;
        g_output_bounds = {0, y1, w, y2};
        g_output = std::make_shared<std::vector<unsigned char>>(static_cast<size_t>(w) * (y2 - y1) * nc * 4, 0);
        // Poison the output so pixels a plug-in forgets to write are obvious.
        float* o = reinterpret_cast<float*>(g_output->data());
        std::fill(o, o + static_cast<size_t>(w) * (y2 - y1) * nc, -12345.0f);
        PropSet in;
        in.what = "Render inArgs";
        in.setd(kOfxPropTime, {double(t)});
        in.sets(kOfxImageEffectPropFieldToRender, {kOfxImageFieldNone});
        in.seti(kOfxImageEffectPropRenderWindow, {0, y1, w, y2});
        in.setd(kOfxImageEffectPropRenderScale, {1.0, 1.0});
        in.seti(kOfxImageEffectPropSequentialRenderStatus, {interactive ? 0 : 1});
        in.seti(kOfxImageEffectPropInteractiveRenderStatus, {interactive ? 1 : 0});
        in.seti(kOfxImageEffectPropRenderQualityDraft, {0});
        ++g_in_render;
        st_render = call_action(kOfxImageEffectActionRender, e, &in, nullptr);
        --g_in_render;
        for (int y = y1; y < y2; ++y)
          std::memcpy(&frame[static_cast<size_t>(h - 1 - y) * w * nc], o + static_cast<size_t>(y - y1) * w * nc,
                      static_cast<size_t>(w) * nc * 4);
        g_output.reset();
      }
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::string file;
    if (pattern != "-") {
      file = frame_path(pattern, t);
      if (!write_raw(file, frame.data(), frame.size())) file = "";
    }
    size_t poisoned = 0;
    for (float v : frame) poisoned += v == -12345.0f;
    std::string persistent;
    {
      std::lock_guard<std::mutex> lk(g_diag_mu);
      persistent = g_persistent;
    }
    frames_json += (frames_json.empty() ? "" : ", ") + std::string("{\"frame\": ") + std::to_string(t) +
                   ", \"status\": " + std::to_string(st_render) + ", \"rod_status\": " + std::to_string(st_rod) +
                   ", \"rod\": " + rod + ", \"identity\": " + jstr(identity_clip) +
                   ", \"message\": " + jstr(persistent) + ", \"file\": " + jstr(file) +
                   ", \"unwritten\": " + std::to_string(poisoned) + ", \"ms\": " + jnum(ms) +
                   ", \"components\": " + std::to_string(nc) + "}";
  }
  OfxStatus st_end = call_action(kOfxImageEffectActionEndSequenceRender, e, &seq, nullptr);
  return "\"begin_status\": " + std::to_string(st_begin) + ", \"end_status\": " + std::to_string(st_end) +
         ", \"frames\": [" + frames_json + "]";
}

// --- command loop -----------------------------------------------------------------------------

std::string param_value_json(const Param& p) {
  if (int_valued(p.type)) return std::to_string(p.ival[0]);
  if (double_valued(p.type)) return jnum(p.dval[0]);
  if (string_valued(p.type)) return jstr(p.sval);
  return "null";
}

std::string unescape(const std::string& s) {
  std::string o;
  for (size_t k = 0; k < s.size(); ++k) {
    if (s[k] == '\\' && k + 1 < s.size()) {
      char c = s[++k];
      o += c == 'n' ? '\n' : c == 't' ? '\t' : c;
    } else {
      o += s[k];
    }
  }
  return o;
}

std::string drain_messages() {
  std::lock_guard<std::mutex> lk(g_diag_mu);
  std::string o = "[";
  for (size_t k = 0; k < g_messages.size(); ++k) o += (k ? ", " : "") + jstr(g_messages[k]);
  g_messages.clear();
  return o + "]";
}

std::string violations_json() {
  std::lock_guard<std::mutex> lk(g_diag_mu);
  std::string o = "[";
  for (size_t k = 0; k < g_violations.size(); ++k) o += (k ? ", " : "") + jstr(g_violations[k]);
  return o + "]";
}

size_t live_images() {
  std::lock_guard<std::mutex> lk(g_images_mu);
  return g_images.size();
}

void reply(const std::string& cmd, bool ok, const std::string& fields, const std::string& error = "") {
  std::string o = "{\"cmd\": " + jstr(cmd) + ", \"ok\": " + (ok ? "true" : "false");
  if (!fields.empty()) o += ", " + fields;
  if (!error.empty()) o += ", \"error\": " + jstr(error);
  o += ", \"messages\": " + drain_messages() + "}";
  std::fputs(o.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  g_main_thread = std::this_thread::get_id();
  declare_host_props();
  std::istream* in = &std::cin;
  std::ifstream script;
  if (argc > 1) {
    script.open(argv[1]);
    if (!script) {
      std::fprintf(stderr, "cannot open script %s\n", argv[1]);
      return 2;
    }
    in = &script;
  }
  std::string line;
  while (std::getline(*in, line)) {
    if (!line.empty() && line[0] == '#') continue;
    std::istringstream ss(line);
    std::string cmd;
    if (!(ss >> cmd)) continue;
    try {
      if (cmd == "load") {
        std::string path;
        ss >> path;
        g_bundle_binary = path;
        g_dl = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!g_dl) {
          reply(cmd, false, "", std::string("dlopen: ") + dlerror());
          continue;
        }
        auto nfn = reinterpret_cast<OfxGetNumberOfPluginsFn>(dlsym(g_dl, "OfxGetNumberOfPlugins"));
        auto gfn = reinterpret_cast<OfxGetPluginFn>(dlsym(g_dl, "OfxGetPlugin"));
        if (!nfn || !gfn) {
          reply(cmd, false, "", "the binary does not export OfxGetNumberOfPlugins/OfxGetPlugin");
          continue;
        }
        const int n = nfn();
        g_plugin = n > 0 ? gfn(0) : nullptr;
        if (!g_plugin || std::strcmp(g_plugin->pluginApi, kOfxImageEffectPluginApi) != 0 ||
            g_plugin->apiVersion != 1) {
          reply(cmd, false, "", "no image effect plug-in (API 1) in the binary");
          continue;
        }
        g_plugin->setHost(&g_host);
        OfxStatus st_load = call_action(kOfxActionLoad, nullptr, nullptr, nullptr);
        g_desc = std::make_unique<Effect>();
        declare_effect_descriptor_props(*g_desc);
        OfxStatus st_desc = call_action(kOfxActionDescribe, g_desc.get(), nullptr, nullptr);
        reply(cmd, st_load == kOfxStatOK && st_desc == kOfxStatOK,
              "\"plugins\": " + std::to_string(n) + ", \"id\": " + jstr(g_plugin->pluginIdentifier) +
                  ", \"version\": [" + std::to_string(g_plugin->pluginVersionMajor) + ", " +
                  std::to_string(g_plugin->pluginVersionMinor) + "], \"load_status\": " +
                  std::to_string(st_load) + ", \"describe_status\": " + std::to_string(st_desc) +
                  ", \"descriptor\": " + g_desc->props.json());
      } else if (cmd == "describe") {
        std::string context;
        ss >> context;
        std::string json;
        OfxStatus st = describe_in_context(context, &json);
        reply(cmd, st == kOfxStatOK, "\"status\": " + std::to_string(st) + ", \"description\": " + json);
      } else if (cmd == "project") {
        ss >> g_proj_w >> g_proj_h;
        reply(cmd, true, "");
      } else if (cmd == "layout") {
        ss >> g_layout;
        reply(cmd, g_layout == "padded" || g_layout == "packed" || g_layout == "topdown", "");
      } else if (cmd == "clip") {
        std::string name, mode;
        ss >> name >> mode;
        ClipConfig c;
        if (mode == "files") {
          c.mode = ClipConfig::Files;
          ss >> c.pattern >> c.w >> c.h >> c.c >> c.first >> c.last;
        } else if (mode == "black") {
          c.mode = ClipConfig::Black;
        }
        g_clip_configs[name] = c;
        if (g_inst) {  // reconfigure a live clip
          if (Clip* cl = g_inst->clip(name)) {
            cl->config = c;
            cl->frames.clear();
            cl->props.seti(kOfxImageClipPropConnected, {c.mode != ClipConfig::Disconnected ? 1 : 0});
          }
        }
        reply(cmd, true, "");
      } else if (cmd == "create") {
        std::string context;
        ss >> context;
        OfxStatus st = create_instance(context);
        reply(cmd, st == kOfxStatOK, "\"status\": " + std::to_string(st));
      } else if (cmd == "set" || cmd == "press" || cmd == "get") {
        std::string name;
        ss >> name;
        Param* p = g_inst ? g_inst->params.find(name) : nullptr;
        if (!p) {
          reply(cmd, false, "", "no parameter " + name);
          continue;
        }
        if (cmd == "set") {
          std::string rest;
          std::getline(ss, rest);
          if (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
          if (int_valued(p->type)) p->ival[0] = std::stoi(rest);
          else if (double_valued(p->type)) p->dval[0] = std::stod(rest);
          else if (string_valued(p->type)) p->sval = unescape(rest);
        }
        const auto t0 = std::chrono::steady_clock::now();
        if (cmd != "get") user_change(g_inst.get(), name);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        Param* status = g_inst->params.find("status");
        reply(cmd, true, "\"value\": " + param_value_json(*p) + ", \"ms\": " + jnum(ms) +
                             (status ? ", \"status\": " + param_value_json(*status) : ""));
      } else if (cmd == "wait") {
        double timeout = 0;
        std::string press, watch, texts;
        ss >> timeout >> press >> watch;
        std::getline(ss, texts);
        if (!texts.empty() && texts[0] == ' ') texts.erase(0, 1);
        std::vector<std::string> wanted;
        std::stringstream ts(texts);
        for (std::string w; std::getline(ts, w, '|');) wanted.push_back(w);
        Param* pw = g_inst ? g_inst->params.find(watch) : nullptr;
        if (!pw || !g_inst->params.find(press)) {
          reply(cmd, false, "", "no parameter " + (pw ? press : watch));
          continue;
        }
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout);
        bool matched = false;
        std::vector<std::string> seen;
        double max_ms = 0;
        for (;;) {
          const auto t0 = std::chrono::steady_clock::now();
          user_change(g_inst.get(), press);
          max_ms = std::max(max_ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
          if (seen.empty() || seen.back() != pw->sval) seen.push_back(pw->sval);
          for (const std::string& w : wanted)
            if (pw->sval.find(w) != std::string::npos) matched = true;
          if (matched || std::chrono::steady_clock::now() > deadline) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(250));
        }
        std::string seen_json = "[";
        for (size_t k = 0; k < seen.size(); ++k) seen_json += (k ? ", " : "") + jstr(seen[k]);
        seen_json += "]";
        reply(cmd, matched, "\"value\": " + jstr(pw->sval) + ", \"seen\": " + seen_json +
                                ", \"max_press_ms\": " + jnum(max_ms));
      } else if (cmd == "abort_after") {
        ss >> g_abort_after;
        g_abort_calls = 0;
        reply(cmd, true, "");
      } else if (cmd == "cancel_progress_after") {
        ss >> g_cancel_progress_after;
        g_progress_calls = 0;
        reply(cmd, true, "");
      } else if (cmd == "render") {
        int first = 0, last = 0, tiles = 1;
        std::string pattern, opt;
        bool interactive = false;
        ss >> first >> last >> pattern;
        while (ss >> opt) {
          if (opt == "tiles") ss >> tiles;
          if (opt == "interactive") interactive = true;
        }
        if (!g_inst) {
          reply(cmd, false, "", "no instance");
          continue;
        }
        reply(cmd, true, render(first, last, pattern, tiles, interactive));
      } else if (cmd == "sleep") {
        double s = 0;
        ss >> s;
        std::this_thread::sleep_for(std::chrono::duration<double>(s));
        reply(cmd, true, "");
      } else if (cmd == "destroy") {
        OfxStatus st = g_inst ? call_action(kOfxActionDestroyInstance, g_inst.get(), nullptr, nullptr) : kOfxStatOK;
        g_inst.reset();
        reply(cmd, st == kOfxStatOK, "\"status\": " + std::to_string(st) + ", \"leaked_images\": " + std::to_string(live_images()));
      } else if (cmd == "unload") {
        OfxStatus st = g_plugin ? call_action(kOfxActionUnload, nullptr, nullptr, nullptr) : kOfxStatOK;
        g_ctx.clear();
        g_desc.reset();
        g_plugin = nullptr;
        reply(cmd, st == kOfxStatOK, "\"status\": " + std::to_string(st));
      } else if (cmd == "stats") {
        reply(cmd, true, "\"violations\": " + violations_json() + ", \"leaked_images\": " +
                             std::to_string(live_images()) + ", \"reentrant_changes\": " +
                             std::to_string(g_reentrant_changes) + ", \"abort_calls\": " +
                             std::to_string(g_abort_calls) + ", \"progress_calls\": " +
                             std::to_string(g_progress_calls) + ", \"persistent\": " + jstr(g_persistent));
      } else if (cmd == "quit") {
        reply(cmd, true, "");
        break;
      } else {
        reply(cmd, false, "", "unknown command");
      }
    } catch (const std::exception& ex) {
      reply(cmd, false, "", ex.what());
    }
  }
  // Shut down like a host: destroy a live instance, Unload, then dlclose.
  if (g_inst && g_plugin) call_action(kOfxActionDestroyInstance, g_inst.get(), nullptr, nullptr);
  g_inst.reset();
  if (g_plugin) call_action(kOfxActionUnload, nullptr, nullptr, nullptr);
  g_plugin = nullptr;
  if (g_dl) dlclose(g_dl);
  return 0;
}
