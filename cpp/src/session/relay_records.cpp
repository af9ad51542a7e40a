// The relay's decision core: query records, the guardrails in force, and the proxy's own error texts.
#include "protocol/constants.h"
#include "session/relay.h"
#include "session/session_detail.h"

namespace pgwire_proxy::session {
using namespace detail;

// ---- records ---------------------------------------------------------------------------------------

observability::QueryRecord Relay::startRecord(std::string_view sql) {
  observability::QueryRecord record;
  record.sessionId = context_.sessionId;
  record.sql = std::move(spareSql_);  // the last query's storage: no allocation per query
  record.sql.assign(sql);
  record.started = std::chrono::system_clock::now();
  context_.observer.queryStarted(context_.sessionId, sql);
  return record;
}

void Relay::resetStatement() {
  // The text's storage is kept for the next record's (startRecord, openRecord): no allocation a query.
  // An unusually long text's is not: an idle session keeps no more than a typical query needs.
  constexpr std::size_t kMaxSpareSql = 4096;
  const std::size_t capacity = statement_.record.sql.capacity();
  if (capacity > spareSql_.capacity() && capacity <= kMaxSpareSql) spareSql_ = std::move(statement_.record.sql);
  statement_ = Statement{};
}

void Relay::openRecord(const Pending& statement) {
  resetStatement();
  statement_.open = true;
  statement_.record.sessionId = context_.sessionId;
  statement_.record.sql = std::move(spareSql_);
  statement_.record.sql.assign(statement.sql ? std::string_view(*statement.sql) : std::string_view());
  statement_.start = statement.sent == Clock::time_point{} ? Clock::now() : statement.sent;
  statement_.record.started =
      std::chrono::system_clock::now() -
      std::chrono::duration_cast<std::chrono::system_clock::duration>(Clock::now() - statement_.start);
}

void Relay::finishRecord() {
  statement_.open = false;
  const std::chrono::duration<double> elapsed = Clock::now() - statement_.start;
  statement_.record.seconds = elapsed.count();
  ++totals_.queries;
  totals_.rows += statement_.record.rows;
  totals_.bytes += statement_.record.bytes;
  context_.observer.queryFinished(statement_.record);
}

void Relay::noteError(std::string_view sqlstate, std::string_view message) {
  auto& record = statement_.record;
  if (!record.sqlstate.empty()) return;  // the first error is the statement's
  record.sqlstate.assign(sqlstate);
  record.errorMessage.assign(message);
  record.outcome = observability::QueryOutcome::kError;
  if (record.sqlstate == sqlstate::kQueryCanceled) {
    // The server's statement_timeout and a user's cancel share 57014; the message tells them apart.
    record.outcome = record.errorMessage.find("statement timeout") != std::string::npos
                         ? observability::QueryOutcome::kTimeout
                         : observability::QueryOutcome::kCancelled;
  }
}

void Relay::noteProxyError(const ProxyError& error) {
  auto& record = statement_.record;
  if (record.sqlstate.empty()) {
    record.sqlstate = error.sqlstate();
    record.errorMessage = error.message();
  }
  if (record.outcome == observability::QueryOutcome::kOk) record.outcome = observability::QueryOutcome::kError;
}

void Relay::recordAlone(observability::QueryRecord record) {
  ++totals_.queries;
  totals_.rows += record.rows;
  totals_.bytes += record.bytes;
  context_.observer.queryFinished(record);  // recorded before the client can see the outcome
}

ProxyError Relay::recordDenied(observability::QueryRecord& record, const guardrails::FilterVerdict& verdict) {
  // Refused before anything ran: no time went by that the guardrail report could show.
  context_.observer.guardrailTripped(context_.sessionId, verdict.rule.starts_with("deny") ? "deny" : "allow",
                                     verdict.rule, 0.0, std::string_view(record.sql).substr(0, kQueryExcerptLength));
  ProxyError error(Severity::kError, sqlstate::kInsufficientPrivilege, verdict.message, {},
                   "The proxy's --deny/--allow patterns decide which queries may run.");
  record.sqlstate = error.sqlstate();
  record.errorMessage = error.message();
  record.outcome = observability::QueryOutcome::kDenied;
  recordAlone(record);
  return error;
}

void Relay::reportGuardrail(std::string_view limit, const std::string& value) {
  const std::chrono::duration<double> elapsed = Clock::now() - statement_.start;
  context_.observer.guardrailTripped(context_.sessionId, limit, value, elapsed.count(),
                                     std::string_view(statement_.record.sql).substr(0, kQueryExcerptLength));
}

const std::shared_ptr<const guardrails::GuardrailSet>& Relay::currentGuardrails() {
  if (const auto version = context_.guardrails.version(); !rails_ || version != railsVersion_) {
    rails_ = context_.guardrails.load();  // stored before the version was bumped: this one or newer
    railsVersion_ = version;
  }
  return rails_;
}

// ---- the proxy's own errors, one wording for every flow ----------------------------------------------

ProxyError Relay::backstopError() const {
  return ProxyError(Severity::kError, sqlstate::kQueryCanceled,
                    "canceling statement due to the proxy's query timeout of " +
                        config::formatDuration(context_.queryTimeout),
                    "The upstream server did not stop the statement at its statement_timeout; "
                    "pgwire-proxy cancelled it.",
                    "Raise --query-timeout, or make the query faster.");
}

ProxyError Relay::breachError(const guardrails::Breach& breach) const {
  return ProxyError(Severity::kError, sqlstate::kProgramLimitExceeded, breach.message(),
                    "pgwire-proxy stopped the result after " + std::to_string(batch_.budget.rows()) +
                        " rows and cancelled the statement.",
                    breach.hint());
}

ProxyError Relay::copyRefused(bool copyIn) {
  return copyIn ? ProxyError(Severity::kError, sqlstate::kFeatureNotSupported,
                             "COPY FROM STDIN is not supported by pgwire-proxy",
                             "The COPY was aborted on the upstream server; nothing was copied.",
                             "Use INSERT statements, or connect to PostgreSQL directly for bulk loads.")
                : ProxyError(Severity::kError, sqlstate::kFeatureNotSupported,
                             "COPY TO STDOUT is not supported by pgwire-proxy",
                             "The COPY was cancelled on the upstream server.",
                             "Use SELECT, or connect to PostgreSQL directly for bulk exports.");
}

}  // namespace pgwire_proxy::session
