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
enum class QueryOutcome { kOk, kError, kCancelled, kTimeout, kLimitRows, kLimitBytes, kDenied };
// "ok", "error", "cancelled", "timeout", "limit_rows", "limit_bytes", "denied".
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
  std::string errorMessage;  // and its primary message
  QueryOutcome outcome = QueryOutcome::kOk;
  std::string injected;      // the fault injected into it ("error", "delay", "drop", "notice"); empty: none
};

// A session at its end.
struct SessionSummary {
  std::uint64_t sessionId = 0;
  std::string_view clientAddress;
  std::string_view user;
  std::string_view database;
  std::string_view applicationName;
  double seconds = 0;
  std::uint64_t queries = 0;
  std::uint64_t rows = 0;
  std::uint64_t bytes = 0;
  std::string_view reason;
};

// Why a client authentication failed: wrong_password, unknown_user (SCRAM against --auth-file),
// upstream_rejected (passthrough: the upstream's verdict), insecure_transport (passthrough without
// TLS from a non-loopback peer), protocol_violation, channel_binding, timeout (--startup-timeout),
// abandoned (the client left mid-exchange: libpq without a password, psql before it prompts).
inline constexpr std::string_view kAuthFailureReasons[] = {"wrong_password",     "unknown_user",    "upstream_rejected",
                                                           "insecure_transport", "protocol_violation",
                                                           "channel_binding",    "timeout",         "abandoned"};

// kPeer: the key belongs to another instance and the request was forwarded to it (--peers).
enum class CancelResult { kUnmatched, kIdle, kForwarded, kPeer };
[[nodiscard]] std::string_view cancelResultName(CancelResult result) noexcept;

// Every method has an empty default so an observer implements only what it needs. Called on session
// threads (several at once): implementations are thread-safe and quick.
class SessionObserver {
 public:
  virtual ~SessionObserver() = default;

  // `processId` is the BackendKeyData pid the client was given.
  virtual void sessionOpened(std::uint64_t /*sessionId*/, std::int32_t /*processId*/,
                             std::string_view /*clientAddress*/, std::string_view /*applicationName*/) {}
  virtual void sessionClosed(const SessionSummary& /*summary*/) {}
  // A client was turned away before its session opened; `reason` is a metric label
  // (too_many_connections, tls_required, protocol_violation, unsupported, upstream_error, shutdown).
  virtual void sessionRejected(std::uint64_t /*sessionId*/, std::string_view /*clientAddress*/,
                               std::string_view /*reason*/, const ProxyError& /*error*/) {}
  virtual void upstreamConnected(std::uint64_t /*sessionId*/, double /*seconds*/, bool /*ok*/) {}
  // --reuse-upstream gave the session a parked connection instead of a new one.
  virtual void upstreamReused(std::uint64_t /*sessionId*/) {}
  // A client failed to authenticate (--auth): `method` passthrough or scram-sha-256, `reason` one of
  // kAuthFailureReasons (a metric label). Never a password.
  virtual void authenticationFailed(std::uint64_t /*sessionId*/, std::string_view /*clientAddress*/,
                                    std::string_view /*user*/, std::string_view /*method*/,
                                    std::string_view /*reason*/) {}
  virtual void tlsHandshake(std::uint64_t /*sessionId*/, bool /*ok*/) {}
  virtual void cancelRequested(CancelResult /*result*/) {}
  virtual void queryStarted(std::uint64_t /*sessionId*/, std::string_view /*sql*/) {}
  virtual void queryFinished(const QueryRecord& /*record*/) {}
  // The proxy answered an open session with an error of its own outside a query (extended protocol,
  // protocol violation, shutdown, upstream lost ...); a query's errors come with its QueryRecord.
  virtual void proxyError(std::uint64_t /*sessionId*/, const ProxyError& /*error*/) {}
  // A guardrail ended or refused a query: `limit` names it (max-rows, max-bytes, query-timeout, deny,
  // allow), `value` is its configured value, `queryExcerpt` the start of the query text.
  virtual void guardrailTripped(std::uint64_t /*sessionId*/, std::string_view /*limit*/,
                                std::string_view /*value*/, double /*seconds*/,
                                std::string_view /*queryExcerpt*/) {}
  // A fault rule fired on a query (`action`: error, delay, drop, notice).
  virtual void faultInjected(std::uint64_t /*sessionId*/, std::uint64_t /*ruleId*/, std::string_view /*action*/,
                             std::string_view /*queryExcerpt*/) {}
};

// Forwards every event to each observer in turn.
class ObserverList final : public SessionObserver {
 public:
  void add(std::shared_ptr<SessionObserver> observer) { observers_.push_back(std::move(observer)); }

  void sessionOpened(std::uint64_t id, std::int32_t pid, std::string_view address, std::string_view app) override {
    for (auto& o : observers_) o->sessionOpened(id, pid, address, app);
  }
  void sessionClosed(const SessionSummary& summary) override {
    for (auto& o : observers_) o->sessionClosed(summary);
  }
  void sessionRejected(std::uint64_t id, std::string_view address, std::string_view reason,
                       const ProxyError& error) override {
    for (auto& o : observers_) o->sessionRejected(id, address, reason, error);
  }
  void upstreamConnected(std::uint64_t id, double seconds, bool ok) override {
    for (auto& o : observers_) o->upstreamConnected(id, seconds, ok);
  }
  void upstreamReused(std::uint64_t id) override {
    for (auto& o : observers_) o->upstreamReused(id);
  }
  void tlsHandshake(std::uint64_t id, bool ok) override {
    for (auto& o : observers_) o->tlsHandshake(id, ok);
  }
  void authenticationFailed(std::uint64_t id, std::string_view address, std::string_view user, std::string_view method,
                            std::string_view reason) override {
    for (auto& o : observers_) o->authenticationFailed(id, address, user, method, reason);
  }
  void cancelRequested(CancelResult result) override {
    for (auto& o : observers_) o->cancelRequested(result);
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

  void faultInjected(std::uint64_t id, std::uint64_t rule, std::string_view action, std::string_view excerpt) override {
    for (auto& o : observers_) o->faultInjected(id, rule, action, excerpt);
  }

 private:
  std::vector<std::shared_ptr<SessionObserver>> observers_;
};

// Logs events through the Logger: connections at info; every failed query (with its outcome, SQLSTATE,
// message, duration and an excerpt) at warning when the proxy failed it (limits, timeouts, denials)
// and at info for upstream errors; every query at info when `logQueries`. (Not final: the server
// lowers the level of what its own requested shutdown causes.)
class LoggingObserver : public SessionObserver {
 public:
  explicit LoggingObserver(bool logQueries = false) : logQueries_(logQueries) {}

  void sessionOpened(std::uint64_t sessionId, std::int32_t processId, std::string_view clientAddress,
                     std::string_view applicationName) override;
  void sessionClosed(const SessionSummary& summary) override;
  void sessionRejected(std::uint64_t sessionId, std::string_view clientAddress, std::string_view reason,
                       const ProxyError& error) override;
  void proxyError(std::uint64_t sessionId, const ProxyError& error) override;
  void queryFinished(const QueryRecord& record) override;
  void faultInjected(std::uint64_t sessionId, std::uint64_t ruleId, std::string_view action,
                     std::string_view queryExcerpt) override;
  void authenticationFailed(std::uint64_t sessionId, std::string_view clientAddress, std::string_view user,
                            std::string_view method, std::string_view reason) override;

 private:
  const bool logQueries_;
};

// The start of a query text for logs (at most `maxLength` bytes, "..." when cut).
[[nodiscard]] std::string queryExcerpt(std::string_view sql, std::size_t maxLength = 200);

}  // namespace pgwire_proxy::observability
