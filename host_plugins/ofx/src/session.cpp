#include "session.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace lorafx {

namespace {

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

size_t cache_capacity_from_env() {
  const char* mb = std::getenv("LORAFX_OFX_CACHE_MB");
  long long v = mb ? std::atoll(mb) : 0;
  if (v <= 0) v = 2048;
  return static_cast<size_t>(v) * 1024 * 1024;
}

std::string eta_text(double eta_s) {
  if (eta_s < 0 || !std::isfinite(eta_s)) return "";
  long s = std::lround(eta_s);
  char buf[48];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, ", ETA %ldh%02ldm", s / 3600, (s % 3600) / 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, ", ETA %ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, ", ETA %lds", s);
  return buf;
}

constexpr int kPollMs = 500;
constexpr int kStatusTimeoutMs = 10000;
constexpr int kFetchTimeoutMs = 120000;
constexpr int kMaxBackoffMs = 5000;
constexpr int64_t kBatchBytes = 64LL * 1024 * 1024;  // per put_frames message

}  // namespace

// ---------------------------------------------------------------------------------------------

std::vector<int> put_frames(Connection& c, const std::string& shot, const std::string& role,
                            const std::vector<EncodedFrame>& frames) {
  std::vector<int> stored;
  const Limits& lim = c.limits();
  const int64_t budget =
      std::max<int64_t>(1, std::min<int64_t>(kBatchBytes, lim.max_message_bytes - (1 << 20)));
  const size_t max_count = static_cast<size_t>(std::max<int64_t>(1, std::min<int64_t>(lim.max_buffers, 4096)));
  size_t i = 0;
  while (i < frames.size()) {
    Value::Array descs;
    std::vector<Bytes> bufs;
    int64_t bytes = 0;
    while (i < frames.size() && bufs.size() < max_count &&
           (bufs.empty() || bytes + static_cast<int64_t>(frames[i].data->size()) <= budget)) {
      const EncodedFrame& f = frames[i];
      Value::Array names;
      for (const std::string& n : f.names) names.emplace_back(n);
      Value::Map d{{"frame", f.frame},
                   {"role", role},
                   {"buf", static_cast<int>(bufs.size() + 1)},
                   {"dtype", f.dtype},
                   {"shape", Value::Array{f.height, f.width, f.channels}}};
      if (!names.empty()) d["channels"] = Value(std::move(names));
      descs.emplace_back(std::move(d));
      bufs.push_back(f.data);
      bytes += static_cast<int64_t>(f.data->size());
      ++i;
    }
    Value body(Value::Map{{"shot", shot}, {"role", role}, {"frames", std::move(descs)}});
    // Generous for a slow link: 30 s plus 10 s per 100 MB.
    const int timeout = static_cast<int>(30000 + bytes / 10000);
    Reply r = c.call("shot.put_frames", body, bufs, timeout);
    if (const Value* s = r.body.find("stored"))
      for (const Value& n : s->as_array("stored")) stored.push_back(static_cast<int>(n.as_int()));
  }
  return stored;
}

// ---------------------------------------------------------------------------------------------

Session::Session(std::string host_name)
    : host_name_(std::move(host_name)), cache_capacity_(cache_capacity_from_env()) {
  status_.text = "idle";
  worker_ = std::thread([this] { run(); });
}

Session::~Session() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  results_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

// --- UI thread --------------------------------------------------------------------------------

void Session::track_train(const ShotRef& ref, const std::string& job_id) {
  std::lock_guard<std::mutex> lk(mu_);
  commands_.push_back({Cmd::Train, ref, job_id, nullptr});
  set_text("training: submitted (job " + job_id + ")");
  status_.busy = true;
  cv_.notify_all();
}

void Session::request_render(RenderRequest req) {
  std::lock_guard<std::mutex> lk(mu_);
  ShotRef ref = req.ref;
  commands_.push_back({Cmd::Render, ref, "", std::make_shared<RenderRequest>(std::move(req))});
  set_text("render: submitting");
  status_.busy = true;
  cv_.notify_all();
}

bool Session::queued(int cmd) const {
  for (const Command& c : commands_)
    if (static_cast<int>(c.cmd) == cmd) return true;
  return false;
}

void Session::cancel() {
  std::lock_guard<std::mutex> lk(mu_);
  if (queued(static_cast<int>(Cmd::Cancel))) return;  // presses coalesce
  commands_.push_back({Cmd::Cancel, ref_, "", nullptr});
  set_text("cancelling");
  cv_.notify_all();
}

void Session::refresh(const ShotRef& ref) {
  std::lock_guard<std::mutex> lk(mu_);
  // Presses coalesce: an artist hammering Refresh while the server is down must not queue up
  // one connection timeout per press.
  if (queued(static_cast<int>(Cmd::Refresh))) return;
  commands_.push_back({Cmd::Refresh, ref, "", nullptr});
  cv_.notify_all();
}

void Session::note(const std::string& text) {
  std::lock_guard<std::mutex> lk(mu_);
  set_text(text);
}

StatusSnapshot Session::status() const {
  std::lock_guard<std::mutex> lk(mu_);
  return status_;
}

void Session::purge_cache() {
  std::lock_guard<std::mutex> lk(mu_);
  cache_.clear();
  lru_.clear();
  cache_used_ = 0;
  prefetch_pending_ = false;
}

size_t Session::cache_bytes() const {
  std::lock_guard<std::mutex> lk(mu_);
  return cache_used_;
}

// --- render threads ---------------------------------------------------------------------------

ResultLookup Session::result_for(const ShotRef& ref, int frame, int wait_ms) {
  std::unique_lock<std::mutex> lk(mu_);
  if (ref.endpoint != ref_.endpoint || ref.shot != ref_.shot) {
    // The artist pointed the node at another server or shot: nothing cached applies.
    ref_ = ref;
    cache_.clear();
    lru_.clear();
    cache_used_ = 0;
    results_job_.clear();
    not_rendered_reason_.clear();
    prefetch_pending_ = false;
    server_down_ = false;
  } else if (ref != ref_) {
    ref_ = ref;  // only the range changed: the cached frames still belong to this shot
  }
  auto hit = [&]() -> std::shared_ptr<const RemoteFrame> {
    auto it = cache_.find(frame);
    if (it == cache_.end()) return nullptr;
    lru_.remove(frame);
    lru_.push_front(frame);
    return it->second.frame;
  };
  if (auto f = hit()) return {f, ""};
  const int64_t now = now_ms();
  auto why_not_rendered = [&]() {
    return status_.busy ? status_.text : not_rendered_reason_;
  };
  if (!not_rendered_reason_.empty() && now < not_rendered_until_ms_) return {nullptr, why_not_rendered()};
  // A server known to be down is re-probed by the worker in the background; renders never wait
  // for a connection attempt meanwhile.
  if (server_down_) return {nullptr, down_reason_};
  if (wait_ms <= 0) return {nullptr, "result not fetched yet"};

  fetch_wanted_.insert(frame);
  fetch_failed_.erase(frame);
  cv_.notify_all();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  for (;;) {
    if (auto f = hit()) return {f, ""};
    auto failed = fetch_failed_.find(frame);
    if (failed != fetch_failed_.end()) {
      std::string reason = failed->second;
      fetch_failed_.erase(failed);
      if (!not_rendered_reason_.empty() && reason == not_rendered_reason_) reason = why_not_rendered();
      return {nullptr, reason};
    }
    if (stop_) return {nullptr, "plug-in instance shutting down"};
    if (results_cv_.wait_until(lk, deadline) == std::cv_status::timeout) {
      if (auto f = hit()) return {f, ""};
      return {nullptr, "still fetching the rendered frame from the server"};
    }
  }
}

// --- worker -----------------------------------------------------------------------------------

void Session::set_text(const std::string& text) { status_.text = text; }

ShotRef Session::current_ref() const {
  std::lock_guard<std::mutex> lk(mu_);
  return ref_;
}

void Session::bump_generation() { ++status_.generation; }

Connection& Session::conn() {
  std::string endpoint;
  {
    std::lock_guard<std::mutex> lk(mu_);
    endpoint = ref_.endpoint;
  }
  if (!conn_ || conn_->endpoint() != endpoint) {
    conn_ = std::make_unique<Connection>(endpoint);
    conn_->set_interrupt(&stop_);
    hello_done_ = false;
  }
  if (!hello_done_) {
    hello(*conn_, host_name_, kStatusTimeoutMs);  // limits + version check
    hello_done_ = true;
  }
  return *conn_;
}

Reply Session::request(const std::string& type, const Value& body, const std::vector<Bytes>& buffers,
                       int timeout_ms) {
  Connection& c = conn();
  try {
    Reply r = c.call(type, body, buffers, timeout_ms);
    server_up();
    return r;
  } catch (const RemoteError&) {
    server_up();  // an error reply still proves the server is there
    throw;
  }
}

void Session::server_down(const std::exception& e) {
  std::lock_guard<std::mutex> lk(mu_);
  server_down_ = true;
  down_reason_ = describe_error(e);
  retry_at_ms_ = now_ms() + backoff_ms_;
  next_poll_ms_ = retry_at_ms_;
  backoff_ms_ = std::min(backoff_ms_ * 2, kMaxBackoffMs);
  hello_done_ = false;
  set_text(down_reason_ + " (retrying)");
}

void Session::server_up() {
  std::lock_guard<std::mutex> lk(mu_);
  if (server_down_) {
    server_down_ = false;
    not_rendered_reason_.clear();
    set_text("reconnected to " + ref_.endpoint);
  }
  backoff_ms_ = 500;
}

void Session::adopt_results_job(const std::string& job) {
  if (job == results_job_) return;
  // A different render's frames: whatever is cached is stale.
  results_job_ = job;
  cache_.clear();
  lru_.clear();
  cache_used_ = 0;
  not_rendered_reason_.clear();
  bump_generation();
}

void Session::cache_put(int frame, const std::string& job, std::shared_ptr<const RemoteFrame> f) {
  std::lock_guard<std::mutex> lk(mu_);
  if (job != results_job_) adopt_results_job(job);
  auto it = cache_.find(frame);
  if (it != cache_.end()) {
    cache_used_ -= it->second.frame->bytes();
    lru_.remove(frame);
  }
  cache_used_ += f->bytes();
  cache_[frame] = {job, std::move(f)};
  lru_.push_front(frame);
  while (cache_used_ > cache_capacity_ && lru_.size() > 1) {
    int victim = lru_.back();
    lru_.pop_back();
    auto v = cache_.find(victim);
    if (v != cache_.end()) {
      cache_used_ -= v->second.frame->bytes();
      cache_.erase(v);
    }
  }
}

std::string Session::job_text(const Tracked& t) const {
  const JobRecord& r = t.last;
  const bool train = t.kind == "train";
  const std::string what = train ? "training" : "render";
  if (!t.have_record) return what + ": submitted (job " + t.id + ")";
  char buf[160];
  if (r.state == "queued") {
    std::string s = what + ": queued";
    if (r.position >= 0) s += " (position " + std::to_string(r.position) + ")";
    return s;
  }
  if (r.state == "running") {
    std::string s;
    // The steps that take the time: training's motion / appearance stages, the render's
    // sampling. Other stages (load, encode, write...) are named as they are.
    const bool main_stage = r.stage.empty() ||
                            (train ? (r.stage == "train" || r.stage == "motion" || r.stage == "appearance")
                                   : r.stage == "render");
    if (r.total > 0 && main_stage) {
      std::snprintf(buf, sizeof buf, "%s step %lld of %lld", train ? "training" : "rendering",
                    static_cast<long long>(std::max<int64_t>(r.step, 0)),
                    static_cast<long long>(r.total));
      s = buf;
      if (r.stage == "appearance") s += " (appearance)";
    } else if (r.total > 0) {
      std::snprintf(buf, sizeof buf, "%s: %s %lld of %lld", train ? "training" : "rendering",
                    r.stage.c_str(), static_cast<long long>(std::max<int64_t>(r.step, 0)),
                    static_cast<long long>(r.total));
      s = buf;
    } else {
      s = (train ? "training" : "rendering") + (r.stage.empty() ? "" : ": " + r.stage);
    }
    if (train && r.loss >= 0) {
      std::snprintf(buf, sizeof buf, " (loss %.4g)", r.loss);
      s += buf;
    }
    return s + eta_text(r.eta_s);
  }
  if (r.state == "done") {
    if (train) return "trained (job " + r.job + ")";
    return "rendered frames " + std::to_string(ref_.first) + "-" + std::to_string(ref_.last) +
           " (job " + r.job + ")";
  }
  if (r.state == "cancelled") return what + " cancelled";
  if (r.state == "failed") {
    std::string msg = r.error_code.empty() ? r.message : r.error_code + ": " + r.error_message;
    return "error: " + what + " failed: " + msg;
  }
  return what + ": " + r.state;
}

void Session::run() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    process_commands(lk);
    if (stop_) break;
    const int64_t now = now_ms();
    const bool active = (train_ && !(train_->have_record && train_->last.terminal())) ||
                        (render_ && !(render_->have_record && render_->last.terminal()));
    if (!fetch_wanted_.empty()) {
      lk.unlock();
      serve_fetches();
      lk.lock();
      continue;
    }
    if (active && now >= next_poll_ms_) {
      lk.unlock();
      poll_jobs();
      lk.lock();
      continue;
    }
    if (prefetch_pending_ && !server_down_) {
      lk.unlock();
      prefetch_step();
      lk.lock();
      continue;
    }
    if (server_down_ && !active && now >= retry_at_ms_) {
      // Nothing to poll, but renders are falling back to the source: probe the server so they
      // pick the results up again as soon as it is back.
      lk.unlock();
      try {
        conn();
        server_up();
      } catch (const TransportError& e) {
        if (e.kind() != TransportError::Kind::Interrupted) server_down(e);
      } catch (const std::exception& e) {
        server_down(e);
      }
      lk.lock();
      continue;
    }
    int64_t wait = active ? std::max<int64_t>(1, next_poll_ms_ - now) : 1000;
    if (server_down_ && !active) wait = std::max<int64_t>(1, std::min<int64_t>(wait, retry_at_ms_ - now));
    cv_.wait_for(lk, std::chrono::milliseconds(wait),
                 [&] { return stop_ || !commands_.empty() || !fetch_wanted_.empty(); });
  }
  // Wake any render thread still waiting.
  fetch_wanted_.clear();
  results_cv_.notify_all();
}

void Session::process_commands(std::unique_lock<std::mutex>& lk) {
  while (!commands_.empty() && !stop_) {
    Command c = std::move(commands_.front());
    commands_.pop_front();
    const bool new_place = c.ref.endpoint != ref_.endpoint || c.ref.shot != ref_.shot;
    ref_ = c.ref;
    if (new_place || c.cmd == Cmd::Train) {
      // New shot / server, or a new training that replaces the shot's frames and results.
      cache_.clear();
      lru_.clear();
      cache_used_ = 0;
      results_job_.clear();
      prefetch_pending_ = false;
      bump_generation();
    }
    not_rendered_reason_.clear();
    lk.unlock();
    switch (c.cmd) {
      case Cmd::Train:
        train_ = std::make_unique<Tracked>();
        train_->id = c.job;
        train_->kind = "train";
        if (new_place) render_.reset();
        next_poll_ms_ = 0;
        break;
      case Cmd::Render: {
        if (train_ && !(train_->have_record && train_->last.terminal())) {
          pending_render_ = c.render;
          std::lock_guard<std::mutex> g(mu_);
          set_text("render queued: waits for training to finish");
        } else {
          submit_render(*c.render);
        }
        break;
      }
      case Cmd::Cancel: do_cancel(); break;
      case Cmd::Refresh: do_refresh(); break;
    }
    lk.lock();
    const bool active = (train_ && !(train_->have_record && train_->last.terminal())) ||
                        (render_ && !(render_->have_record && render_->last.terminal()));
    status_.busy = active || pending_render_ != nullptr;
  }
}

void Session::submit_render(const RenderRequest& req) {
  try {
    if (!req.edited.empty()) {
      try {
        put_frames(conn(), req.ref.shot, "reference", req.edited);
      } catch (const RemoteError&) {
        server_up();
        throw;
      }
    }
    Value::Map body{{"shot", req.ref.shot},
                    {"seed", static_cast<unsigned long long>(req.seed)},
                    {"steps", req.steps},
                    {"first", req.ref.first},
                    {"last", req.ref.last}};
    if (!req.caption.empty()) body["caption"] = req.caption;
    Reply r = request("job.render", Value(std::move(body)), {}, kStatusTimeoutMs);
    render_ = std::make_unique<Tracked>();
    render_->id = r.body.at("job").as_str("job");
    render_->kind = "render";
    render_->last.job = render_->id;
    render_->last.state = r.body.get_str("state", "queued");
    render_->last.position = r.body.get_int("position", -1);
    render_->have_record = true;
    next_poll_ms_ = 0;
    std::lock_guard<std::mutex> lk(mu_);
    set_text(job_text(*render_));
    status_.busy = true;
  } catch (const TransportError& e) {
    server_down(e);
    std::lock_guard<std::mutex> lk(mu_);
    set_text("error: render not submitted: " + describe_error(e));
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lk(mu_);
    set_text("error: render not submitted: " + describe_error(e));
  }
}

void Session::poll_jobs() {
  Tracked* jobs[2] = {train_.get(), render_.get()};
  for (Tracked* t : jobs) {
    if (!t || (t->have_record && t->last.terminal()) || stop_) continue;
    JobRecord rec;
    try {
      Reply r = request("job.status", Value(Value::Map{{"job", t->id}}), {}, kStatusTimeoutMs);
      rec = JobRecord::from(r.body);
      server_up();
    } catch (const TransportError& e) {
      if (e.kind() == TransportError::Kind::Interrupted) return;
      server_down(e);
      return;
    } catch (const RemoteError& e) {
      if (e.code() != "not_found") {
        std::lock_guard<std::mutex> lk(mu_);
        set_text("error: " + describe_error(e));
        next_poll_ms_ = now_ms() + kMaxBackoffMs;
        return;
      }
      // The server no longer knows the job (restarted without its state, or the shot was
      // deleted): look for the newest job of the same kind on the shot and re-attach to it.
      std::string replacement;
      try {
        Reply l = request("job.list", Value(Value::Map{{"shot", current_ref().shot}, {"limit", 20}}),
                              {}, kStatusTimeoutMs);
        for (const Value& j : l.body.at("jobs").as_array("jobs")) {
          if (j.get_str("kind") == t->kind) {
            replacement = j.get_str("job");
            break;
          }
        }
      } catch (const std::exception&) {
      }
      std::lock_guard<std::mutex> lk(mu_);
      if (!replacement.empty() && replacement != t->id) {
        set_text("re-attached to " + t->kind + " job " + replacement + " after losing job " + t->id);
        t->id = replacement;
        t->have_record = false;
        next_poll_ms_ = 0;
        return;
      }
      t->have_record = true;
      t->last.state = "failed";
      t->last.error_code = "not_found";
      t->last.error_message = "job " + t->id +
                              " is gone from the server (restarted without its state?): press " +
                              (t->kind == "train" ? "Train" : "Render") + " again";
      set_text(job_text(*t));
      if (t == train_.get()) pending_render_.reset();
      continue;
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lk(mu_);
      set_text("error: " + describe_error(e));
      next_poll_ms_ = now_ms() + kMaxBackoffMs;
      return;
    }

    const bool was_terminal = t->have_record && t->last.terminal();
    t->last = rec;
    t->have_record = true;
    std::shared_ptr<RenderRequest> chained;
    {
      std::lock_guard<std::mutex> lk(mu_);
      set_text(job_text(*t));
      if (!was_terminal && rec.terminal()) {
        if (t == train_.get()) {
          if (rec.state == "done") {
            chained = pending_render_;
          } else if (pending_render_) {
            set_text(job_text(*t) + "; render not submitted");
          }
          pending_render_.reset();
        } else if (rec.state == "done") {
          adopt_results_job(rec.job);
          bump_generation();
          prefetch_pending_ = true;
          prefetch_next_ = ref_.first;
        }
      }
    }
    if (chained) submit_render(*chained);
  }
  std::lock_guard<std::mutex> lk(mu_);
  const bool active = (train_ && !(train_->have_record && train_->last.terminal())) ||
                      (render_ && !(render_->have_record && render_->last.terminal()));
  status_.busy = active || pending_render_ != nullptr;
  next_poll_ms_ = now_ms() + kPollMs;
}

void Session::do_cancel() {
  bool any = false;
  pending_render_.reset();
  try {
    Tracked* jobs[2] = {render_.get(), train_.get()};
    for (Tracked* t : jobs) {
      if (!t || (t->have_record && t->last.terminal())) continue;
      Reply r = request("job.cancel", Value(Value::Map{{"job", t->id}}), {}, kStatusTimeoutMs);
      t->last = JobRecord::from(r.body);
      t->have_record = true;
      any = true;
    }
    server_up();
  } catch (const TransportError& e) {
    server_down(e);
    return;
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lk(mu_);
    set_text("error: cancel failed: " + describe_error(e));
    return;
  }
  std::lock_guard<std::mutex> lk(mu_);
  if (!any) {
    set_text("nothing to cancel");
    return;
  }
  // A running job stops at its next step: keep polling until it reports `cancelled`.
  set_text("cancel requested");
  next_poll_ms_ = 0;
  for (Tracked* t : {train_.get(), render_.get()})
    if (t && t->last.state == "cancelled") set_text(job_text(*t));
}

void Session::do_refresh() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    not_rendered_reason_.clear();
    next_poll_ms_ = 0;
  }
  if (train_ || render_) return;  // the poll loop re-queries tracked jobs right away
  // Nothing tracked (a fresh host session): pick up the shot's newest jobs from the server.
  try {
    Reply l = request("job.list", Value(Value::Map{{"shot", current_ref().shot}, {"limit", 50}}), {},
                          kStatusTimeoutMs);
    server_up();
    for (const Value& j : l.body.at("jobs").as_array("jobs")) {
      JobRecord rec = JobRecord::from(j);
      if (rec.kind != "train" && rec.kind != "render") continue;
      std::unique_ptr<Tracked>& slot = rec.kind == "train" ? train_ : render_;
      if (slot) continue;  // newest first: keep the first of each kind
      slot = std::make_unique<Tracked>();
      slot->id = rec.job;
      slot->kind = rec.kind;
      slot->last = rec;
      slot->have_record = true;
    }
    std::lock_guard<std::mutex> lk(mu_);
    if (render_ && render_->last.state == "done") {
      adopt_results_job(render_->last.job);
      prefetch_pending_ = true;
      prefetch_next_ = ref_.first;
    }
    Tracked* shown = nullptr;
    for (Tracked* t : {render_.get(), train_.get()}) {
      if (t && !t->last.terminal()) shown = t;
    }
    if (!shown) shown = render_ ? render_.get() : train_.get();
    if (shown)
      set_text(job_text(*shown));
    else if (status_.text.rfind("error:", 0) != 0)  // an unacknowledged error stays visible
      set_text("no jobs for shot '" + ref_.shot + "' on the server");
    status_.busy = (train_ && !train_->last.terminal()) || (render_ && !render_->last.terminal());
  } catch (const TransportError& e) {
    if (e.kind() != TransportError::Kind::Interrupted) server_down(e);
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lk(mu_);
    set_text("error: " + describe_error(e));
  }
}

std::vector<int> Session::fetch_range(int first, int last, int* chunk_hint) {
  std::vector<int> got;
  int a = first;
  while (a <= last && !stop_) {
    const int chunk = std::max(1, *chunk_hint);
    const int b = static_cast<int>(std::min<int64_t>(last, static_cast<int64_t>(a) + chunk - 1));
    std::string job;
    {
      std::lock_guard<std::mutex> lk(mu_);
      job = results_job_;
    }
    Value::Map body{{"shot", current_ref().shot}, {"first", a}, {"last", b},
                    {"mode", "buffers"}, {"dtype", "f16"}};
    if (!job.empty()) body["job"] = job;
    Reply r;
    try {
      r = request("result.fetch", Value(std::move(body)), {}, kFetchTimeoutMs);
    } catch (const RemoteError& e) {
      if (e.code() == "too_large") {
        const int64_t fit = e.details().get_int("max_frames", 0);
        if (fit >= 1 && fit < chunk) {
          *chunk_hint = static_cast<int>(fit);
          continue;
        }
      }
      if (e.code() == "not_found" && !job.empty()) {
        // Our render job is gone (the shot was re-trained or replaced): ask for the latest.
        std::lock_guard<std::mutex> lk(mu_);
        results_job_.clear();
        if (!got.empty()) return got;
        job.clear();
        continue;
      }
      throw;
    }
    const std::string reply_job = r.body.get_str("job");
    for (RemoteFrame& f : frames_of(r, "result")) {
      const int n = f.frame;
      cache_put(n, reply_job, std::make_shared<const RemoteFrame>(std::move(f)));
      got.push_back(n);
    }
    a = b + 1;
  }
  return got;
}

void Session::serve_fetches() {
  std::set<int> wanted;
  {
    std::lock_guard<std::mutex> lk(mu_);
    wanted = fetch_wanted_;
  }
  std::string failure;
  std::set<int> got;
  try {
    // Contiguous runs of wanted frames, one result.fetch per run (split if too large).
    auto it = wanted.begin();
    while (it != wanted.end()) {
      int a = *it, b = *it;
      ++it;
      while (it != wanted.end() && *it == b + 1) b = *it++;
      for (int n : fetch_range(a, b, &prefetch_chunk_)) got.insert(n);
    }
    server_up();
  } catch (const TransportError& e) {
    if (e.kind() != TransportError::Kind::Interrupted) server_down(e);
    std::lock_guard<std::mutex> lk(mu_);
    failure = down_reason_.empty() ? describe_error(e) : down_reason_;
  } catch (const RemoteError& e) {
    std::lock_guard<std::mutex> lk(mu_);
    if (e.code() == "not_found") {
      not_rendered_reason_ = "not rendered yet (" + e.message() + ")";
      not_rendered_until_ms_ = now_ms() + 3000;
      failure = not_rendered_reason_;
    } else {
      failure = "error fetching the result: " + describe_error(e);
    }
  } catch (const std::exception& e) {
    failure = "error fetching the result: " + describe_error(e);
  }
  std::lock_guard<std::mutex> lk(mu_);
  for (int n : wanted) {
    fetch_wanted_.erase(n);
    if (!got.count(n) && !cache_.count(n))
      fetch_failed_[n] = failure.empty() ? "frame " + std::to_string(n) + " is not in the render"
                                         : failure;
  }
  // Forget failures nobody collected (a waiting thread that timed out).
  while (fetch_failed_.size() > 4096) fetch_failed_.erase(fetch_failed_.begin());
  ++fetch_round_;
  results_cv_.notify_all();
}

void Session::prefetch_step() {
  int a, b;
  {
    std::lock_guard<std::mutex> lk(mu_);
    while (prefetch_next_ <= ref_.last && cache_.count(prefetch_next_)) ++prefetch_next_;
    if (!prefetch_pending_ || prefetch_next_ > ref_.last) {
      prefetch_pending_ = false;
      return;
    }
    // Stop before the cache starts evicting what it just fetched.
    size_t per_frame = cache_.empty() ? 0 : cache_used_ / cache_.size();
    if (cache_used_ + per_frame * static_cast<size_t>(prefetch_chunk_) > cache_capacity_) {
      prefetch_pending_ = false;
      return;
    }
    a = prefetch_next_;
    b = std::min(ref_.last, a + std::max(1, prefetch_chunk_) - 1);
    while (b > a && cache_.count(b)) --b;
  }
  try {
    fetch_range(a, b, &prefetch_chunk_);
    server_up();
    std::lock_guard<std::mutex> lk(mu_);
    prefetch_next_ = b + 1;
  } catch (const TransportError& e) {
    if (e.kind() != TransportError::Kind::Interrupted) server_down(e);
  } catch (const std::exception&) {
    std::lock_guard<std::mutex> lk(mu_);
    prefetch_pending_ = false;  // render threads will fetch (and report) on demand
  }
}

}  // namespace lorafx
