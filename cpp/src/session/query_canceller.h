// Lets a client's CancelRequest reach a session's running query from another loop thread.
#pragma once

#include <cstdint>
#include <mutex>
#include <utility>

#include "session/loop_task.h"
#include "session/registry.h"

namespace pgwire_proxy::session {

// Lets a CancelRequest (on another loop thread) reach this session's running query, and only that
// query: it wakes the session, which sends the CancelRequest upstream itself. A request for a query
// that has ended by then is dropped (setInQuery(false) clears it), as PostgreSQL drops a late one.
class QueryCanceller final : public CancelTarget {
 public:
  QueryCanceller(LoopHandle& loop, std::uint64_t taskId) : loop_(&loop), taskId_(taskId) {}

  bool cancelRunningQuery() override {
    std::lock_guard lock(mutex_);
    if (loop_ == nullptr || !inQuery_) return false;  // idle: nothing to cancel, as in PostgreSQL
    requested_ = true;
    loop_->wake(taskId_);
    return true;
  }

  void setInQuery(bool inQuery) {
    std::lock_guard lock(mutex_);
    inQuery_ = inQuery;
    requested_ = false;
  }

  // Whether a cancel arrived for the running query since the last call.
  bool takeRequest() {
    std::lock_guard lock(mutex_);
    return std::exchange(requested_, false);
  }

  void detach() {
    std::lock_guard lock(mutex_);
    loop_ = nullptr;
  }

 private:
  std::mutex mutex_;
  LoopHandle* loop_;
  const std::uint64_t taskId_;
  bool inQuery_ = false;
  bool requested_ = false;
};

}  // namespace pgwire_proxy::session
