// Counters, live sessions and a bounded query capture, collected from session events for the
// Python API (stats(), sessions(), queries()) and, later, metrics.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "observability/session_observer.h"

namespace pgwire_proxy::observability {

struct StatsSnapshot {
  std::uint64_t connectionsTotal = 0;   // sessions opened
  std::uint64_t activeSessions = 0;
  std::uint64_t queriesTotal = 0;
  std::uint64_t rowsTotal = 0;
  std::uint64_t bytesTotal = 0;
  std::uint64_t cancelRequests = 0;
  std::uint64_t cancelsMatched = 0;
  std::map<std::string, std::uint64_t> errorsBySqlstate;   // every error a client received
  std::map<std::string, std::uint64_t> guardrailsByLimit;  // max-rows, max-bytes, query-timeout, deny, allow
  std::map<std::string, std::uint64_t> queriesByOutcome;   // ok, error, cancelled, limit, denied
};

struct SessionSnapshot {
  std::uint64_t id = 0;
  std::int32_t processId = 0;  // the BackendKeyData pid the client was given
  std::string clientAddress;
  std::string applicationName;
  std::string state;  // "idle" or "active"
  std::chrono::system_clock::time_point connectedAt;
  std::uint64_t queries = 0;
};

class StatsCollector final : public SessionObserver {
 public:
  // Keeps at most `captureCapacity` query records (the oldest go first); 0 keeps none.
  explicit StatsCollector(std::size_t captureCapacity) : captureCapacity_(captureCapacity) {}

  void sessionOpened(std::uint64_t sessionId, std::int32_t processId, std::string_view clientAddress,
                     std::string_view applicationName) override;
  void sessionClosed(std::uint64_t sessionId, std::string_view reason) override;
  void cancelRequested(bool matched) override;
  void queryStarted(std::uint64_t sessionId, std::string_view sql) override;
  void queryFinished(const QueryRecord& record) override;
  void proxyError(std::uint64_t sessionId, const ProxyError& error) override;
  void guardrailTripped(std::uint64_t sessionId, std::string_view limit, std::string_view value, double seconds,
                        std::string_view queryExcerpt) override;

  [[nodiscard]] StatsSnapshot stats() const;
  [[nodiscard]] std::vector<SessionSnapshot> sessions() const;
  [[nodiscard]] std::vector<QueryRecord> queries() const;
  // Records finished after the call with this sequence number (see captureSequence()).
  [[nodiscard]] std::vector<QueryRecord> queriesSince(std::uint64_t sequence) const;
  [[nodiscard]] std::uint64_t captureSequence() const;
  void clearQueries();

 private:
  const std::size_t captureCapacity_;
  mutable std::mutex mutex_;
  StatsSnapshot stats_;
  std::map<std::uint64_t, SessionSnapshot> sessions_;
  std::deque<QueryRecord> captured_;
  std::uint64_t capturedTotal_ = 0;  // sequence number of the newest record
};

}  // namespace pgwire_proxy::observability
