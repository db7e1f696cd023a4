// ZeroMQ DEALER client for the lorafx wire protocol v1 (protocol/PROTOCOL.md).
//
// One Connection = one DEALER socket, used by one thread at a time (ZeroMQ sockets are not
// thread-safe; the plug-in gives each thread its own Connection). Every call has a deadline
// and is polled in short slices so a stop flag can interrupt it; a call that times out closes
// the socket (linger 0) and the next call opens a fresh one, so a dead or restarted server
// never wedges the client (§10). Replies to earlier, timed-out requests are discarded by id.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "wire_value.h"

namespace lorafx {

constexpr int kProtocolVersion = 1;

// The transport failed: no server, timeout, bad endpoint, interrupted by a stop request.
class TransportError : public std::runtime_error {
 public:
  enum class Kind { Unreachable, Timeout, BadEndpoint, Interrupted, Oversize };
  TransportError(Kind kind, const std::string& what) : std::runtime_error(what), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

// The server answered with an error reply (PROTOCOL.md §4), or a version mismatch.
class RemoteError : public std::runtime_error {
 public:
  RemoteError(std::string code, std::string message, Value details)
      : std::runtime_error(code + ": " + message),
        code_(std::move(code)),
        message_(std::move(message)),
        details_(std::move(details)) {}
  const std::string& code() const { return code_; }
  const std::string& message() const { return message_; }
  const Value& details() const { return details_; }

 private:
  std::string code_, message_;
  Value details_;
};

// A pixel buffer to send as one zmq frame; shared so ZeroMQ can send it without a copy.
using Bytes = std::shared_ptr<const std::vector<uint8_t>>;

// One received zmq frame (owned).
class Part {
 public:
  Part();
  ~Part();
  Part(const Part&) = delete;
  Part& operator=(const Part&) = delete;
  const uint8_t* data() const;
  size_t size() const;
  void* raw();  // the zmq_msg_t

 private:
  alignas(8) unsigned char msg_[64];
};

struct Reply {
  Value body;                                // the reply body (a map)
  std::vector<std::shared_ptr<Part>> parts;  // parts[k] is zmq frame k+1 (buf k+1)
};

// Limits the server announced in `hello` (PROTOCOL.md §6); defaults until then.
struct Limits {
  int64_t max_message_bytes = 2147483648LL;
  int64_t max_frame_bytes = 536870912LL;
  int64_t max_header_bytes = 1048576LL;
  int64_t max_buffers = 4096;
};

struct Timeouts {
  int connect_ms = 3000;  // how long a send may wait for a connection to the server
  int reply_ms = 30000;   // default wait for a reply
};

class Connection {
 public:
  explicit Connection(std::string endpoint, Timeouts timeouts = {});
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  const std::string& endpoint() const { return endpoint_; }
  const Limits& limits() const { return limits_; }
  void set_limits(const Limits& l) { limits_ = l; }
  // A stop flag checked every ~50 ms while sending or waiting (nullptr: none).
  void set_interrupt(const std::atomic<bool>* stop) { stop_ = stop; }

  // Sends `type` with `body` and buffers 1..N, waits for the matching reply.
  // Throws TransportError, RemoteError, ProtocolError.
  Reply call(const std::string& type, const Value& body, const std::vector<Bytes>& buffers = {},
             int timeout_ms = -1);

  // Drops the socket (linger 0); the next call reconnects.
  void reset();
  bool connected_once() const { return connected_once_; }

 private:
  void ensure_socket();
  void send(const std::string& header, const std::vector<Bytes>& buffers, int64_t deadline_ms);
  bool stop_requested() const { return stop_ && stop_->load(); }

  std::string endpoint_;
  Timeouts timeouts_;
  Limits limits_;
  const std::atomic<bool>* stop_ = nullptr;
  bool drain_monitor();  // true when a disconnection was reported
  void* socket_ = nullptr;
  void* monitor_ = nullptr;  // PAIR receiving the socket's disconnect events
  int64_t next_id_;
  bool connected_once_ = false;
};

// --- typed requests -------------------------------------------------------------------------

struct HelloInfo {
  std::string server_version, model, device, auth;
  Limits limits;
};

struct JobRecord {
  std::string job, kind, shot, state, stage, message;
  int64_t step = -1, total = -1, position = -1;
  double loss = -1.0, eta_s = -1.0;
  std::string error_code, error_message;
  Value result;
  bool terminal() const { return state == "done" || state == "failed" || state == "cancelled"; }
  static JobRecord from(const Value& v);
};

// A frame from result.fetch, validated against its descriptor: H x W x C of `dtype`, top row
// first (PROTOCOL.md §5).
struct RemoteFrame {
  int frame = 0;
  int height = 0, width = 0, channels = 0;
  std::string dtype;                    // "f16" | "f32" | "u8" | "u16"
  std::vector<std::string> names;       // channel names
  std::shared_ptr<Part> part;           // the pixels (kept alive by the part)
  size_t bytes() const { return part ? part->size() : 0; }
  float sample(size_t index) const;     // element `index` (row-major, interleaved) as float
  int channel_index(const std::string& name) const;  // -1 when absent
};

size_t dtype_size(const std::string& dtype);  // 0 for an unknown dtype

// Reads the descriptors of a reply body's `frames` and checks every buffer against them.
std::vector<RemoteFrame> frames_of(const Reply& reply, const char* role);

HelloInfo hello(Connection& c, const std::string& host_name, int timeout_ms);

std::string describe_error(const std::exception& e);  // one line for a status field

// Terminates the process-wide ZeroMQ context (and its I/O thread) when no Connection is left;
// returns false (and keeps it) otherwise. The plug-in calls it on kOfxActionUnload.
bool shutdown_transport();

}  // namespace lorafx
