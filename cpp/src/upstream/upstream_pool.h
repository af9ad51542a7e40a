// --reuse-upstream: finished sessions' upstream connections, reset, kept for the next client of the
// same route, user and startup parameters. Shared by every loop thread; touched only when a session
// opens or ends, never on the per-query path.
#pragma once

#include <chrono>
#include <cstddef>
#include <deque>
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

  // The most recently parked live connection for `key`, or null. A connection the server closed or
  // wrote to while it idled (a FATAL from a restart or a terminate) is dropped on the way.
  [[nodiscard]] std::unique_ptr<UpstreamConnection> take(const std::string& key);
  // Parks a reset connection (idle, ReadyForQuery 'I'). The oldest goes when the pool is full.
  void put(const std::string& key, std::unique_ptr<UpstreamConnection> connection);
  // Closes the connections idle past the idle timeout; returns when the next one expires.
  std::optional<Clock::time_point> sweep();
  // Closes every parked connection (shutdown).
  void clear();

  [[nodiscard]] std::size_t idle() const;
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

 private:
  struct Parked {
    std::string key;
    std::unique_ptr<UpstreamConnection> connection;
    Clock::time_point since;
  };

  const std::size_t capacity_;
  const std::chrono::milliseconds idleTimeout_;
  mutable std::mutex mutex_;
  std::deque<Parked> parked_;  // oldest first
  bool closed_ = false;        // clear() ran: nothing is parked any more
};

}  // namespace pgwire_proxy::upstream
