// The events a session reports; metrics and logs implement this, the session knows neither.
#pragma once

#include <cstdint>
#include <string_view>

#include "protocol/errors.h"

namespace pgwire_proxy::observability {

class SessionObserver {
 public:
  virtual ~SessionObserver() = default;

  virtual void sessionOpened(std::uint64_t sessionId, std::string_view clientAddress,
                             std::string_view applicationName) = 0;
  virtual void sessionClosed(std::uint64_t sessionId, std::string_view reason) = 0;
  // The proxy answered a client with an error of its own (refusal, limit, protocol violation ...).
  virtual void proxyError(std::uint64_t sessionId, const ProxyError& error) = 0;
  // A guardrail ended or refused a query: `limit` names it (max-rows, max-bytes, query-timeout, deny,
  // allow), `value` is its configured value, `queryExcerpt` the start of the query text.
  virtual void guardrailTripped(std::uint64_t sessionId, std::string_view limit, std::string_view value,
                                double seconds, std::string_view queryExcerpt) = 0;
  // A Query message completed (ReadyForQuery seen); sqlstate is empty when it succeeded.
  virtual void queryFinished(std::uint64_t sessionId, std::string_view sqlstate, std::uint64_t rows,
                             std::uint64_t bytes, double seconds) = 0;
};

// Logs each event as one line (sessions at info, errors at warning, queries at debug).
class LoggingObserver final : public SessionObserver {
 public:
  void sessionOpened(std::uint64_t sessionId, std::string_view clientAddress,
                     std::string_view applicationName) override;
  void sessionClosed(std::uint64_t sessionId, std::string_view reason) override;
  void proxyError(std::uint64_t sessionId, const ProxyError& error) override;
  void guardrailTripped(std::uint64_t sessionId, std::string_view limit, std::string_view value, double seconds,
                        std::string_view queryExcerpt) override;
  void queryFinished(std::uint64_t sessionId, std::string_view sqlstate, std::uint64_t rows, std::uint64_t bytes,
                     double seconds) override;
};

}  // namespace pgwire_proxy::observability
