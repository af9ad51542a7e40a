// For the Python API: live sessions, a bounded query capture, and errors by full SQLSTATE and
// guardrails by limit (Metrics has the lock-free counters; this observer takes a mutex per event and is
// only installed in-process, where tests read it). The capture is a ring of records whose storage is
// reused, so a query costs a copy of its text and no allocation; it is bounded in records and in the
// bytes its texts hold.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "observability/session_observer.h"

namespace pgwire_proxy::observability {

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
  // Keeps at most `captureCapacity` query records (the oldest go first); 0 keeps none. The texts the
  // records hold (their strings' storage) stay within `captureBytes` too, the oldest records going
  // first, except that the newest record is always kept; 0: no bound in bytes.
  StatsCollector(std::size_t captureCapacity, std::size_t captureBytes)
      : captureCapacity_(captureCapacity), captureBytes_(captureBytes) {}

  void sessionOpened(std::uint64_t sessionId, std::int32_t processId, std::string_view clientAddress,
                     std::string_view applicationName) override;
  void sessionClosed(const SessionSummary& summary) override;
  void sessionRejected(std::uint64_t sessionId, std::string_view clientAddress, std::string_view reason,
                       const ProxyError& error) override;
  void queryStarted(std::uint64_t sessionId, std::string_view sql) override;
  void queryFinished(const QueryRecord& record) override;
  void proxyError(std::uint64_t sessionId, const ProxyError& error) override;
  void guardrailTripped(std::uint64_t sessionId, std::string_view limit, std::string_view value, double seconds,
                        std::string_view queryExcerpt) override;

  [[nodiscard]] std::map<std::string, std::uint64_t> errorsBySqlstate() const;
  [[nodiscard]] std::map<std::string, std::uint64_t> guardrailsByLimit() const;
  [[nodiscard]] std::vector<SessionSnapshot> sessions() const;
  [[nodiscard]] std::vector<QueryRecord> queries() const;
  // Records finished after captureSequence() returned `sequence` (those still kept).
  [[nodiscard]] std::vector<QueryRecord> queriesSince(std::uint64_t sequence) const;
  [[nodiscard]] std::uint64_t captureSequence() const;
  void clearQueries();
  // The bytes the kept records' strings hold (what captureBytes bounds).
  [[nodiscard]] std::size_t capturedBytes() const;

 private:
  void captureLocked(const QueryRecord& record);
  void dropOldestLocked();
  [[nodiscard]] std::vector<QueryRecord> newestLocked(std::size_t count) const;

  const std::size_t captureCapacity_;
  const std::size_t captureBytes_;
  mutable std::mutex mutex_;
  std::map<std::string, std::uint64_t> errorsBySqlstate_;
  std::map<std::string, std::uint64_t> guardrailsByLimit_;
  std::map<std::uint64_t, SessionSnapshot> sessions_;
  // The kept records are ring_[(first_ + i) % captureCapacity_] for i < kept_, oldest first; the ring
  // grows to captureCapacity_ and its records are then assigned over (their strings keep their storage).
  std::vector<QueryRecord> ring_;
  std::size_t first_ = 0;
  std::size_t kept_ = 0;
  std::size_t keptBytes_ = 0;
  std::uint64_t capturedTotal_ = 0;  // sequence number of the newest record
};

}  // namespace pgwire_proxy::observability
