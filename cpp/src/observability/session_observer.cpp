// The events a session reports; metrics, logs and query capture implement this, the session knows none.
#include "observability/session_observer.h"

#include <string>

#include "observability/log.h"

namespace pgwire_proxy::observability {

std::string_view outcomeName(QueryOutcome outcome) noexcept {
  switch (outcome) {
    case QueryOutcome::kOk: return "ok";
    case QueryOutcome::kError: return "error";
    case QueryOutcome::kCancelled: return "cancelled";
    case QueryOutcome::kTimeout: return "timeout";
    case QueryOutcome::kLimitRows: return "limit_rows";
    case QueryOutcome::kLimitBytes: return "limit_bytes";
    case QueryOutcome::kDenied: return "denied";
  }
  return "unknown";
}

std::string_view cancelResultName(CancelResult result) noexcept {
  switch (result) {
    case CancelResult::kUnmatched: return "unmatched";
    case CancelResult::kIdle: return "idle";
    case CancelResult::kForwarded: return "matched";
    case CancelResult::kPeer: return "peer";
  }
  return "unknown";
}

std::string queryExcerpt(std::string_view sql, std::size_t maxLength) {
  if (sql.size() <= maxLength) return std::string(sql);
  // Do not cut a UTF-8 sequence in half.
  std::size_t cut = maxLength;
  while (cut > 0 && (static_cast<unsigned char>(sql[cut]) & 0xC0) == 0x80) --cut;
  return std::string(sql.substr(0, cut)) + "...";
}

void LoggingObserver::sessionOpened(std::uint64_t sessionId, std::int32_t processId, std::string_view clientAddress,
                                    std::string_view applicationName) {
  logEvent(LogLevel::kInfo, "session_opened",
           {{"session", sessionId}, {"pid", static_cast<std::int64_t>(processId)}, {"client", clientAddress},
            {"application_name", applicationName}});
}

void LoggingObserver::sessionClosed(const SessionSummary& s) {
  logEvent(LogLevel::kInfo, "session_closed",
           {{"session", s.sessionId}, {"client", s.clientAddress}, {"user", s.user}, {"database", s.database},
            {"application_name", s.applicationName}, {"duration_seconds", s.seconds}, {"queries", s.queries},
            {"rows", s.rows}, {"bytes", s.bytes}, {"reason", s.reason}});
}

void LoggingObserver::sessionRejected(std::uint64_t sessionId, std::string_view clientAddress,
                                      std::string_view reason, const ProxyError& error) {
  logEvent(LogLevel::kWarning, "session_rejected",
           {{"session", sessionId}, {"client", clientAddress}, {"reason", reason}, {"sqlstate", error.sqlstate()},
            {"message", error.message()}});
}

void LoggingObserver::authenticationFailed(std::uint64_t sessionId, std::string_view clientAddress,
                                           std::string_view user, std::string_view method, std::string_view reason) {
  logEvent(LogLevel::kWarning, "auth_failed",
           {{"session", sessionId}, {"client", clientAddress}, {"user", user}, {"method", method}, {"reason", reason}});
}

void LoggingObserver::proxyError(std::uint64_t sessionId, const ProxyError& error) {
  logEvent(LogLevel::kWarning, "proxy_error",
           {{"session", sessionId}, {"sqlstate", error.sqlstate()}, {"message", error.message()}});
}

void LoggingObserver::faultInjected(std::uint64_t sessionId, std::uint64_t ruleId, std::string_view action,
                                    std::string_view excerpt) {
  logEvent(LogLevel::kInfo, "fault_injected",
           {{"session", sessionId}, {"rule", static_cast<std::int64_t>(ruleId)}, {"action", std::string(action)},
            {"query", std::string(excerpt)}});
}

void LoggingObserver::queryFinished(const QueryRecord& r) {
  const bool failed = r.outcome != QueryOutcome::kOk;
  if (!logQueries_ && !failed) return;
  // Failed queries always get a line (the proxy's own refusals are warnings, upstream errors info).
  const bool proxysOwn = r.outcome == QueryOutcome::kLimitRows || r.outcome == QueryOutcome::kLimitBytes ||
                         r.outcome == QueryOutcome::kDenied || r.outcome == QueryOutcome::kTimeout;
  const std::string excerpt = queryExcerpt(r.sql);
  logEvent(proxysOwn ? LogLevel::kWarning : LogLevel::kInfo, failed ? "query_failed" : "query",
           {{"session", r.sessionId}, {"outcome", outcomeName(r.outcome)},
            {"sqlstate", r.sqlstate.empty() ? std::string_view("00000") : std::string_view(r.sqlstate)},
            {"message", r.errorMessage}, {"tag", r.commandTag}, {"rows", r.rows}, {"bytes", r.bytes},
            {"query_seconds", r.seconds}, {"query", excerpt}});
}

}  // namespace pgwire_proxy::observability
