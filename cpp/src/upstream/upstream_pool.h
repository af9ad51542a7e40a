// --reuse-upstream: finished sessions' upstream connections, reset, kept for the next client of the
// same route, user and startup parameters. Shared by every loop thread; touched only when a session
// opens or ends, never on the per-query path.
#pragma once

#include <chrono>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "upstream/upstream_connection.h"

namespace pgwire_proxy::upstream {

// What a connection was opened for: two requests with the same key get interchangeable connections
// (the DSN, the user and database, every startup parameter the client sent, in a canonical order).
// Empty for a request that must never share its connection (passthrough: the client's password).
[[nodiscard]] std::string poolKey(const ConnectRequest& request);

class UpstreamPool {
 public:
  using Clock = std::chrono::steady_clock;

  UpstreamPool(std::size_t capacity, std::chrono::milliseconds idleTimeout) noexcept
      : capacity_(capacity), idleTimeout_(idleTimeout) {}
  ~UpstreamPool();
  UpstreamPool(const UpstreamPool&) = delete;
  UpstreamPool& operator=(const UpstreamPool&) = delete;

  // A client waiting for a connection whose reset is under way (a client that reconnects at once,
  // as a test suite or pgbench -C does, would otherwise miss it and fork a new backend).
  struct Handover {
    explicit Handover(std::function<void()> wakeUp) : wake(std::move(wakeUp)) {}
    std::function<void()> wake;  // called once settled, outside the pool's lock
    std::string key;
    bool settled = false;        // the pool's: a connection (or none, the reset failed) was given
    std::unique_ptr<UpstreamConnection> connection;
  };
  struct Taken {
    std::unique_ptr<UpstreamConnection> connection;  // a parked one
    bool waiting = false;  // none parked, but a reset for the key is under way: `handover` waits for it
  };

  // The most recently parked live connection for `key`; else, when a reset for the key is under way
  // with nobody waiting for it yet, `handover` is queued for it (waiting). A connection the server
  // closed or wrote to while it idled (a FATAL from a restart or a terminate) is dropped on the way.
  [[nodiscard]] Taken take(const std::string& key, const std::shared_ptr<Handover>& handover = nullptr);
  // What a waiting handover got: nullopt while it is not settled; then the connection, or null (the
  // reset failed: connect anew).
  [[nodiscard]] std::optional<std::unique_ptr<UpstreamConnection>> collect(const std::shared_ptr<Handover>& handover);
  // The waiter is gone: out of the queue; a connection it was given but never collected is parked.
  void abandon(const std::shared_ptr<Handover>& handover);
  // A reset for `key` began (a connection that will be parked or closed soon).
  void resetStarted(const std::string& key);
  // It ended: a reset connection (idle, ReadyForQuery 'I') goes to the first client waiting for the
  // key, else it is parked (the oldest goes when the pool is full); null: the reset failed.
  void resetEnded(const std::string& key, std::unique_ptr<UpstreamConnection> connection);
  // Closes the connections idle past the idle timeout; returns when the next one expires.
  std::optional<Clock::time_point> sweep();
  // Closes every parked connection (shutdown).
  void clear();

 private:
  struct Parked {
    std::string key;
    std::unique_ptr<UpstreamConnection> connection;
    Clock::time_point since;
  };

  const std::size_t capacity_;
  const std::chrono::milliseconds idleTimeout_;
  mutable std::mutex mutex_;
  // Gives `connection` to a waiter or parks it; the wake-ups to run once the lock is released.
  void placeLocked(const std::string& key, std::unique_ptr<UpstreamConnection> connection,
                   std::vector<std::function<void()>>& wakes, std::unique_ptr<UpstreamConnection>& evicted);
  [[nodiscard]] std::size_t waitingLocked(const std::string& key) const;

  std::deque<Parked> parked_;  // oldest first
  std::deque<std::shared_ptr<Handover>> waiting_;  // oldest first
  std::vector<std::pair<std::string, int>> resetting_;  // resets under way by key (a few keys at most)
  bool closed_ = false;        // clear() ran: nothing is parked any more
};

}  // namespace pgwire_proxy::upstream
