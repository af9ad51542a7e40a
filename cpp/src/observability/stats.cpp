// For the Python API: live sessions, a bounded query capture, errors by SQLSTATE, guardrails by limit.
#include "observability/stats.h"

#include <algorithm>

namespace pgwire_proxy::observability {

void StatsCollector::sessionOpened(std::uint64_t sessionId, std::int32_t processId, std::string_view clientAddress,
                                   std::string_view applicationName) {
  std::lock_guard lock(mutex_);
  SessionSnapshot& session = sessions_[sessionId];
  session.id = sessionId;
  session.processId = processId;
  session.clientAddress = clientAddress;
  session.applicationName = applicationName;
  session.state = "idle";
  session.connectedAt = std::chrono::system_clock::now();
}

void StatsCollector::sessionClosed(const SessionSummary& summary) {
  std::lock_guard lock(mutex_);
  sessions_.erase(summary.sessionId);
}

void StatsCollector::sessionRejected(std::uint64_t, std::string_view, std::string_view, const ProxyError& error) {
  std::lock_guard lock(mutex_);
  ++errorsBySqlstate_[error.sqlstate()];
}

void StatsCollector::queryStarted(std::uint64_t sessionId, std::string_view /*sql*/) {
  std::lock_guard lock(mutex_);
  if (const auto it = sessions_.find(sessionId); it != sessions_.end()) it->second.state = "active";
}

void StatsCollector::queryFinished(const QueryRecord& record) {
  std::lock_guard lock(mutex_);
  if (!record.sqlstate.empty()) ++errorsBySqlstate_[record.sqlstate];
  if (const auto it = sessions_.find(record.sessionId); it != sessions_.end()) {
    it->second.state = "idle";
    ++it->second.queries;
  }
  if (captureCapacity_ == 0) return;
  if (captured_.size() == captureCapacity_) captured_.pop_front();
  captured_.push_back(record);
  ++capturedTotal_;
}

void StatsCollector::proxyError(std::uint64_t /*sessionId*/, const ProxyError& error) {
  std::lock_guard lock(mutex_);
  ++errorsBySqlstate_[error.sqlstate()];
}

void StatsCollector::guardrailTripped(std::uint64_t /*sessionId*/, std::string_view limit, std::string_view /*value*/,
                                      double /*seconds*/, std::string_view /*queryExcerpt*/) {
  std::lock_guard lock(mutex_);
  ++guardrailsByLimit_[std::string(limit)];
}

std::map<std::string, std::uint64_t> StatsCollector::errorsBySqlstate() const {
  std::lock_guard lock(mutex_);
  return errorsBySqlstate_;
}

std::map<std::string, std::uint64_t> StatsCollector::guardrailsByLimit() const {
  std::lock_guard lock(mutex_);
  return guardrailsByLimit_;
}

std::vector<SessionSnapshot> StatsCollector::sessions() const {
  std::lock_guard lock(mutex_);
  std::vector<SessionSnapshot> result;
  result.reserve(sessions_.size());
  for (const auto& [id, session] : sessions_) result.push_back(session);
  return result;
}

std::vector<QueryRecord> StatsCollector::queries() const {
  std::lock_guard lock(mutex_);
  return {captured_.begin(), captured_.end()};
}

std::vector<QueryRecord> StatsCollector::queriesSince(std::uint64_t sequence) const {
  std::lock_guard lock(mutex_);
  const std::uint64_t newer = capturedTotal_ > sequence ? capturedTotal_ - sequence : 0;
  const std::size_t count = static_cast<std::size_t>(std::min<std::uint64_t>(newer, captured_.size()));
  return {captured_.end() - static_cast<std::ptrdiff_t>(count), captured_.end()};
}

std::uint64_t StatsCollector::captureSequence() const {
  std::lock_guard lock(mutex_);
  return capturedTotal_;
}

void StatsCollector::clearQueries() {
  std::lock_guard lock(mutex_);
  captured_.clear();
}

}  // namespace pgwire_proxy::observability
