// The upstream half of /readyz: a libpq ping every second on a thread of its own.
#include "server/readiness_check.h"

#include <libpq-fe.h>
#include <pthread.h>

#include "observability/log.h"

namespace pgwire_proxy::server {
namespace {

// A libpq ping: no authentication; a server that answers at all (even refusing the login) is up.
bool pingUpstream(const std::string& dsn) {
  // The DSN is expanded first, so the connect_timeout after it wins over one inside it.
  const char* keywords[] = {"dbname", "connect_timeout", nullptr};
  const char* values[] = {dsn.c_str(), ReadinessCheck::kConnectTimeout, nullptr};
  return PQpingParams(keywords, values, 1) == PQPING_OK;
}

}  // namespace

ReadinessCheck::ReadinessCheck(std::string upstreamDsn, std::chrono::milliseconds interval)
    : dsn_(std::move(upstreamDsn)), interval_(interval) {
  check();
  thread_ = std::thread([this] { run(); });
  (void)::pthread_setname_np(thread_.native_handle(), "pgwire-ready");
}

ReadinessCheck::~ReadinessCheck() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void ReadinessCheck::run() {
  std::unique_lock lock(mutex_);
  while (!wake_.wait_for(lock, interval_, [this] { return stopping_; })) {
    lock.unlock();
    check();
    lock.lock();
  }
}

void ReadinessCheck::check() {
  const State next = pingUpstream(dsn_) ? State::kReachable : State::kUnreachable;
  // Logged on change only: once when the upstream goes away (or is away at start), once when it is back.
  if (state_.exchange(next, std::memory_order_acq_rel) == next) return;
  if (next == State::kUnreachable) {
    observability::logEvent(observability::LogLevel::kWarning, "upstream_unreachable");
  } else {
    observability::logEvent(observability::LogLevel::kInfo, "upstream_reachable");
  }
}

}  // namespace pgwire_proxy::server
