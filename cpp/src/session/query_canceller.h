// Lets a client's CancelRequest reach a session's running query from another loop thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

#include "session/loop_task.h"
#include "session/registry.h"

namespace pgwire_proxy::session {

// Lets a CancelRequest (on another loop thread) reach this session's running query, and only that
// query: it wakes the session, which sends the CancelRequest upstream itself. A request for a query
// that has ended by then is dropped, as PostgreSQL drops a late one.
//
// The session calls setInQuery twice a query and takeRequest every step, so those take no lock: each
// setInQuery starts a new generation, and a request carries the generation it was made for; it is
// taken only while that generation is still current. The mutex only keeps loop_ valid against
// detach() while a request wakes the session.
class QueryCanceller final : public CancelTarget {
 public:
  QueryCanceller(LoopHandle& loop, std::uint64_t taskId) : loop_(&loop), taskId_(taskId) {}

  // Any thread.
  bool cancelRunningQuery() override {
    std::lock_guard lock(mutex_);
    if (loop_ == nullptr) return false;
    const std::uint64_t query = state_.load(std::memory_order_acquire);
    if ((query & kInQuery) == 0) return false;  // idle: nothing to cancel, as in PostgreSQL
    requested_.store(query, std::memory_order_release);
    loop_->wake(taskId_);
    return true;
  }

  // The session's loop thread only. Whatever was requested before no longer matches.
  void setInQuery(bool inQuery) {
    const std::uint64_t next = ((state_.load(std::memory_order_relaxed) >> 1) + 1) << 1;
    state_.store(inQuery ? next | kInQuery : next, std::memory_order_release);
  }

  // The session's loop thread only: whether a cancel arrived for the running query since the last call.
  bool takeRequest() {
    if (requested_.load(std::memory_order_relaxed) == kNone) return false;
    const std::uint64_t request = requested_.exchange(kNone, std::memory_order_acquire);
    return request != kNone && request == state_.load(std::memory_order_relaxed);
  }

  void detach() {
    std::lock_guard lock(mutex_);
    loop_ = nullptr;
  }

 private:
  static constexpr std::uint64_t kInQuery = 1;  // the low bit of state_; the generation is above it
  static constexpr std::uint64_t kNone = 0;     // no request (state_ is never 0 in a query)

  std::mutex mutex_;
  LoopHandle* loop_;  // under mutex_
  const std::uint64_t taskId_;
  std::atomic<std::uint64_t> state_{0};      // generation << 1 | in query; written by the session only
  std::atomic<std::uint64_t> requested_{kNone};  // the state_ a request was made in
};

}  // namespace pgwire_proxy::session
