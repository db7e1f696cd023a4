// Thin, exception-safe helpers over the OFX suites: property access, RAII images with
// depth-generic pixel access, and the conversion between OFX images (bottom-up rows, any
// bounds, any row stride -- possibly negative) and the protocol's top-down packed buffers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ofx_abi.h"
#include "session.h"

namespace lorafx {
namespace ofx {

// The host and the suites fetched in kOfxActionLoad (required ones are never null after a
// successful load; optional ones may be).
struct Suites {
  OfxHost* host = nullptr;
  const OfxPropertySuiteV1* prop = nullptr;
  const OfxImageEffectSuiteV1* effect = nullptr;
  const OfxParameterSuiteV1* param = nullptr;
  const OfxMemorySuiteV1* memory = nullptr;            // optional
  const OfxMultiThreadSuiteV1* thread = nullptr;       // optional
  const OfxMessageSuiteV1* message = nullptr;          // optional
  const OfxMessageSuiteV2* message2 = nullptr;         // optional (persistent messages)
  const OfxProgressSuiteV1* progress = nullptr;        // optional
  std::string host_name;   // kOfxPropName of the host, e.g. "uk.co.thefoundry.nuke"
  std::string host_label;  // kOfxPropLabel, e.g. "Nuke"
};
extern Suites g;

// Property getters that return `dflt` when the property is missing (hosts differ in what they
// implement; a missing optional property must never be fatal).
std::string prop_str(OfxPropertySetHandle h, const char* name, int index = 0,
                     const std::string& dflt = "");
int prop_int(OfxPropertySetHandle h, const char* name, int index = 0, int dflt = 0);
double prop_double(OfxPropertySetHandle h, const char* name, int index = 0, double dflt = 0.0);
void* prop_ptr(OfxPropertySetHandle h, const char* name, int index = 0);
int prop_dim(OfxPropertySetHandle h, const char* name);

enum class Depth { None, Byte, Short, Half, Float };
Depth depth_from(const std::string& s);
size_t depth_bytes(Depth d);
int components_count(const std::string& comps);  // RGBA 4, RGB 3, Alpha 1, else 0

// An image fetched from a clip; released in the destructor.
class Image {
 public:
  Image(OfxImageClipHandle clip, OfxTime time, const OfxRectD* region = nullptr);
  ~Image();
  Image(const Image&) = delete;
  Image& operator=(const Image&) = delete;

  bool valid() const { return handle_ != nullptr && data_ != nullptr && ncomp_ > 0; }
  const OfxRectI& bounds() const { return bounds_; }
  const OfxRectI& rod() const { return rod_; }
  int ncomp() const { return ncomp_; }
  Depth depth() const { return depth_; }
  const std::string& components() const { return components_; }
  const std::string& depth_name() const { return depth_name_; }

  bool contains(int x, int y) const {
    return x >= bounds_.x1 && x < bounds_.x2 && y >= bounds_.y1 && y < bounds_.y2;
  }
  // Pixel address; only valid when contains(x, y).
  unsigned char* pixel(int x, int y) const {
    return static_cast<unsigned char*>(data_) +
           static_cast<ptrdiff_t>(y - bounds_.y1) * row_bytes_ +
           static_cast<ptrdiff_t>(x - bounds_.x1) * ncomp_ * static_cast<ptrdiff_t>(depth_bytes(depth_));
  }
  float read(int x, int y, int c) const;          // component c as float (0 outside bounds)
  void write(int x, int y, int c, float v) const;  // component c (no-op outside bounds)
  // Colour/alpha by meaning, whatever the layout: RGB of an Alpha image is its alpha; the
  // alpha of an RGB image is 1.
  float red(int x, int y) const;
  float green(int x, int y) const;
  float blue(int x, int y) const;
  float alpha(int x, int y) const;

 private:
  OfxPropertySetHandle handle_ = nullptr;
  void* data_ = nullptr;
  OfxRectI bounds_{0, 0, 0, 0};
  OfxRectI rod_{0, 0, 0, 0};
  ptrdiff_t row_bytes_ = 0;
  int ncomp_ = 0;
  Depth depth_ = Depth::None;
  std::string components_, depth_name_;
};

// Pixels of `img` inside `window` (pixel coordinates, y up) as a top-down H x W x C f16 frame:
// RGB(A) for colour, one channel for a matte. Pixels outside the image's bounds are 0; NaN is
// sent as 0 and +/-inf or |v| > 65504 as +/-65504 (the server rejects non-finite pixels);
// `sanitized` counts such values. `any_nonzero` tells whether a single value was non-zero
// (Resolve hands black images for unconnected inputs).
EncodedFrame encode_colour(const Image& img, const OfxRectI& window, int frame, int* sanitized,
                           bool* any_nonzero);
EncodedFrame encode_matte(const Image& img, const OfxRectI& window, int frame, int* sanitized,
                          bool* any_nonzero);

}  // namespace ofx
}  // namespace lorafx
