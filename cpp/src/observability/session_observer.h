// The events a session reports; metrics, logs and query capture implement this, the session knows none.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/errors.h"

namespace pgwire_proxy::observability {

// How a Query message ended.
enum class QueryOutcome { kOk, kError, kCancelled, kLimit, kDenied };
[[nodiscard]] std::string_view outcomeName(QueryOutcome outcome) noexcept;

// One Query message, from the client's send to its ReadyForQuery.
struct QueryRecord {
  std::uint64_t sessionId = 0;
  std::string sql;
  std::chrono::system_clock::time_point started;
  double seconds = 0;
  std::uint64_t rows = 0;    // DataRows sent to the client
  std::uint64_t bytes = 0;   // result bytes sent to the client
  std::string commandTag;    // the last CommandComplete tag ("SELECT 3", "INSERT 0 1")
  std::string sqlstate;      // the first error's SQLSTATE; empty when none
  QueryOutcome outcome = QueryOutcome::kOk;
};

// Every method has an empty default so an observer implements only what it needs. Called on session
// threads (several at once): implementations are thread-safe and quick.
class SessionObserver {
 public:
  virtual ~SessionObserver() = default;

  // `processId` is the BackendKeyData pid the client was given.
  virtual void sessionOpened(std::uint64_t /*sessionId*/, std::int32_t /*processId*/,
                             std::string_view /*clientAddress*/, std::string_view /*applicationName*/) {}
  virtual void sessionClosed(std::uint64_t /*sessionId*/, std::string_view /*reason*/) {}
  // A CancelRequest arrived; `matched` when its key named a live session.
  virtual void cancelRequested(bool /*matched*/) {}
  virtual void queryStarted(std::uint64_t /*sessionId*/, std::string_view /*sql*/) {}
  virtual void queryFinished(const QueryRecord& /*record*/) {}
  // The proxy answered a client with an error of its own (refusal, limit, protocol violation ...).
  virtual void proxyError(std::uint64_t /*sessionId*/, const ProxyError& /*error*/) {}
  // A guardrail ended or refused a query: `limit` names it (max-rows, max-bytes, query-timeout, deny,
  // allow), `value` is its configured value, `queryExcerpt` the start of the query text.
  virtual void guardrailTripped(std::uint64_t /*sessionId*/, std::string_view /*limit*/,
                                std::string_view /*value*/, double /*seconds*/,
                                std::string_view /*queryExcerpt*/) {}
};

// Forwards every event to each observer in turn.
class ObserverList final : public SessionObserver {
 public:
  void add(std::shared_ptr<SessionObserver> observer) { observers_.push_back(std::move(observer)); }

  void sessionOpened(std::uint64_t id, std::int32_t pid, std::string_view address, std::string_view app) override {
    for (auto& o : observers_) o->sessionOpened(id, pid, address, app);
  }
  void sessionClosed(std::uint64_t id, std::string_view reason) override {
    for (auto& o : observers_) o->sessionClosed(id, reason);
  }
  void cancelRequested(bool matched) override {
    for (auto& o : observers_) o->cancelRequested(matched);
  }
  void queryStarted(std::uint64_t id, std::string_view sql) override {
    for (auto& o : observers_) o->queryStarted(id, sql);
  }
  void queryFinished(const QueryRecord& record) override {
    for (auto& o : observers_) o->queryFinished(record);
  }
  void proxyError(std::uint64_t id, const ProxyError& error) override {
    for (auto& o : observers_) o->proxyError(id, error);
  }
  void guardrailTripped(std::uint64_t id, std::string_view limit, std::string_view value, double seconds,
                        std::string_view excerpt) override {
    for (auto& o : observers_) o->guardrailTripped(id, limit, value, seconds, excerpt);
  }

 private:
  std::vector<std::shared_ptr<SessionObserver>> observers_;
};

// Logs each event as one line (sessions at info, errors and guardrails at warning, queries at debug).
class LoggingObserver final : public SessionObserver {
 public:
  void sessionOpened(std::uint64_t sessionId, std::int32_t processId, std::string_view clientAddress,
                     std::string_view applicationName) override;
  void sessionClosed(std::uint64_t sessionId, std::string_view reason) override;
  void proxyError(std::uint64_t sessionId, const ProxyError& error) override;
  void guardrailTripped(std::uint64_t sessionId, std::string_view limit, std::string_view value, double seconds,
                        std::string_view queryExcerpt) override;
  void queryFinished(const QueryRecord& record) override;
};

// Quotes a value for a key="value" log field: backslash-escapes quotes, flattens line breaks.
[[nodiscard]] std::string logQuote(std::string_view text, std::size_t maxLength = 200);

}  // namespace pgwire_proxy::observability
