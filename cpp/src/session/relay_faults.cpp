// The relay's decision core: fault injection (what a rule does to a Query or an Execute) and holds.
#include <cctype>

#include "protocol/constants.h"
#include "protocol/messages.h"
#include "protocol/writer.h"
#include "session/relay.h"
#include "session/session_detail.h"

namespace pgwire_proxy::session {
using namespace detail;
namespace {

namespace fe = protocol::frontend;

// COMMIT or END (not COMMIT PREPARED): a failure of it ends the transaction.
bool isCommit(std::string_view sql) {
  auto word = [&sql]() {
    while (!sql.empty() && std::isspace(static_cast<unsigned char>(sql.front()))) sql.remove_prefix(1);
    std::string found;
    while (!sql.empty() && std::isalpha(static_cast<unsigned char>(sql.front()))) {
      found.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(sql.front()))));
      sql.remove_prefix(1);
    }
    return found;
  };
  const std::string first = word();
  if (first != "commit" && first != "end") return false;
  return word() != "prepared";
}

}  // namespace

// ---- faults ----------------------------------------------------------------------------------------

std::shared_ptr<faults::Rule> Relay::firingFault(std::string_view sql, bool extended) {
  if (const auto version = context_.faults->version(); !faultsLoaded_ || version != faultsVersion_) {
    faultRules_ = context_.faults->rules();
    faultsVersion_ = version;
    faultsLoaded_ = true;
  }
  if (faultRules_.empty()) return nullptr;
  const faults::QueryContext who{context_.user, context_.database, context_.applicationName};
  for (const auto& rule : faultRules_) {
    // At an extended-protocol Execute only the faults that replace the statement apply.
    if (extended && (rule->spec().when != faults::When::kBefore ||
                     (rule->spec().action != faults::Action::kError && rule->spec().action != faults::Action::kDrop))) {
      continue;
    }
    if (rule->fires(sql, who, faultMatches_[rule->id()])) return rule;
  }
  return nullptr;
}

bool Relay::injectQueryFault(const faults::Rule& rule, const protocol::Frame& frame) {
  const auto& spec = rule.spec();
  auto& record = statement_.record;
  record.injected.assign(faults::actionName(spec.action));
  context_.observer.faultInjected(context_.sessionId, rule.id(), faults::actionName(spec.action),
                                  std::string_view(record.sql).substr(0, kQueryExcerptLength));
  const bool fatal = spec.severity == "FATAL";
  switch (spec.action) {
    case faults::Action::kError: {
      const ProxyError error(fatal ? Severity::kFatal : Severity::kError, spec.sqlstate, spec.message, spec.detail,
                             spec.hint);
      if (spec.when == faults::When::kAfter) {
        // The query runs; its results are dropped and the client gets the error instead (a FATAL one
        // ends the session at the query's end).
        noteProxyError(error);
        if (fatal) {
          batch_.fatalAtEnd = error;
        } else {
          sendError(error, false);
        }
        batch_.swallowing = true;
        return false;
      }
      if (fatal) {
        noteProxyError(error);
        closeBatch();  // nothing went upstream
        throw error;   // sent as the session's last words, then the connection closes
      }
      failingCommit_ = isCommit(record.sql);
      if (transactionStatus_ == protocol::kTxInBlock ||
          (failingCommit_ && transactionStatus_ == protocol::kTxFailed)) {
        // Inside a block an error fails the transaction, so the upstream's must fail too; a failed
        // COMMIT ends it (PostgreSQL rolls back). The query is not sent; that statement is.
        noteProxyError(error);
        sendError(error, false);
        batch_.swallowing = true;
        queueAbortingStatement(false);
        return true;
      }
      // Outside a block: nothing ran, nothing to undo.
      noteProxyError(error);
      closeBatch();
      sendError(error, true);
      return true;
    }
    case faults::Action::kDrop:
      if (spec.when == faults::When::kBefore) {
        record.outcome = observability::QueryOutcome::kError;
        closeBatch();  // nothing went upstream
        throw SessionEnded{"fault injected: connection dropped before the query"};
      }
      if (spec.when == faults::When::kAfterRows) statement_.dropAfterRows = spec.rows;
      if (spec.when == faults::When::kMidMessage) statement_.dropMidMessage = true;
      return false;
    case faults::Action::kNotice: {
      std::string out;
      protocol::MessageWriter writer(out);
      protocol::writeNoticeResponse(writer, spec.severity.empty() ? "NOTICE" : spec.severity, spec.sqlstate,
                                    spec.message, spec.detail, spec.hint);
      emit(out);
      return false;
    }
    case faults::Action::kDelay:
      holdUntil_ = Clock::now() + spec.delay;
      if (spec.when == faults::When::kBefore) {
        heldQuery_.emplace(frame.bytes.data(), frame.bytes.size());
        batch_.deadline.reset();  // the backstop starts when the query goes upstream
        return true;
      }
      return false;  // the results wait
  }
  return false;
}

bool Relay::injectExecuteFault(const std::shared_ptr<const std::string>& sql) {
  const std::string_view text = sql ? std::string_view(*sql) : std::string_view();
  const auto rule = firingFault(text, true);
  if (!rule) return false;
  const auto& spec = rule->spec();
  context_.observer.faultInjected(context_.sessionId, rule->id(), faults::actionName(spec.action),
                                  text.substr(0, kQueryExcerptLength));
  // Its own record: the statement answering may be the Execute before this one.
  observability::QueryRecord record;
  record.sessionId = context_.sessionId;
  record.sql.assign(text);
  record.started = std::chrono::system_clock::now();
  record.outcome = observability::QueryOutcome::kError;
  record.injected.assign(faults::actionName(spec.action));
  if (spec.action == faults::Action::kDrop) {
    recordAlone(record);
    throw SessionEnded{"fault injected: connection dropped before the query"};
  }
  const ProxyError error(spec.severity == "FATAL" ? Severity::kFatal : Severity::kError, spec.sqlstate, spec.message,
                         spec.detail, spec.hint);
  record.sqlstate = error.sqlstate();
  record.errorMessage = error.message();
  recordAlone(record);
  if (error.severity() == Severity::kFatal) throw error;
  // As if the statement had failed: the error in order, the rest of the batch ignored up to the Sync,
  // what the batch already ran rolled back (a failed COMMIT ends the transaction).
  failingCommit_ = isCommit(text);
  failAtClient(error);
  return true;
}

void Relay::dropWithRecord(const std::string& reason) {
  // The batch stays open, so the way out cancels the statement upstream.
  statement_.record.outcome = observability::QueryOutcome::kError;
  finishRecord();
  throw SessionEnded{reason};
}

void Relay::cancelHold() {
  holdUntil_.reset();
  const ProxyError cancelled(Severity::kError, sqlstate::kQueryCanceled, "canceling statement due to user request");
  statement_.record.outcome = observability::QueryOutcome::kCancelled;
  if (heldQuery_) {  // it never went upstream
    heldQuery_.reset();
    noteProxyError(cancelled);
    statement_.record.outcome = observability::QueryOutcome::kCancelled;
    closeBatch();
    sendError(cancelled, true);
    return;
  }
  // Its results are dropped; the client has the error, the ReadyForQuery follows them.
  noteProxyError(cancelled);
  sendError(cancelled, false);
  batch_.swallowing = true;
}

void Relay::releaseHold() {
  holdUntil_.reset();
  if (!heldQuery_) return;
  host_.toUpstream(*heldQuery_);
  heldQuery_.reset();
  if (context_.queryTimeout.count() > 0) batch_.deadline = Clock::now() + config::backstopDelay(context_.queryTimeout);
}

}  // namespace pgwire_proxy::session
