// The events a session reports; metrics and logs implement this, the session knows neither.
#include "observability/session_observer.h"

#include <string>

#include "observability/log.h"

namespace pgwire_proxy::observability {

void LoggingObserver::sessionOpened(std::uint64_t sessionId, std::string_view clientAddress,
                                    std::string_view applicationName) {
  logInfo("event=session_opened session=" + std::to_string(sessionId) + " client=" + std::string(clientAddress) +
          " application_name=\"" + std::string(applicationName) + "\"");
}

void LoggingObserver::sessionClosed(std::uint64_t sessionId, std::string_view reason) {
  logInfo("event=session_closed session=" + std::to_string(sessionId) + " reason=\"" + std::string(reason) + "\"");
}

void LoggingObserver::proxyError(std::uint64_t sessionId, const ProxyError& error) {
  logWarning("event=proxy_error session=" + std::to_string(sessionId) + " sqlstate=" + error.sqlstate() +
             " message=\"" + std::string(error.message()) + "\"");
}

void LoggingObserver::guardrailTripped(std::uint64_t sessionId, std::string_view limit, std::string_view value,
                                       double seconds, std::string_view queryExcerpt) {
  std::string excerpt;
  for (char c : queryExcerpt) {
    if (c == '"' || c == '\\') excerpt += '\\';
    excerpt += (c == '\n' || c == '\r' || c == '\t') ? ' ' : c;
  }
  logWarning("event=guardrail session=" + std::to_string(sessionId) + " limit=" + std::string(limit) + " value=" +
             std::string(value) + " seconds=" + std::to_string(seconds) + " query=\"" + excerpt + "\"");
}

void LoggingObserver::queryFinished(std::uint64_t sessionId, std::string_view sqlstate, std::uint64_t rows,
                                    std::uint64_t bytes, double seconds) {
  if (!Logger::instance().enabled(LogLevel::kDebug)) return;
  logDebug("event=query_finished session=" + std::to_string(sessionId) + " sqlstate=" +
           (sqlstate.empty() ? std::string("00000") : std::string(sqlstate)) + " rows=" + std::to_string(rows) +
           " bytes=" + std::to_string(bytes) + " seconds=" + std::to_string(seconds));
}

}  // namespace pgwire_proxy::observability
