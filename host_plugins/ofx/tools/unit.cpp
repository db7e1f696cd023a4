// Unit checks of the plug-in's protocol building blocks, driven by tests/test_ofx_abi.py:
//
//   lorafx_ofx_unit f2h IN.f32 OUT.u16     float32 -> IEEE half (round to nearest even)
//   lorafx_ofx_unit h2f OUT.f32            all 65536 half codes -> float32
//   lorafx_ofx_unit decode HEX             msgpack header -> "ok <description>" | "error <why>"
//   lorafx_ofx_unit encode-hello           hex of the hello request header the plug-in sends
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "client.h"
#include "half.h"
#include "wire_value.h"

using namespace lorafx;

namespace {

std::vector<unsigned char> read_all(const char* path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
}

bool write_all(const char* path, const void* data, size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  return static_cast<bool>(f);
}

std::vector<unsigned char> unhex(const std::string& hex) {
  std::vector<unsigned char> out;
  std::string digits;
  for (char c : hex)
    if (std::isxdigit(static_cast<unsigned char>(c))) digits += c;
  for (size_t i = 0; i + 1 < digits.size(); i += 2)
    out.push_back(static_cast<unsigned char>(std::stoi(digits.substr(i, 2), nullptr, 16)));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s f2h|h2f|decode|encode-hello ...\n", argv[0]);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "f2h" && argc == 4) {
    std::vector<unsigned char> in = read_all(argv[2]);
    const size_t n = in.size() / 4;
    std::vector<uint16_t> out(n);
    for (size_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, in.data() + i * 4, 4);
      out[i] = float_to_half(f);
    }
    return write_all(argv[3], out.data(), out.size() * 2) ? 0 : 1;
  }
  if (cmd == "h2f" && argc == 3) {
    std::vector<float> out(65536);
    for (uint32_t h = 0; h < 65536; ++h) out[h] = half_to_float(static_cast<uint16_t>(h));
    return write_all(argv[2], out.data(), out.size() * 4) ? 0 : 1;
  }
  if (cmd == "decode" && argc == 3) {
    std::vector<unsigned char> bytes = unhex(argv[2]);
    try {
      Value v = Value::unpack(bytes.data(), bytes.size());
      std::printf("ok %s\n", v.describe().c_str());
    } catch (const ProtocolError& e) {
      std::printf("error %s\n", e.what());
    }
    return 0;
  }
  if (cmd == "encode-hello") {
    Value body(Value::Map{{"client", "lorafx-ofx"}, {"client_version", "0.1"}});
    Value header(Value::Map{{"v", 1}, {"type", "hello"}, {"id", 1}, {"body", body}});
    std::string packed = header.pack();
    for (unsigned char c : packed) std::printf("%02x", c);
    std::printf("\n");
    return 0;
  }
  std::fprintf(stderr, "unknown command\n");
  return 2;
}
