#include "wire_value.h"

#include <cmath>
#include <sstream>

#ifndef MSGPACK_NO_BOOST
#define MSGPACK_NO_BOOST 1
#endif
#include <msgpack.hpp>

namespace lorafx {

namespace {

const char* type_name(Value::Type t) {
  switch (t) {
    case Value::Type::Nil: return "nil";
    case Value::Type::Bool: return "bool";
    case Value::Type::Int:
    case Value::Type::UInt: return "int";
    case Value::Type::Float: return "float";
    case Value::Type::Str: return "str";
    case Value::Type::Array: return "array";
    case Value::Type::Map: return "map";
  }
  return "?";
}

[[noreturn]] void type_error(const char* what, const char* want, Value::Type got) {
  throw ProtocolError(std::string(what) + ": expected " + want + ", got " + type_name(got));
}

constexpr int kMaxDepth = 32;

Value from_object(const msgpack::object& o, int depth) {
  if (depth > kMaxDepth) throw ProtocolError("msgpack value nested deeper than 32 levels");
  switch (o.type) {
    case msgpack::type::NIL: return Value();
    case msgpack::type::BOOLEAN: return Value(o.via.boolean);
    case msgpack::type::POSITIVE_INTEGER:
      return Value(static_cast<unsigned long long>(o.via.u64));
    case msgpack::type::NEGATIVE_INTEGER: return Value(static_cast<long long>(o.via.i64));
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return Value(o.via.f64);
    case msgpack::type::STR: return Value(std::string(o.via.str.ptr, o.via.str.size));
    case msgpack::type::ARRAY: {
      Value::Array a;
      a.reserve(o.via.array.size);
      for (uint32_t i = 0; i < o.via.array.size; ++i)
        a.push_back(from_object(o.via.array.ptr[i], depth + 1));
      return Value(std::move(a));
    }
    case msgpack::type::MAP: {
      Value::Map m;
      for (uint32_t i = 0; i < o.via.map.size; ++i) {
        const msgpack::object_kv& kv = o.via.map.ptr[i];
        if (kv.key.type != msgpack::type::STR)
          throw ProtocolError("msgpack map key is not a str (PROTOCOL.md §2)");
        m[std::string(kv.key.via.str.ptr, kv.key.via.str.size)] = from_object(kv.val, depth + 1);
      }
      return Value(std::move(m));
    }
    case msgpack::type::BIN: throw ProtocolError("msgpack bin value where str was expected");
    case msgpack::type::EXT: throw ProtocolError("msgpack ext types are not allowed");
  }
  throw ProtocolError("unknown msgpack type");
}

}  // namespace

struct ValuePacker {
  static void pack(msgpack::packer<msgpack::sbuffer>& pk, const Value& v) {
    switch (v.type_) {
      case Value::Type::Nil: pk.pack_nil(); break;
      case Value::Type::Bool: v.b_ ? pk.pack_true() : pk.pack_false(); break;
      case Value::Type::Int: pk.pack_int64(v.i_); break;
      case Value::Type::UInt: pk.pack_uint64(v.u_); break;
      case Value::Type::Float: pk.pack_double(v.f_); break;
      case Value::Type::Str:
        pk.pack_str(static_cast<uint32_t>(v.s_->size()));
        pk.pack_str_body(v.s_->data(), static_cast<uint32_t>(v.s_->size()));
        break;
      case Value::Type::Array:
        pk.pack_array(static_cast<uint32_t>(v.a_->size()));
        for (const Value& e : *v.a_) pack(pk, e);
        break;
      case Value::Type::Map:
        pk.pack_map(static_cast<uint32_t>(v.m_->size()));
        for (const auto& kv : *v.m_) {
          pk.pack_str(static_cast<uint32_t>(kv.first.size()));
          pk.pack_str_body(kv.first.data(), static_cast<uint32_t>(kv.first.size()));
          pack(pk, kv.second);
        }
        break;
    }
  }
};

bool Value::as_bool(const char* what) const {
  if (type_ != Type::Bool) type_error(what, "bool", type_);
  return b_;
}

int64_t Value::as_int(const char* what) const {
  if (type_ == Type::Int) return i_;
  if (type_ == Type::UInt) throw ProtocolError(std::string(what) + ": integer out of range");
  type_error(what, "int", type_);
}

double Value::as_float(const char* what) const {
  if (type_ == Type::Float) return f_;
  if (type_ == Type::Int) return static_cast<double>(i_);
  if (type_ == Type::UInt) return static_cast<double>(u_);
  type_error(what, "float", type_);
}

const std::string& Value::as_str(const char* what) const {
  if (type_ != Type::Str) type_error(what, "str", type_);
  return *s_;
}

const Value::Array& Value::as_array(const char* what) const {
  if (type_ != Type::Array) type_error(what, "array", type_);
  return *a_;
}

const Value::Map& Value::as_map(const char* what) const {
  if (type_ != Type::Map) type_error(what, "map", type_);
  return *m_;
}

const Value* Value::find(const std::string& key) const {
  if (type_ != Type::Map) return nullptr;
  auto it = m_->find(key);
  return it == m_->end() ? nullptr : &it->second;
}

const Value& Value::at(const std::string& key) const {
  const Value* v = find(key);
  if (!v) throw ProtocolError("missing field '" + key + "'");
  return *v;
}

std::string Value::get_str(const std::string& key, const std::string& dflt) const {
  const Value* v = find(key);
  return (v && !v->is_nil()) ? v->as_str(key.c_str()) : dflt;
}

int64_t Value::get_int(const std::string& key, int64_t dflt) const {
  const Value* v = find(key);
  return (v && !v->is_nil()) ? v->as_int(key.c_str()) : dflt;
}

double Value::get_float(const std::string& key, double dflt) const {
  const Value* v = find(key);
  return (v && !v->is_nil()) ? v->as_float(key.c_str()) : dflt;
}

std::string Value::describe() const {
  std::ostringstream os;
  switch (type_) {
    case Type::Nil: os << "nil"; break;
    case Type::Bool: os << (b_ ? "true" : "false"); break;
    case Type::Int: os << i_; break;
    case Type::UInt: os << u_; break;
    case Type::Float: os << f_; break;
    case Type::Str: os << *s_; break;
    case Type::Array: {
      os << "[";
      bool first = true;
      for (const Value& e : *a_) {
        os << (first ? "" : ", ") << e.describe();
        first = false;
      }
      os << "]";
      break;
    }
    case Type::Map: {
      os << "{";
      bool first = true;
      for (const auto& kv : *m_) {
        os << (first ? "" : ", ") << kv.first << ": " << kv.second.describe();
        first = false;
      }
      os << "}";
      break;
    }
  }
  return os.str();
}

std::string Value::pack() const {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  ValuePacker::pack(pk, *this);
  return std::string(buf.data(), buf.size());
}

Value Value::unpack(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  std::size_t off = 0;
  msgpack::object_handle oh;
  try {
    // Limits: the header is at most max_header_bytes, so no container can legitimately hold
    // more entries than it has bytes; msgpack-cxx rejects anything declaring more.
    const std::size_t n = size;
    msgpack::unpack_limit limit(n, n, n, n, n, kMaxDepth + 1);
    oh = msgpack::unpack(p, size, off, nullptr, nullptr, limit);
  } catch (const msgpack::unpack_error& e) {
    throw ProtocolError(std::string("undecodable msgpack header: ") + e.what());
  } catch (const std::exception& e) {
    throw ProtocolError(std::string("undecodable msgpack header: ") + e.what());
  }
  if (off != size) throw ProtocolError("trailing bytes after the msgpack header");
  return from_object(oh.get(), 0);
}

}  // namespace lorafx
