// Prometheus metrics kept in atomics (no lock on the hot path) and rendered in the text exposition format.
#include "observability/metrics.h"

#include <cstdio>

namespace pgwire_proxy::observability {
namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;
constexpr std::string_view kVersion = "0.1.0";

constexpr std::array<QueryOutcome, 7> kOutcomes = {QueryOutcome::kOk,        QueryOutcome::kError,
                                                   QueryOutcome::kCancelled, QueryOutcome::kTimeout,
                                                   QueryOutcome::kLimitRows, QueryOutcome::kLimitBytes,
                                                   QueryOutcome::kDenied};
constexpr std::array<std::string_view, 4> kFaultActions = {"error", "delay", "drop", "notice"};
constexpr std::array<CancelResult, 4> kCancelResults = {CancelResult::kForwarded, CancelResult::kUnmatched,
                                                        CancelResult::kIdle, CancelResult::kPeer};

int classDigit(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'Z') return c - 'A' + 10;
  return -1;
}

char digitChar(int d) noexcept { return static_cast<char>(d < 10 ? '0' + d : 'A' + d - 10); }

std::string number(double value) {
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%.17g", value);
  return buffer;
}

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void sample(std::string& out, std::string_view name, std::string_view labels, std::string_view value) {
  out += name;
  if (!labels.empty()) {
    out += '{';
    out += labels;
    out += '}';
  }
  out += ' ';
  out += value;
  out += '\n';
}

void sample(std::string& out, std::string_view name, std::string_view labels, std::uint64_t value) {
  sample(out, name, labels, std::to_string(value));
}

}  // namespace

template <std::size_t N>
void Histogram<N>::observe(double seconds) noexcept {
  std::size_t bucket = 0;
  while (bucket < N && seconds > bounds_[bucket]) ++bucket;
  counts_[bucket].fetch_add(1, kRelaxed);
  sumMicros_.fetch_add(static_cast<std::uint64_t>(seconds * 1e6), kRelaxed);
}

template <std::size_t N>
void Histogram<N>::render(std::string& out, std::string_view name) const {
  const std::string bucketName = std::string(name) + "_bucket";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < N; ++i) {
    cumulative += counts_[i].load(kRelaxed);
    sample(out, bucketName, "le=\"" + number(bounds_[i]) + "\"", cumulative);
  }
  cumulative += counts_[N].load(kRelaxed);
  sample(out, bucketName, "le=\"+Inf\"", cumulative);
  sample(out, std::string(name) + "_sum", "", number(static_cast<double>(sumMicros_.load(kRelaxed)) / 1e6));
  sample(out, std::string(name) + "_count", "", cumulative);
}

std::string_view rejectReasonName(RejectReason reason) noexcept {
  switch (reason) {
    case RejectReason::kTooManyConnections: return "too_many_connections";
    case RejectReason::kTlsRequired: return "tls_required";
    case RejectReason::kProtocolViolation: return "protocol_violation";
    case RejectReason::kUnsupported: return "unsupported";
    case RejectReason::kUpstreamError: return "upstream_error";
    case RejectReason::kShutdown: return "shutdown";
    default: return "other";
  }
}

RejectReason rejectReasonFromName(std::string_view name) noexcept {
  for (int i = 0; i < static_cast<int>(RejectReason::kCount); ++i) {
    if (rejectReasonName(static_cast<RejectReason>(i)) == name) return static_cast<RejectReason>(i);
  }
  return RejectReason::kOther;
}

Metrics::Metrics()
    : startTime_(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count()),
      upstreamConnectSeconds_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 10}),
      querySeconds_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}) {}

void Metrics::sessionOpened(std::uint64_t, std::int32_t, std::string_view, std::string_view) {
  connectionsAccepted_.fetch_add(1, kRelaxed);
  connectionsActive_.fetch_add(1, kRelaxed);
}

void Metrics::sessionClosed(const SessionSummary&) { connectionsActive_.fetch_sub(1, kRelaxed); }

void Metrics::sessionRejected(std::uint64_t, std::string_view, std::string_view reason, const ProxyError& error) {
  rejected_[static_cast<std::size_t>(rejectReasonFromName(reason))].fetch_add(1, kRelaxed);
  countError(error.sqlstate());
}

void Metrics::upstreamConnected(std::uint64_t, double seconds, bool ok) {
  upstreamConnectSeconds_.observe(seconds);
  if (!ok) upstreamConnectFailures_.fetch_add(1, kRelaxed);
}

void Metrics::upstreamReused(std::uint64_t) { upstreamReused_.fetch_add(1, kRelaxed); }

void Metrics::authenticationFailed(std::uint64_t, std::string_view, std::string_view, std::string_view,
                                   std::string_view reason) {
  for (std::size_t i = 0; i < authFailures_.size(); ++i) {
    if (kAuthFailureReasons[i] == reason) authFailures_[i].fetch_add(1, kRelaxed);
  }
}

void Metrics::tlsHandshake(std::uint64_t, bool ok) {
  tlsHandshakes_.fetch_add(1, kRelaxed);
  if (!ok) tlsFailures_.fetch_add(1, kRelaxed);
}

void Metrics::cancelRequested(CancelResult result) {
  for (std::size_t i = 0; i < kCancelResults.size(); ++i) {
    if (kCancelResults[i] == result) cancels_[i].fetch_add(1, kRelaxed);
  }
}

void Metrics::queryFinished(const QueryRecord& record) {
  queriesByOutcome_[static_cast<std::size_t>(record.outcome)].fetch_add(1, kRelaxed);
  querySeconds_.observe(record.seconds);
  rowsSent_.fetch_add(record.rows, kRelaxed);
  bytesSent_.fetch_add(record.bytes, kRelaxed);
  if (!record.sqlstate.empty()) countError(record.sqlstate);
}

void Metrics::proxyError(std::uint64_t, const ProxyError& error) { countError(error.sqlstate()); }

void Metrics::countError(std::string_view sqlstate) noexcept {
  if (sqlstate.size() < 2) return;
  const int a = classDigit(sqlstate[0]);
  const int b = classDigit(sqlstate[1]);
  if (a < 0 || b < 0) return;
  errorsByClass_[static_cast<std::size_t>(a * 36 + b)].fetch_add(1, kRelaxed);
}

std::string Metrics::render() const {
  std::string out;
  out.reserve(8192);
  header(out, "pgwire_proxy_build_info", "gauge", "Build information; the value is always 1.");
  sample(out, "pgwire_proxy_build_info", "version=\"" + std::string(kVersion) + "\"", "1");
  header(out, "pgwire_proxy_process_start_time_seconds", "gauge", "When the proxy started, in Unix seconds.");
  sample(out, "pgwire_proxy_process_start_time_seconds", "", number(startTime_));

  header(out, "pgwire_proxy_client_connections_active", "gauge", "Client sessions open now.");
  sample(out, "pgwire_proxy_client_connections_active", "",
         static_cast<std::uint64_t>(std::max<std::int64_t>(0, connectionsActive_.load(kRelaxed))));
  header(out, "pgwire_proxy_client_connections_accepted_total", "counter", "Client sessions opened.");
  sample(out, "pgwire_proxy_client_connections_accepted_total", "", connectionsAccepted_.load(kRelaxed));
  header(out, "pgwire_proxy_client_connections_rejected_total", "counter",
         "Clients turned away before their session opened, by reason.");
  for (int i = 0; i < static_cast<int>(RejectReason::kCount); ++i) {
    sample(out, "pgwire_proxy_client_connections_rejected_total",
           "reason=\"" + std::string(rejectReasonName(static_cast<RejectReason>(i))) + "\"",
           rejected_[static_cast<std::size_t>(i)].load(kRelaxed));
  }

  header(out, "pgwire_proxy_upstream_connect_duration_seconds", "histogram",
         "Time to connect and authenticate upstream, failures included.");
  upstreamConnectSeconds_.render(out, "pgwire_proxy_upstream_connect_duration_seconds");
  header(out, "pgwire_proxy_upstream_connect_failures_total", "counter", "Upstream connections that failed.");
  sample(out, "pgwire_proxy_upstream_connect_failures_total", "", upstreamConnectFailures_.load(kRelaxed));
  header(out, "pgwire_proxy_upstream_reused_total", "counter",
         "Sessions given a reset upstream connection of an earlier client (--reuse-upstream).");
  sample(out, "pgwire_proxy_upstream_reused_total", "", upstreamReused_.load(kRelaxed));

  header(out, "pgwire_proxy_queries_total", "counter", "Query messages completed, by outcome.");
  for (std::size_t i = 0; i < kOutcomes.size(); ++i) {
    sample(out, "pgwire_proxy_queries_total", "outcome=\"" + std::string(outcomeName(kOutcomes[i])) + "\"",
           queriesByOutcome_[static_cast<std::size_t>(kOutcomes[i])].load(kRelaxed));
  }
  header(out, "pgwire_proxy_query_duration_seconds", "histogram",
         "Time from a Query message to its ReadyForQuery.");
  querySeconds_.render(out, "pgwire_proxy_query_duration_seconds");
  header(out, "pgwire_proxy_rows_sent_total", "counter", "DataRows sent to clients.");
  sample(out, "pgwire_proxy_rows_sent_total", "", rowsSent_.load(kRelaxed));
  header(out, "pgwire_proxy_bytes_sent_total", "counter", "Result bytes (DataRow messages) sent to clients.");
  sample(out, "pgwire_proxy_bytes_sent_total", "", bytesSent_.load(kRelaxed));

  header(out, "pgwire_proxy_errors_total", "counter",
         "Errors clients received (the upstream's and the proxy's own), by SQLSTATE class.");
  for (std::size_t i = 0; i < errorsByClass_.size(); ++i) {
    const auto count = errorsByClass_[i].load(kRelaxed);
    if (count == 0) continue;  // only classes that occurred
    const std::string cls{digitChar(static_cast<int>(i / 36)), digitChar(static_cast<int>(i % 36))};
    sample(out, "pgwire_proxy_errors_total", "sqlstate_class=\"" + cls + "\"", count);
  }

  header(out, "pgwire_proxy_cancel_requests_total", "counter",
         "CancelRequests by result: matched (forwarded upstream), unmatched (no such key), idle (nothing running).");
  for (std::size_t i = 0; i < kCancelResults.size(); ++i) {
    sample(out, "pgwire_proxy_cancel_requests_total",
           "result=\"" + std::string(cancelResultName(kCancelResults[i])) + "\"", cancels_[i].load(kRelaxed));
  }
  header(out, "pgwire_proxy_tls_handshakes_total", "counter", "Client TLS handshakes attempted.");
  sample(out, "pgwire_proxy_tls_handshakes_total", "", tlsHandshakes_.load(kRelaxed));
  header(out, "pgwire_proxy_tls_handshake_failures_total", "counter", "Client TLS handshakes that failed.");
  sample(out, "pgwire_proxy_tls_handshake_failures_total", "", tlsFailures_.load(kRelaxed));
  header(out, "pgwire_proxy_auth_failures_total", "counter",
         "Client authentications that failed (--auth), by reason.");
  for (std::size_t i = 0; i < authFailures_.size(); ++i) {
    sample(out, "pgwire_proxy_auth_failures_total", "reason=\"" + std::string(kAuthFailureReasons[i]) + "\"",
           authFailures_[i].load(kRelaxed));
  }
  header(out, "pgwire_proxy_faults_injected_total", "counter",
         "Faults injected by fault rules (--faults, Proxy.add_fault), by action.");
  for (std::size_t i = 0; i < kFaultActions.size(); ++i) {
    sample(out, "pgwire_proxy_faults_injected_total", "action=\"" + std::string(kFaultActions[i]) + "\"",
           faults_[i].load(kRelaxed));
  }
  return out;
}

void Metrics::faultInjected(std::uint64_t, std::uint64_t, std::string_view action, std::string_view) {
  for (std::size_t i = 0; i < kFaultActions.size(); ++i) {
    if (kFaultActions[i] == action) faults_[i].fetch_add(1, kRelaxed);
  }
}

Metrics::Counts Metrics::counts() const {
  Counts c{};
  c.connectionsAccepted = connectionsAccepted_.load(kRelaxed);
  c.connectionsActive = static_cast<std::uint64_t>(std::max<std::int64_t>(0, connectionsActive_.load(kRelaxed)));
  for (const auto& r : rejected_) c.connectionsRejected += r.load(kRelaxed);
  for (std::size_t i = 0; i < kOutcomes.size(); ++i) {
    const auto n = queriesByOutcome_[static_cast<std::size_t>(kOutcomes[i])].load(kRelaxed);
    c.queries += n;
    if (n != 0) c.queriesByOutcome[std::string(outcomeName(kOutcomes[i]))] = n;
  }
  c.rows = rowsSent_.load(kRelaxed);
  c.bytes = bytesSent_.load(kRelaxed);
  for (std::size_t i = 0; i < kCancelResults.size(); ++i) {
    c.cancelsByResult[std::string(cancelResultName(kCancelResults[i]))] = cancels_[i].load(kRelaxed);
  }
  for (std::size_t i = 0; i < errorsByClass_.size(); ++i) {
    if (const auto n = errorsByClass_[i].load(kRelaxed)) {
      c.errorsByClass[{digitChar(static_cast<int>(i / 36)), digitChar(static_cast<int>(i % 36))}] = n;
    }
  }
  for (std::size_t i = 0; i < kFaultActions.size(); ++i) {
    c.faultsByAction[std::string(kFaultActions[i])] = faults_[i].load(kRelaxed);
  }
  for (std::size_t i = 0; i < authFailures_.size(); ++i) {
    c.authFailuresByReason[std::string(kAuthFailureReasons[i])] = authFailures_[i].load(kRelaxed);
  }
  return c;
}

}  // namespace pgwire_proxy::observability
