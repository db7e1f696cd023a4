// A small dynamically typed value for msgpack headers of the lorafx wire protocol
// (protocol/PROTOCOL.md §2-3): nil, bool, int, float, str, array, map with str keys.
//
// Requests are built as Values and packed with msgpack-cxx; replies are unpacked with
// msgpack-cxx (bounded by the protocol's header limit) and converted to Values, so the rest of
// the plug-in reads them through checked accessors that throw ProtocolError instead of
// crashing on a server that sends something unexpected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace lorafx {

// A malformed or unexpected message (maps to the protocol's `protocol_error`).
class ProtocolError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Value {
 public:
  enum class Type { Nil, Bool, Int, UInt, Float, Str, Array, Map };
  using Array = std::vector<Value>;
  using Map = std::map<std::string, Value>;

  Value() = default;  // nil
  Value(std::nullptr_t) {}
  Value(bool b) : type_(Type::Bool), b_(b) {}
  Value(int v) : type_(Type::Int), i_(v) {}
  Value(long v) : type_(Type::Int), i_(v) {}
  Value(long long v) : type_(Type::Int), i_(v) {}
  Value(unsigned v) : type_(Type::Int), i_(v) {}
  Value(unsigned long v) { set_unsigned(v); }
  Value(unsigned long long v) { set_unsigned(v); }
  Value(double v) : type_(Type::Float), f_(v) {}
  Value(const char* s) : type_(Type::Str), s_(std::make_shared<std::string>(s)) {}
  Value(std::string s) : type_(Type::Str), s_(std::make_shared<std::string>(std::move(s))) {}
  Value(Array a) : type_(Type::Array), a_(std::make_shared<Array>(std::move(a))) {}
  Value(Map m) : type_(Type::Map), m_(std::make_shared<Map>(std::move(m))) {}

  Type type() const { return type_; }
  bool is_nil() const { return type_ == Type::Nil; }
  bool is_int() const { return type_ == Type::Int || type_ == Type::UInt; }
  bool is_str() const { return type_ == Type::Str; }
  bool is_map() const { return type_ == Type::Map; }
  bool is_array() const { return type_ == Type::Array; }

  // Checked accessors: `what` names the field in the ProtocolError message.
  bool as_bool(const char* what = "value") const;
  int64_t as_int(const char* what = "value") const;
  double as_float(const char* what = "value") const;  // ints are accepted (PROTOCOL.md §2)
  const std::string& as_str(const char* what = "value") const;
  const Array& as_array(const char* what = "value") const;
  const Map& as_map(const char* what = "value") const;

  // Map lookup: nullptr when this is not a map or the key is absent.
  const Value* find(const std::string& key) const;
  // Map lookup that must succeed.
  const Value& at(const std::string& key) const;
  // Optional typed getters: the default when absent or nil.
  std::string get_str(const std::string& key, const std::string& dflt = "") const;
  int64_t get_int(const std::string& key, int64_t dflt = 0) const;
  double get_float(const std::string& key, double dflt = 0.0) const;

  std::string describe() const;  // short human-readable rendering for messages and logs

  // msgpack encoding of this value (packer writes str keys / str strings, never bin/ext).
  std::string pack() const;
  // Decode exactly one msgpack object occupying all of [data, data+size): trailing bytes, ext
  // types, bin strings, non-str map keys and nesting deeper than 32 are ProtocolErrors.
  static Value unpack(const void* data, size_t size);

 private:
  void set_unsigned(unsigned long long v) {
    if (v <= static_cast<unsigned long long>(INT64_MAX)) {
      type_ = Type::Int;
      i_ = static_cast<int64_t>(v);
    } else {
      type_ = Type::UInt;
      u_ = v;
    }
  }
  Type type_ = Type::Nil;
  bool b_ = false;
  int64_t i_ = 0;
  uint64_t u_ = 0;
  double f_ = 0.0;
  std::shared_ptr<std::string> s_;
  std::shared_ptr<Array> a_;
  std::shared_ptr<Map> m_;

  friend struct ValuePacker;
};

}  // namespace lorafx
