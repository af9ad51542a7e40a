// Prometheus metrics kept in atomics (no lock on the hot path) and rendered in the text exposition
// format. Fixed label sets are arrays of counters; SQLSTATE classes index a 36x36 table.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <iterator>
#include <map>
#include <string>

#include "observability/session_observer.h"

namespace pgwire_proxy::observability {

// Buckets in seconds; counts kept per bucket and made cumulative when rendered.
template <std::size_t N>
class Histogram {
 public:
  explicit constexpr Histogram(const std::array<double, N>& bounds) : bounds_(bounds) {}
  void observe(double seconds) noexcept;
  void render(std::string& out, std::string_view name) const;

 private:
  std::array<double, N> bounds_;
  std::array<std::atomic<std::uint64_t>, N + 1> counts_{};
  std::atomic<std::uint64_t> sumMicros_{0};
};

enum class RejectReason { kTooManyConnections, kTlsRequired, kProtocolViolation, kUnsupported, kUpstreamError,
                          kShutdown, kOther, kCount };

class Metrics final : public SessionObserver {
 public:
  Metrics();

  void sessionOpened(std::uint64_t sessionId, std::int32_t processId, std::string_view clientAddress,
                     std::string_view applicationName) override;
  void sessionClosed(const SessionSummary& summary) override;
  void sessionRejected(std::uint64_t sessionId, std::string_view clientAddress, std::string_view reason,
                       const ProxyError& error) override;
  void upstreamConnected(std::uint64_t sessionId, double seconds, bool ok) override;
  void upstreamReused(std::uint64_t sessionId) override;
  void tlsHandshake(std::uint64_t sessionId, bool ok) override;
  void authenticationFailed(std::uint64_t sessionId, std::string_view clientAddress, std::string_view user,
                            std::string_view method, std::string_view reason) override;
  void cancelRequested(CancelResult result) override;
  void queryFinished(const QueryRecord& record) override;
  void proxyError(std::uint64_t sessionId, const ProxyError& error) override;
  void faultInjected(std::uint64_t sessionId, std::uint64_t ruleId, std::string_view action,
                     std::string_view queryExcerpt) override;

  // The whole exposition, text format 0.0.4.
  [[nodiscard]] std::string render() const;

  // For the Python API's stats().
  struct Counts {
    std::uint64_t connectionsAccepted, connectionsActive, connectionsRejected, queries, rows, bytes;
    std::map<std::string, std::uint64_t> queriesByOutcome, cancelsByResult, errorsByClass, faultsByAction,
        authFailuresByReason;
  };
  [[nodiscard]] Counts counts() const;

 private:
  void countError(std::string_view sqlstate) noexcept;

  const double startTime_;
  std::atomic<std::int64_t> connectionsActive_{0};
  std::atomic<std::uint64_t> connectionsAccepted_{0};
  std::array<std::atomic<std::uint64_t>, static_cast<std::size_t>(RejectReason::kCount)> rejected_{};
  std::atomic<std::uint64_t> upstreamConnectFailures_{0};
  std::atomic<std::uint64_t> upstreamReused_{0};
  Histogram<10> upstreamConnectSeconds_;
  std::array<std::atomic<std::uint64_t>, 7> queriesByOutcome_{};
  Histogram<15> querySeconds_;
  std::atomic<std::uint64_t> rowsSent_{0};
  std::atomic<std::uint64_t> bytesSent_{0};
  std::array<std::atomic<std::uint64_t>, 36 * 36> errorsByClass_{};
  std::array<std::atomic<std::uint64_t>, 4> cancels_{};
  std::atomic<std::uint64_t> tlsHandshakes_{0};
  std::atomic<std::uint64_t> tlsFailures_{0};
  std::array<std::atomic<std::uint64_t>, 4> faults_{};
  std::array<std::atomic<std::uint64_t>, std::size(kAuthFailureReasons)> authFailures_{};  // by faults::Action: error, delay, drop, notice
};

[[nodiscard]] RejectReason rejectReasonFromName(std::string_view name) noexcept;
[[nodiscard]] std::string_view rejectReasonName(RejectReason reason) noexcept;

}  // namespace pgwire_proxy::observability
