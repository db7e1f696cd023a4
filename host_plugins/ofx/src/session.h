// The server side of one plug-in instance: a background worker thread that talks to the lorafx
// server (job polling, render submission, cancel, result fetching) and an in-memory LRU cache
// of rendered frames.
//
// Threading contract (why the plug-in never blocks the host's UI thread on the network):
//  - The UI thread (OFX InstanceChanged) only enqueues commands and reads status snapshots.
//    The one exception is the Train upload, which runs under the host's modal progress bar
//    with abort checks (see upload.h) and then hands the job id over with track_train().
//  - Render threads call result_for(), which looks in the cache and, on a miss, asks the
//    worker to fetch the frame and waits a bounded time for it.
//  - Only the worker thread owns a socket here. No OFX suite is ever called from it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "client.h"

namespace lorafx {

// Where a shot lives, captured from the parameters when a command is issued.
struct ShotRef {
  std::string endpoint;
  std::string shot;
  int first = 1, last = 1;
  bool operator==(const ShotRef& o) const {
    return endpoint == o.endpoint && shot == o.shot && first == o.first && last == o.last;
  }
  bool operator!=(const ShotRef& o) const { return !(*this == o); }
};

// One frame ready to upload: H x W x C, top row first, `dtype` little-endian.
struct EncodedFrame {
  int frame = 0;
  int height = 0, width = 0, channels = 0;
  std::string dtype = "f16";
  std::vector<std::string> names;
  Bytes data;
};

struct RenderRequest {
  ShotRef ref;
  uint64_t seed = 0;
  int steps = 30;
  std::string caption;               // empty: the server's caption
  std::vector<EncodedFrame> edited;  // reference (edited) frames to upload before job.render
};

struct StatusSnapshot {
  std::string text;         // one line for the status parameter
  uint64_t generation = 0;  // changes whenever the frames a render would show change
  bool busy = false;        // a job is queued or running
};

// The outcome of looking up a rendered frame.
struct ResultLookup {
  std::shared_ptr<const RemoteFrame> frame;  // set on success
  std::string reason;                        // why there is no frame (for the host message)
};

// Uploads frames of one role with shot.put_frames, split under the server's limits.
// `stop` (optional) aborts between messages. Returns the frame numbers the server stored.
std::vector<int> put_frames(Connection& c, const std::string& shot, const std::string& role,
                            const std::vector<EncodedFrame>& frames);

class Session {
 public:
  explicit Session(std::string host_name);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // --- UI thread ---
  void track_train(const ShotRef& ref, const std::string& job_id);
  void request_render(RenderRequest req);
  void cancel();
  void refresh(const ShotRef& ref);   // re-query the server, forget negative lookups
  void note(const std::string& text); // a local status line (upload progress, input errors)
  StatusSnapshot status() const;
  const std::string& host_name() const { return host_name_; }

  // --- render threads ---
  // The rendered frame `frame` of `ref`'s shot: from the cache, else fetched by the worker
  // (waiting at most wait_ms). Never throws.
  ResultLookup result_for(const ShotRef& ref, int frame, int wait_ms);

  // --- any thread ---
  void purge_cache();
  size_t cache_bytes() const;

 private:
  struct CacheEntry {
    std::string job;
    std::shared_ptr<const RemoteFrame> frame;
  };
  struct Tracked {
    std::string id;
    std::string kind;  // "train" | "render"
    JobRecord last;    // last record seen
    bool have_record = false;
  };

  bool queued(int cmd) const;  // requires mu_
  void run();
  void process_commands(std::unique_lock<std::mutex>& lk);
  void poll_jobs();
  void serve_fetches();
  void prefetch_step();
  void submit_render(const RenderRequest& req);
  void do_cancel();
  void do_refresh();
  Connection& conn();  // the worker's connection to ref_.endpoint (worker thread only)
  // conn().call that also records that the server answered (worker thread only).
  Reply request(const std::string& type, const Value& body, const std::vector<Bytes>& buffers,
                int timeout_ms);
  void set_text(const std::string& text);  // requires mu_
  ShotRef current_ref() const;             // locks mu_
  void server_down(const std::exception& e);
  void server_up();
  std::string job_text(const Tracked& t) const;
  void bump_generation();  // requires mu_
  void cache_put(int frame, const std::string& job, std::shared_ptr<const RemoteFrame> f);
  void adopt_results_job(const std::string& job);  // requires mu_
  std::vector<int> fetch_range(int first, int last, int* chunk_hint);

  const std::string host_name_;
  const size_t cache_capacity_;

  mutable std::mutex mu_;
  std::condition_variable cv_;          // wakes the worker
  std::condition_variable results_cv_;  // wakes render threads waiting for a fetch
  std::atomic<bool> stop_{false};
  std::thread worker_;

  // commands (guarded by mu_)
  enum class Cmd { Train, Render, Cancel, Refresh };
  struct Command {
    Cmd cmd;
    ShotRef ref;
    std::string job;
    std::shared_ptr<RenderRequest> render;
  };
  std::deque<Command> commands_;
  std::set<int> fetch_wanted_;  // frames render threads are waiting for
  std::map<int, std::string> fetch_failed_;  // frame -> reason, for the waiting threads
  uint64_t fetch_round_ = 0;   // bumps after every fetch attempt

  // state (guarded by mu_)
  ShotRef ref_;
  StatusSnapshot status_;
  bool server_down_ = false;
  int64_t retry_at_ms_ = 0;
  std::string down_reason_;
  std::string not_rendered_reason_;  // non-empty: the server has no render for the shot yet
  int64_t not_rendered_until_ms_ = 0;
  std::string results_job_;  // the render job whose frames the cache holds
  std::map<int, CacheEntry> cache_;
  std::list<int> lru_;  // most recent at the front
  size_t cache_used_ = 0;
  bool prefetch_pending_ = false;
  int prefetch_next_ = 0;
  int prefetch_chunk_ = 8;

  // worker-only state
  std::unique_ptr<Connection> conn_;
  std::unique_ptr<Tracked> train_, render_;
  std::shared_ptr<RenderRequest> pending_render_;  // waits for training to finish
  int64_t next_poll_ms_ = 0;
  int backoff_ms_ = 500;
  bool hello_done_ = false;
};

}  // namespace lorafx
