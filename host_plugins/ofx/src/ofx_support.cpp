#include "ofx_support.h"

#include <cstring>

#include "half.h"

namespace lorafx {
namespace ofx {

Suites g;

std::string prop_str(OfxPropertySetHandle h, const char* name, int index, const std::string& dflt) {
  char* v = nullptr;
  if (!h || g.prop->propGetString(h, name, index, &v) != kOfxStatOK || !v) return dflt;
  return v;
}

int prop_int(OfxPropertySetHandle h, const char* name, int index, int dflt) {
  int v = 0;
  if (!h || g.prop->propGetInt(h, name, index, &v) != kOfxStatOK) return dflt;
  return v;
}

double prop_double(OfxPropertySetHandle h, const char* name, int index, double dflt) {
  double v = 0;
  if (!h || g.prop->propGetDouble(h, name, index, &v) != kOfxStatOK) return dflt;
  return v;
}

void* prop_ptr(OfxPropertySetHandle h, const char* name, int index) {
  void* v = nullptr;
  if (!h || g.prop->propGetPointer(h, name, index, &v) != kOfxStatOK) return nullptr;
  return v;
}

int prop_dim(OfxPropertySetHandle h, const char* name) {
  int n = 0;
  if (!h || g.prop->propGetDimension(h, name, &n) != kOfxStatOK) return 0;
  return n;
}

Depth depth_from(const std::string& s) {
  if (s == kOfxBitDepthFloat) return Depth::Float;
  if (s == kOfxBitDepthHalf) return Depth::Half;
  if (s == kOfxBitDepthShort) return Depth::Short;
  if (s == kOfxBitDepthByte) return Depth::Byte;
  return Depth::None;
}

size_t depth_bytes(Depth d) {
  switch (d) {
    case Depth::Float: return 4;
    case Depth::Half:
    case Depth::Short: return 2;
    case Depth::Byte: return 1;
    default: return 0;
  }
}

int components_count(const std::string& c) {
  if (c == kOfxImageComponentRGBA) return 4;
  if (c == kOfxImageComponentRGB) return 3;
  if (c == kOfxImageComponentAlpha) return 1;
  return 0;
}

// --- Image ------------------------------------------------------------------------------------

Image::Image(OfxImageClipHandle clip, OfxTime time, const OfxRectD* region) {
  if (!clip) return;
  OfxPropertySetHandle h = nullptr;
  if (g.effect->clipGetImage(clip, time, region, &h) != kOfxStatOK || !h) return;
  handle_ = h;
  data_ = prop_ptr(h, kOfxImagePropData);
  int b[4] = {0, 0, 0, 0};
  for (int i = 0; i < 4; ++i) b[i] = prop_int(h, kOfxImagePropBounds, i, 0);
  bounds_ = {b[0], b[1], b[2], b[3]};
  int r[4];
  for (int i = 0; i < 4; ++i) r[i] = prop_int(h, kOfxImagePropRegionOfDefinition, i, b[i]);
  rod_ = {r[0], r[1], r[2], r[3]};
  row_bytes_ = prop_int(h, kOfxImagePropRowBytes, 0, 0);
  components_ = prop_str(h, kOfxImageEffectPropComponents);
  depth_name_ = prop_str(h, kOfxImageEffectPropPixelDepth);
  ncomp_ = components_count(components_);
  depth_ = depth_from(depth_name_);
  if (depth_ == Depth::None || bounds_.x2 <= bounds_.x1 || bounds_.y2 <= bounds_.y1) ncomp_ = 0;
  // A row stride smaller than a row of pixels (in magnitude) is a host bug: refuse the image.
  const ptrdiff_t min_row = static_cast<ptrdiff_t>(bounds_.x2 - bounds_.x1) * ncomp_ *
                            static_cast<ptrdiff_t>(depth_bytes(depth_));
  if ((row_bytes_ >= 0 ? row_bytes_ : -row_bytes_) < min_row) ncomp_ = 0;
}

Image::~Image() {
  if (handle_) g.effect->clipReleaseImage(handle_);
}

float Image::read(int x, int y, int c) const {
  if (!contains(x, y) || c < 0 || c >= ncomp_) return 0.0f;
  const unsigned char* p = pixel(x, y);
  switch (depth_) {
    case Depth::Float: {
      float f;
      std::memcpy(&f, p + c * 4, 4);
      return f;
    }
    case Depth::Half: {
      uint16_t h;
      std::memcpy(&h, p + c * 2, 2);
      return half_to_float(h);
    }
    case Depth::Short: {
      uint16_t s;
      std::memcpy(&s, p + c * 2, 2);
      return s / 65535.0f;
    }
    case Depth::Byte: return p[c] / 255.0f;
    default: return 0.0f;
  }
}

void Image::write(int x, int y, int c, float v) const {
  if (!contains(x, y) || c < 0 || c >= ncomp_) return;
  unsigned char* p = pixel(x, y);
  switch (depth_) {
    case Depth::Float: std::memcpy(p + c * 4, &v, 4); break;
    case Depth::Half: {
      uint16_t h = float_to_half(v);
      std::memcpy(p + c * 2, &h, 2);
      break;
    }
    case Depth::Short: {
      float s = v <= 0.f ? 0.f : (v >= 1.f ? 65535.f : v * 65535.f + 0.5f);
      uint16_t u = static_cast<uint16_t>(s);
      std::memcpy(p + c * 2, &u, 2);
      break;
    }
    case Depth::Byte: {
      float s = v <= 0.f ? 0.f : (v >= 1.f ? 255.f : v * 255.f + 0.5f);
      p[c] = static_cast<unsigned char>(s);
      break;
    }
    default: break;
  }
}

float Image::red(int x, int y) const { return read(x, y, 0); }
float Image::green(int x, int y) const { return read(x, y, ncomp_ >= 3 ? 1 : 0); }
float Image::blue(int x, int y) const { return read(x, y, ncomp_ >= 3 ? 2 : 0); }
float Image::alpha(int x, int y) const {
  if (ncomp_ == 4) return read(x, y, 3);
  if (ncomp_ == 1) return read(x, y, 0);
  return contains(x, y) ? 1.0f : 0.0f;
}

// --- encoding for upload ----------------------------------------------------------------------

namespace {

inline uint16_t to_wire(float v, int* sanitized, bool* nonzero) {
  const float f = finite_for_half(v);
  if (f != v) ++*sanitized;
  if (f != 0.0f) *nonzero = true;
  return float_to_half(f);
}

}  // namespace

EncodedFrame encode_colour(const Image& img, const OfxRectI& window, int frame, int* sanitized,
                           bool* any_nonzero) {
  EncodedFrame f;
  f.frame = frame;
  f.width = window.x2 - window.x1;
  f.height = window.y2 - window.y1;
  f.channels = img.ncomp() == 3 ? 3 : 4;
  f.names = f.channels == 3 ? std::vector<std::string>{"R", "G", "B"}
                            : std::vector<std::string>{"R", "G", "B", "A"};
  f.dtype = "f16";
  auto buf = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(f.width) * f.height *
                                                    f.channels * 2);
  uint16_t* out = reinterpret_cast<uint16_t*>(buf->data());
  *any_nonzero = false;
  for (int row = 0; row < f.height; ++row) {
    const int y = window.y2 - 1 - row;  // top row first
    uint16_t* o = out + static_cast<size_t>(row) * f.width * f.channels;
    for (int x = window.x1; x < window.x2; ++x) {
      *o++ = to_wire(img.red(x, y), sanitized, any_nonzero);
      *o++ = to_wire(img.green(x, y), sanitized, any_nonzero);
      *o++ = to_wire(img.blue(x, y), sanitized, any_nonzero);
      if (f.channels == 4) *o++ = to_wire(img.contains(x, y) ? img.alpha(x, y) : 0.0f, sanitized, any_nonzero);
    }
  }
  f.data = std::move(buf);
  return f;
}

EncodedFrame encode_matte(const Image& img, const OfxRectI& window, int frame, int* sanitized,
                          bool* any_nonzero) {
  EncodedFrame f;
  f.frame = frame;
  f.width = window.x2 - window.x1;
  f.height = window.y2 - window.y1;
  f.channels = 1;
  f.names = {"A"};
  f.dtype = "f16";
  auto buf = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(f.width) * f.height * 2);
  uint16_t* out = reinterpret_cast<uint16_t*>(buf->data());
  // The matte is the alpha of RGBA/Alpha images, the red channel of RGB ones.
  const bool use_red = img.ncomp() == 3;
  *any_nonzero = false;
  for (int row = 0; row < f.height; ++row) {
    const int y = window.y2 - 1 - row;
    uint16_t* o = out + static_cast<size_t>(row) * f.width;
    for (int x = window.x1; x < window.x2; ++x)
      *o++ = to_wire(use_red ? img.red(x, y) : (img.contains(x, y) ? img.alpha(x, y) : 0.0f),
                     sanitized, any_nonzero);
  }
  f.data = std::move(buf);
  return f;
}

}  // namespace ofx
}  // namespace lorafx
