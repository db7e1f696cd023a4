#include "client.h"

#include <zmq.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>

#include "half.h"

namespace lorafx {

namespace {

// One ZeroMQ context for the plug-in, created on first use and terminated on kOfxActionUnload
// (shutdown_transport) once no Connection is left: its I/O thread must be gone before a host
// unloads the binary. Sockets are always closed with linger 0, so termination never waits on
// unsent messages.
std::mutex g_ctx_mu;
void* g_ctx = nullptr;
std::atomic<int> g_live_connections{0};

void* zmq_context() {
  std::lock_guard<std::mutex> lk(g_ctx_mu);
  if (!g_ctx) {
    g_ctx = zmq_ctx_new();
    if (g_ctx) {
      zmq_ctx_set(g_ctx, ZMQ_IO_THREADS, 1);
      zmq_ctx_set(g_ctx, ZMQ_BLOCKY, 0);
    }
  }
  return g_ctx;
}

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

constexpr int kSliceMs = 50;

void free_shared(void* /*data*/, void* hint) { delete static_cast<Bytes*>(hint); }

std::string zerr() { return zmq_strerror(zmq_errno()); }

}  // namespace

// ---------------------------------------------------------------------------------------------

Part::Part() {
  static_assert(sizeof(zmq_msg_t) <= sizeof(msg_), "zmq_msg_t larger than expected");
  zmq_msg_init(reinterpret_cast<zmq_msg_t*>(msg_));
}
Part::~Part() { zmq_msg_close(reinterpret_cast<zmq_msg_t*>(msg_)); }
const uint8_t* Part::data() const {
  return static_cast<const uint8_t*>(
      zmq_msg_data(const_cast<zmq_msg_t*>(reinterpret_cast<const zmq_msg_t*>(msg_))));
}
size_t Part::size() const {
  return zmq_msg_size(const_cast<zmq_msg_t*>(reinterpret_cast<const zmq_msg_t*>(msg_)));
}
void* Part::raw() { return msg_; }

// ---------------------------------------------------------------------------------------------

Connection::Connection(std::string endpoint, Timeouts timeouts)
    : endpoint_(std::move(endpoint)), timeouts_(timeouts) {
  ++g_live_connections;
  // Request ids start at a random point so replies meant for another Connection (or an earlier
  // run of the host) can never be mistaken for ours.
  std::random_device rd;
  next_id_ = static_cast<int64_t>((static_cast<uint64_t>(rd()) << 20) % (1ULL << 50)) + 1;
}

Connection::~Connection() {
  reset();
  --g_live_connections;
}

bool shutdown_transport() {
  std::lock_guard<std::mutex> lk(g_ctx_mu);
  if (!g_ctx) return true;
  if (g_live_connections.load() != 0) return false;  // a leaked instance: leave it, never hang
  zmq_ctx_term(g_ctx);
  g_ctx = nullptr;
  return true;
}

void Connection::reset() {
  if (monitor_) {
    if (socket_) zmq_socket_monitor(socket_, nullptr, 0);
    int linger = 0;
    zmq_setsockopt(monitor_, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(monitor_);
    monitor_ = nullptr;
  }
  if (socket_) {
    int linger = 0;
    zmq_setsockopt(socket_, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(socket_);
    socket_ = nullptr;
  }
}

void Connection::ensure_socket() {
  if (socket_) return;
  void* ctx = zmq_context();
  if (!ctx) throw TransportError(TransportError::Kind::Unreachable, "cannot create a ZeroMQ context");
  void* s = zmq_socket(ctx, ZMQ_DEALER);
  if (!s) throw TransportError(TransportError::Kind::Unreachable, "cannot create a socket: " + zerr());
  int linger = 0, immediate = 1, reconnect_max = 2000, connect_timeout = timeouts_.connect_ms;
  int64_t maxmsg = limits_.max_frame_bytes > limits_.max_header_bytes ? limits_.max_frame_bytes
                                                                      : limits_.max_header_bytes;
  zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
  zmq_setsockopt(s, ZMQ_IMMEDIATE, &immediate, sizeof immediate);
  zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
  zmq_setsockopt(s, ZMQ_RECONNECT_IVL_MAX, &reconnect_max, sizeof reconnect_max);
  zmq_setsockopt(s, ZMQ_CONNECT_TIMEOUT, &connect_timeout, sizeof connect_timeout);
  if (zmq_connect(s, endpoint_.c_str()) != 0) {
    std::string why = zerr();
    zmq_close(s);
    throw TransportError(TransportError::Kind::BadEndpoint,
                         "invalid server address '" + endpoint_ + "': " + why);
  }
  socket_ = s;
  // Watch the connection: when the server goes away (crash, restart) the reply to a pending
  // request is lost for good, so the call fails at once instead of waiting for its timeout.
  static std::atomic<unsigned long long> serial{0};
  char addr[96];
  std::snprintf(addr, sizeof addr, "inproc://lorafx-ofx-monitor-%p-%llu", static_cast<void*>(this),
                serial.fetch_add(1));
  if (zmq_socket_monitor(s, addr, ZMQ_EVENT_DISCONNECTED) == 0) {
    void* m = zmq_socket(ctx, ZMQ_PAIR);
    int linger0 = 0;
    if (m) zmq_setsockopt(m, ZMQ_LINGER, &linger0, sizeof linger0);
    if (m && zmq_connect(m, addr) == 0) {
      monitor_ = m;
    } else if (m) {
      zmq_close(m);
    }
  }
}

bool Connection::drain_monitor() {
  bool disconnected = false;
  if (!monitor_) return false;
  for (;;) {
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, monitor_, ZMQ_DONTWAIT) < 0) {
      zmq_msg_close(&msg);
      return disconnected;
    }
    if (zmq_msg_size(&msg) >= 2) {
      uint16_t event;
      std::memcpy(&event, zmq_msg_data(&msg), 2);
      if (event == ZMQ_EVENT_DISCONNECTED) disconnected = true;
    }
    zmq_msg_close(&msg);  // (the endpoint frame that follows is read and dropped the same way)
  }
}

void Connection::send(const std::string& header, const std::vector<Bytes>& buffers,
                      int64_t deadline_ms) {
  // Wait until the socket can take the message: with ZMQ_IMMEDIATE a DEALER is only writable
  // once a connection to the server exists, so "no server" shows up here, quickly.
  const int64_t connect_deadline = std::min(deadline_ms, now_ms() + timeouts_.connect_ms);
  for (;;) {
    if (stop_requested()) throw TransportError(TransportError::Kind::Interrupted, "interrupted");
    zmq_pollitem_t item{socket_, 0, ZMQ_POLLOUT, 0};
    int64_t left = connect_deadline - now_ms();
    if (left <= 0) {
      reset();
      throw TransportError(TransportError::Kind::Unreachable,
                           "server unreachable at " + endpoint_ + " (no connection within " +
                               std::to_string(timeouts_.connect_ms / 1000.0).substr(0, 4) + " s)");
    }
    int rc = zmq_poll(&item, 1, static_cast<long>(std::min<int64_t>(left, kSliceMs)));
    if (rc < 0 && zmq_errno() != EINTR) {
      std::string why = zerr();
      reset();
      throw TransportError(TransportError::Kind::Unreachable, "poll failed: " + why);
    }
    if (rc > 0 && (item.revents & ZMQ_POLLOUT)) break;
  }
  const int more = buffers.empty() ? 0 : ZMQ_SNDMORE;
  if (zmq_send(socket_, header.data(), header.size(), ZMQ_DONTWAIT | more) < 0) {
    std::string why = zerr();
    reset();
    throw TransportError(TransportError::Kind::Unreachable, "send failed: " + why);
  }
  // Once the first part is queued the rest of a multipart message is accepted atomically.
  for (size_t i = 0; i < buffers.size(); ++i) {
    zmq_msg_t msg;
    const Bytes& b = buffers[i];
    auto* hint = new Bytes(b);  // keeps the pixels alive until ZeroMQ has sent them
    void* data = const_cast<uint8_t*>(b->data());
    if (zmq_msg_init_data(&msg, data, b->size(), free_shared, hint) != 0) {
      delete hint;
      reset();
      throw TransportError(TransportError::Kind::Unreachable, "zmq_msg_init_data: " + zerr());
    }
    const int flags = ZMQ_DONTWAIT | (i + 1 < buffers.size() ? ZMQ_SNDMORE : 0);
    if (zmq_msg_send(&msg, socket_, flags) < 0) {
      std::string why = zerr();
      zmq_msg_close(&msg);
      reset();
      throw TransportError(TransportError::Kind::Unreachable, "send failed: " + why);
    }
  }
}

Reply Connection::call(const std::string& type, const Value& body,
                       const std::vector<Bytes>& buffers, int timeout_ms) {
  if (timeout_ms < 0) timeout_ms = timeouts_.reply_ms;
  const int64_t deadline = now_ms() + timeout_ms;
  if (static_cast<int64_t>(buffers.size()) > limits_.max_buffers)
    throw TransportError(TransportError::Kind::Oversize, "too many buffers in one message");
  int64_t total = 0;
  for (const Bytes& b : buffers) {
    if (static_cast<int64_t>(b->size()) > limits_.max_frame_bytes)
      throw TransportError(TransportError::Kind::Oversize,
                           "a frame of " + std::to_string(b->size()) +
                               " bytes exceeds the server's max_frame_bytes");
    total += static_cast<int64_t>(b->size());
  }
  const int64_t id = next_id_++;
  Value header(Value::Map{{"v", kProtocolVersion}, {"type", type}, {"id", id}, {"body", body}});
  const std::string packed = header.pack();
  if (static_cast<int64_t>(packed.size()) > limits_.max_header_bytes ||
      total + static_cast<int64_t>(packed.size()) > limits_.max_message_bytes)
    throw TransportError(TransportError::Kind::Oversize, "message exceeds the server's limits");

  ensure_socket();
  drain_monitor();  // disconnections before this request do not concern it
  send(packed, buffers, deadline);

  for (;;) {
    if (stop_requested()) {
      reset();
      throw TransportError(TransportError::Kind::Interrupted, "interrupted");
    }
    int64_t left = deadline - now_ms();
    if (left <= 0) {
      reset();  // a fresh socket next time: never wait on a wedged connection (§10)
      throw TransportError(TransportError::Kind::Timeout,
                           "no reply to " + type + " from " + endpoint_ + " within " +
                               std::to_string(timeout_ms / 1000) + " s");
    }
    zmq_pollitem_t items[2] = {{socket_, 0, ZMQ_POLLIN, 0}, {monitor_, 0, ZMQ_POLLIN, 0}};
    int rc = zmq_poll(items, monitor_ ? 2 : 1, static_cast<long>(std::min<int64_t>(left, kSliceMs)));
    if (rc < 0) {
      if (zmq_errno() == EINTR) continue;
      std::string why = zerr();
      reset();
      throw TransportError(TransportError::Kind::Unreachable, "poll failed: " + why);
    }
    if (monitor_ && (items[1].revents & ZMQ_POLLIN) && !(items[0].revents & ZMQ_POLLIN) &&
        drain_monitor()) {
      reset();
      throw TransportError(TransportError::Kind::Unreachable,
                           "lost the connection to the server at " + endpoint_ + " during " + type);
    }
    if (rc == 0 || !(items[0].revents & ZMQ_POLLIN)) continue;

    // Read one whole multipart message.
    std::vector<std::shared_ptr<Part>> parts;
    int64_t received = 0;
    for (;;) {
      auto p = std::make_shared<Part>();
      if (zmq_msg_recv(static_cast<zmq_msg_t*>(p->raw()), socket_, ZMQ_DONTWAIT) < 0) {
        if (zmq_errno() == EAGAIN && parts.empty()) break;  // spurious wake-up
        std::string why = zerr();
        reset();
        throw TransportError(TransportError::Kind::Unreachable, "receive failed: " + why);
      }
      received += static_cast<int64_t>(p->size());
      parts.push_back(p);
      int more = 0;
      size_t more_size = sizeof more;
      zmq_getsockopt(socket_, ZMQ_RCVMORE, &more, &more_size);
      if (!more) break;
    }
    if (parts.empty()) continue;
    if (received > limits_.max_message_bytes ||
        static_cast<int64_t>(parts.size()) - 1 > limits_.max_buffers) {
      continue;  // oversize: not ours to hold in memory; the request will time out
    }
    if (static_cast<int64_t>(parts[0]->size()) > limits_.max_header_bytes) continue;
    Value head;
    try {
      head = Value::unpack(parts[0]->data(), parts[0]->size());
    } catch (const ProtocolError&) {
      continue;  // garbage from the wire: ignore, the request times out if nothing better comes
    }
    if (!head.is_map()) continue;
    const Value* v = head.find("v");
    if (v && v->is_int() && v->as_int() != kProtocolVersion) {
      throw RemoteError("version_mismatch",
                        "the server speaks protocol version " + std::to_string(v->as_int()) +
                            ", this plug-in speaks version " + std::to_string(kProtocolVersion),
                        Value::Map{{"server_version", *v}, {"client_version", kProtocolVersion}});
    }
    const std::string mtype = head.get_str("type");
    if (mtype == "event") continue;  // we poll job.status; unsolicited events are not needed
    if (mtype != "reply") continue;
    const Value* re = head.find("re");
    const bool ok = head.find("ok") && head.at("ok").type() == Value::Type::Bool &&
                    head.at("ok").as_bool();
    const bool ours = re && re->is_int() && re->as_int() == id;
    const bool anonymous_error = (!re || re->is_nil()) && !ok;  // §4: fail the oldest pending
    if (!ours && !anonymous_error) continue;  // a stale reply to a timed-out request
    connected_once_ = true;
    if (!ok) {
      const Value* err = head.find("error");
      std::string code = "internal", message = "error reply without details";
      Value details;
      if (err && err->is_map()) {
        code = err->get_str("code", "internal");
        message = err->get_str("message", "");
        if (const Value* d = err->find("details")) details = *d;
      }
      throw RemoteError(code, message, details);
    }
    Reply r;
    if (const Value* b = head.find("body")) r.body = *b;
    if (!r.body.is_map()) r.body = Value(Value::Map{});
    r.parts.assign(parts.begin() + 1, parts.end());
    return r;
  }
}

// --- typed helpers --------------------------------------------------------------------------

JobRecord JobRecord::from(const Value& v) {
  JobRecord r;
  if (!v.is_map()) throw ProtocolError("job record is not a map");
  r.job = v.get_str("job");
  r.kind = v.get_str("kind");
  r.shot = v.get_str("shot");
  r.state = v.get_str("state");
  r.stage = v.get_str("stage");
  r.message = v.get_str("message");
  r.step = v.get_int("step", -1);
  r.total = v.get_int("total", -1);
  r.position = v.get_int("position", -1);
  r.loss = v.get_float("loss", -1.0);
  r.eta_s = v.get_float("eta_s", -1.0);
  if (const Value* e = v.find("error"); e && e->is_map()) {
    r.error_code = e->get_str("code", "internal");
    r.error_message = e->get_str("message");
  }
  if (const Value* res = v.find("result")) r.result = *res;
  if (r.job.empty() || r.state.empty()) throw ProtocolError("job record without job/state");
  return r;
}

size_t dtype_size(const std::string& dtype) {
  if (dtype == "f16" || dtype == "u16") return 2;
  if (dtype == "f32") return 4;
  if (dtype == "u8") return 1;
  return 0;
}

float RemoteFrame::sample(size_t index) const {
  const uint8_t* p = part->data();
  if (dtype == "f16") {
    uint16_t h;
    std::memcpy(&h, p + index * 2, 2);
    return half_to_float(h);
  }
  if (dtype == "f32") {
    float f;
    std::memcpy(&f, p + index * 4, 4);
    return f;
  }
  if (dtype == "u16") {
    uint16_t u;
    std::memcpy(&u, p + index * 2, 2);
    return u / 65535.0f;
  }
  return p[index] / 255.0f;  // u8
}

int RemoteFrame::channel_index(const std::string& name) const {
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) return static_cast<int>(i);
  return -1;
}

std::vector<RemoteFrame> frames_of(const Reply& reply, const char* role) {
  std::vector<RemoteFrame> out;
  const Value* frames = reply.body.find("frames");
  if (!frames) return out;
  for (const Value& d : frames->as_array("body.frames")) {
    RemoteFrame f;
    const int64_t n = d.at("frame").as_int("frame");
    if (n < INT32_MIN || n > INT32_MAX) throw ProtocolError("frame number out of range");
    f.frame = static_cast<int>(n);
    if (role && d.find("role") && d.get_str("role") != role)
      throw ProtocolError("descriptor role '" + d.get_str("role") + "', expected " + role);
    if (!d.find("buf")) throw ProtocolError("result frame " + std::to_string(n) + " has no buffer");
    const int64_t buf = d.at("buf").as_int("buf");
    if (buf < 1 || buf > static_cast<int64_t>(reply.parts.size()))
      throw ProtocolError("descriptor buf " + std::to_string(buf) + " names no buffer frame");
    f.dtype = d.at("dtype").as_str("dtype");
    const size_t item = dtype_size(f.dtype);
    if (!item) throw ProtocolError("unknown dtype '" + f.dtype + "'");
    const auto& shape = d.at("shape").as_array("shape");
    if (shape.size() != 3) throw ProtocolError("shape must be [H, W, C]");
    const int64_t h = shape[0].as_int("shape[0]"), w = shape[1].as_int("shape[1]"),
                  c = shape[2].as_int("shape[2]");
    if (h < 1 || h > 32768 || w < 1 || w > 32768 || c < 1 || c > 16)
      throw ProtocolError("shape out of range");
    f.height = static_cast<int>(h);
    f.width = static_cast<int>(w);
    f.channels = static_cast<int>(c);
    f.part = reply.parts[static_cast<size_t>(buf - 1)];
    if (f.part->size() != static_cast<size_t>(h * w * c) * item)
      throw ProtocolError("buffer size of frame " + std::to_string(n) + " does not match its shape");
    if (const Value* ch = d.find("channels"); ch && !ch->is_nil()) {
      for (const Value& name : ch->as_array("channels")) f.names.push_back(name.as_str("channel"));
      if (static_cast<int64_t>(f.names.size()) != c) throw ProtocolError("channel count mismatch");
    } else if (c == 1) {
      f.names = {"Y"};
    } else if (c == 3) {
      f.names = {"R", "G", "B"};
    } else if (c == 4) {
      f.names = {"R", "G", "B", "A"};
    } else {
      throw ProtocolError("unnamed channels for C=" + std::to_string(c));
    }
    out.push_back(std::move(f));
  }
  return out;
}

HelloInfo hello(Connection& c, const std::string& host_name, int timeout_ms) {
  Value body(Value::Map{{"client", "lorafx-ofx"},
                        {"client_version", LORAFX_OFX_VERSION_STRING},
                        {"host", host_name.substr(0, 128)}});
  Reply r = c.call("hello", body, {}, timeout_ms);
  HelloInfo h;
  h.server_version = r.body.get_str("server_version");
  h.model = r.body.get_str("model");
  h.device = r.body.get_str("device");
  h.auth = r.body.get_str("auth");
  h.limits.max_message_bytes = r.body.get_int("max_message_bytes", h.limits.max_message_bytes);
  h.limits.max_frame_bytes = r.body.get_int("max_frame_bytes", h.limits.max_frame_bytes);
  h.limits.max_header_bytes = r.body.get_int("max_header_bytes", h.limits.max_header_bytes);
  h.limits.max_buffers = r.body.get_int("max_buffers", h.limits.max_buffers);
  const int64_t version = r.body.get_int("protocol_version", kProtocolVersion);
  if (version != kProtocolVersion)
    throw RemoteError("version_mismatch",
                      "the server speaks protocol version " + std::to_string(version) +
                          ", this plug-in speaks version " + std::to_string(kProtocolVersion),
                      Value());
  c.set_limits(h.limits);
  return h;
}

std::string describe_error(const std::exception& e) {
  if (auto* t = dynamic_cast<const TransportError*>(&e)) {
    switch (t->kind()) {
      case TransportError::Kind::Unreachable: return std::string("server down: ") + e.what();
      case TransportError::Kind::Timeout: return std::string("server not answering: ") + e.what();
      default: return e.what();
    }
  }
  if (auto* r = dynamic_cast<const RemoteError*>(&e)) return r->code() + ": " + r->message();
  if (dynamic_cast<const ProtocolError*>(&e)) return std::string("protocol error: ") + e.what();
  return e.what();
}

}  // namespace lorafx
