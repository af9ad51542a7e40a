// For the Python API: live sessions, a bounded query capture, errors by SQLSTATE, guardrails by limit.
#include "observability/stats.h"

#include <algorithm>
#include <array>

namespace pgwire_proxy::observability {
namespace {

// A dropped record's strings keep up to this much storage for the record assigned over them (a
// typical query's text); a longer one's is freed with the record.
constexpr std::size_t kKeptStringCapacity = 256;
const std::size_t kInlineCapacity = std::string().capacity();  // short strings need no storage of their own

// A record's strings (const or not), for what counts and trims them all.
template <typename Record>
auto texts(Record& record) {
  return std::array{&record.sql, &record.commandTag, &record.sqlstate, &record.errorMessage, &record.injected};
}

std::size_t heapBytes(const QueryRecord& record) {
  std::size_t bytes = 0;
  for (const std::string* text : texts(record)) bytes += text->capacity() > kInlineCapacity ? text->capacity() : 0;
  return bytes;
}

void trim(QueryRecord& record) {
  for (std::string* text : texts(record)) {
    text->clear();
    if (text->capacity() > kKeptStringCapacity) std::string().swap(*text);
  }
}

}  // namespace

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
  captureLocked(record);
}

void StatsCollector::captureLocked(const QueryRecord& record) {
  if (captureCapacity_ == 0) return;
  if (kept_ == captureCapacity_) dropOldestLocked();
  // Until the ring is full, first_ + kept_ never passes its end (records are dropped from the front).
  const std::size_t at = (first_ + kept_) % captureCapacity_;
  if (at == ring_.size()) {
    ring_.push_back(record);
  } else {
    ring_[at] = record;  // a dropped record's: its strings' storage is reused
  }
  ++kept_;
  keptBytes_ += heapBytes(ring_[at]);
  ++capturedTotal_;
  while (captureBytes_ > 0 && keptBytes_ > captureBytes_ && kept_ > 1) dropOldestLocked();
}

void StatsCollector::dropOldestLocked() {
  QueryRecord& oldest = ring_[first_];
  keptBytes_ -= heapBytes(oldest);
  trim(oldest);
  first_ = (first_ + 1) % captureCapacity_;
  --kept_;
}

std::vector<QueryRecord> StatsCollector::newestLocked(std::size_t count) const {
  std::vector<QueryRecord> records;
  records.reserve(count);
  for (std::size_t i = kept_ - count; i < kept_; ++i) records.push_back(ring_[(first_ + i) % captureCapacity_]);
  return records;
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
  return newestLocked(kept_);
}

std::vector<QueryRecord> StatsCollector::queriesSince(std::uint64_t sequence) const {
  std::lock_guard lock(mutex_);
  const std::uint64_t newer = capturedTotal_ > sequence ? capturedTotal_ - sequence : 0;
  return newestLocked(static_cast<std::size_t>(std::min<std::uint64_t>(newer, kept_)));
}

std::uint64_t StatsCollector::captureSequence() const {
  std::lock_guard lock(mutex_);
  return capturedTotal_;
}

void StatsCollector::clearQueries() {
  std::lock_guard lock(mutex_);
  while (kept_ > 0) dropOldestLocked();
}

std::size_t StatsCollector::capturedBytes() const {
  std::lock_guard lock(mutex_);
  return keptBytes_;
}

}  // namespace pgwire_proxy::observability
