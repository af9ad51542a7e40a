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
    case QueryOutcome::kLimit: return "limit";
    case QueryOutcome::kDenied: return "denied";
  }
  return "unknown";
}

std::string logQuote(std::string_view text, std::size_t maxLength) {
  std::string out = "\"";
  for (std::size_t i = 0; i < text.size() && i < maxLength; ++i) {
    const char c = text[i];
    if (c == '"' || c == '\\') out += '\\';
    out += (c == '\n' || c == '\r' || c == '\t') ? ' ' : c;
  }
  if (text.size() > maxLength) out += "...";
  out += '"';
  return out;
}

void LoggingObserver::sessionOpened(std::uint64_t sessionId, std::int32_t processId, std::string_view clientAddress,
                                    std::string_view applicationName) {
  logInfo("event=session_opened session=" + std::to_string(sessionId) + " pid=" + std::to_string(processId) +
          " client=" + std::string(clientAddress) +
          " application_name=" + logQuote(applicationName));
}

void LoggingObserver::sessionClosed(std::uint64_t sessionId, std::string_view reason) {
  logInfo("event=session_closed session=" + std::to_string(sessionId) + " reason=" + logQuote(reason));
}

void LoggingObserver::proxyError(std::uint64_t sessionId, const ProxyError& error) {
  logWarning("event=proxy_error session=" + std::to_string(sessionId) + " sqlstate=" + error.sqlstate() +
             " message=" + logQuote(error.message()));
}

void LoggingObserver::guardrailTripped(std::uint64_t sessionId, std::string_view limit, std::string_view value,
                                       double seconds, std::string_view queryExcerpt) {
  logWarning("event=guardrail session=" + std::to_string(sessionId) + " limit=" + std::string(limit) + " value=" +
             std::string(value) + " seconds=" + std::to_string(seconds) + " query=" + logQuote(queryExcerpt));
}

void LoggingObserver::queryFinished(const QueryRecord& record) {
  if (!Logger::instance().enabled(LogLevel::kDebug)) return;
  logDebug("event=query session=" + std::to_string(record.sessionId) + " outcome=" +
           std::string(outcomeName(record.outcome)) + " sqlstate=" +
           (record.sqlstate.empty() ? std::string("00000") : record.sqlstate) + " tag=" + logQuote(record.commandTag) +
           " rows=" + std::to_string(record.rows) + " bytes=" + std::to_string(record.bytes) +
           " seconds=" + std::to_string(record.seconds) + " query=" + logQuote(record.sql));
}

}  // namespace pgwire_proxy::observability
