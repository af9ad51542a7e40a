// The relay's decision core: client messages, batches and the one recovery mechanism.
#include "session/relay.h"

#include <limits>

#include "protocol/constants.h"
#include "protocol/messages.h"
#include "protocol/reader.h"
#include "protocol/writer.h"
#include "session/session_detail.h"

namespace pgwire_proxy::session {
using namespace detail;
namespace {

namespace fe = protocol::frontend;
namespace be = protocol::backend;

const char* frontendMessageName(char type) {
  switch (type) {
    case fe::kParse: return "Parse";
    case fe::kBind: return "Bind";
    case fe::kDescribe: return "Describe";
    case fe::kExecute: return "Execute";
    default: return "extended-protocol";
  }
}

bool isExtendedMessage(char type) {
  return type == fe::kParse || type == fe::kBind || type == fe::kDescribe || type == fe::kExecute ||
         type == fe::kClose || type == fe::kSync || type == fe::kFlush;
}

}  // namespace

Relay::Relay(RelayContext context, RelayHost& host) : context_(std::move(context)), host_(host) {}

bool Relay::onClientFrame(const protocol::Frame& frame) {
  const char type = frame.type();
  if (batch_.open && batch_.copyIn != Batch::CopyIn::kNone) return onCopyInFrame(frame);
  if (rejecting_) {
    // The default mode refused an extended-protocol message: PostgreSQL would ignore everything up to
    // the Sync. A simple Query instead of the Sync (node-pg after a refused stream) ends the refusal.
    if (type == fe::kSync) {
      rejecting_ = false;
      sendReadyForQuery();
    } else if (type == fe::kQuery) {
      rejecting_ = false;
      startQuery(frame);
    }
    return true;
  }
  if (batch_.open || (context_.extendedRelay && isExtendedMessage(type))) return relayExtended(frame);
  switch (type) {
    case fe::kQuery:
      startQuery(frame);
      return true;
    case fe::kSync:  // a Sync with nothing before it still gets its ReadyForQuery
      sendReadyForQuery();
      return true;
    case fe::kFlush:
    case fe::kCopyData:
    case fe::kCopyDone:
    case fe::kCopyFail:
      return true;  // PostgreSQL ignores these outside the extended protocol and COPY
    case fe::kClose: {
      // Nothing can be prepared in this mode, and closing what does not exist is no error in
      // PostgreSQL: CloseComplete (drivers close their cursors and statements after a refusal).
      (void)protocol::parseTargetMessage(frame.body());
      std::string out;
      protocol::MessageWriter writer(out);
      writer.beginMessage(be::kCloseComplete);
      writer.endMessage();
      emit(out);
      return true;
    }
    case fe::kParse:
    case fe::kBind:
    case fe::kDescribe:
    case fe::kExecute: {
      const ProxyError error(Severity::kError, sqlstate::kFeatureNotSupported,
                             "the extended query protocol is not supported by pgwire-proxy",
                             std::string("The client sent a ") + frontendMessageName(type) + " message.",
                             "Use the simple query protocol (for example psycopg's ClientCursor, or psql).");
      context_.observer.proxyError(context_.sessionId, error);
      sendError(error, false);
      rejecting_ = true;
      return true;
    }
    case fe::kFunctionCall: {
      if (context_.fullProtocol) {
        startFunctionCall(frame);
        return true;
      }
      const ProxyError error(Severity::kError, sqlstate::kFeatureNotSupported,
                             "the function call protocol is not supported by pgwire-proxy",
                             "Relaying it needs --protocol=full.");
      context_.observer.proxyError(context_.sessionId, error);
      sendError(error, true);
      return true;
    }
    default:
      throw ProtocolError("invalid frontend message type " + std::to_string(static_cast<int>(type)));
  }
}

// The function-call protocol (libpq's PQfn: the large-object API, psql's \lo_import): a batch of one,
// answered with FunctionCallResponse or an error, then ReadyForQuery. It names a function by OID with
// binary arguments, so there is no text for --allow to match: with an allow list it stays refused.
void Relay::startFunctionCall(const protocol::Frame& frame) {
  protocol::MessageReader reader(frame.body());
  const auto oid = static_cast<std::uint32_t>(reader.readInt32());
  const std::string text = "function call (oid " + std::to_string(oid) + ")";
  observability::QueryRecord record = startRecord(text);
  if (!currentGuardrails()->filter.allowsUnmatchable()) {
    const ProxyError error(Severity::kError, sqlstate::kInsufficientPrivilege,
                           "function calls are refused while --allow patterns are in force",
                           "A function call names a function by OID; there is no query text to match.",
                           "Use a SELECT of the function instead, or run without --allow.");
    record.sqlstate = error.sqlstate();
    record.errorMessage = error.message();
    record.outcome = observability::QueryOutcome::kDenied;
    recordAlone(record);
    sendError(error, true);
    return;
  }
  openSingleStatementBatch(std::move(record));  // answered like a Query: a reply, then ReadyForQuery
  host_.toUpstream(frame.bytes);
}

// ---- COPY FROM STDIN --------------------------------------------------------------------------------

bool Relay::onCopyInFrame(const protocol::Frame& frame) {
  const char type = frame.type();
  if (batch_.copyIn == Batch::CopyIn::kAwaitingSync) {
    // The COPY is over; PostgreSQL ignored the batch's first Sync and waits for this one.
    if (type == fe::kSync) batch_.copyIn = Batch::CopyIn::kNone;
    host_.toUpstream(frame.bytes);
    return true;
  }
  switch (type) {
    case fe::kCopyData: {
      if (statement_.dropAtCopyData) {
        dropWithRecord("fault injected: connection dropped in the middle of COPY FROM STDIN");
      }
      if (batch_.copyInFailedByProxy) return true;  // the upstream has its CopyFail; the rest is dropped
      statement_.copyInBytes += frame.bytes.size();
      if (context_.maxCopyInBytes > 0 && statement_.copyInBytes > context_.maxCopyInBytes) {
        // Over the limit: the COPY fails upstream (nothing of it is kept) and the client is told.
        std::string out;
        protocol::MessageWriter writer(out);
        protocol::writeCopyFail(writer, "COPY FROM STDIN exceeded the proxy's --max-copy-in-bytes");
        host_.toUpstream(out);
        batch_.copyInFailedByProxy = true;
        reportGuardrail("max-copy-in-bytes", guardrails::formatBytes(context_.maxCopyInBytes));
        statement_.record.outcome = observability::QueryOutcome::kLimitBytes;
        failAtFront(ProxyError(Severity::kError, sqlstate::kProgramLimitExceeded,
                               "COPY FROM STDIN exceeds the proxy's limit of " +
                                   guardrails::formatBytes(context_.maxCopyInBytes) + " (max-copy-in-bytes)",
                               "pgwire-proxy failed the COPY upstream; nothing of it was copied.",
                               "Split the load into smaller COPYs, or raise --max-copy-in-bytes (0 turns it off)."),
                    false);
        return true;
      }
      host_.toUpstream(frame.bytes);
      return true;
    }
    case fe::kCopyDone:
    case fe::kCopyFail:
      batch_.copyIn = batch_.copySyncIgnored ? Batch::CopyIn::kAwaitingSync : Batch::CopyIn::kNone;
      if (!batch_.copyInFailedByProxy) host_.toUpstream(frame.bytes);
      return true;
    default:
      // Flush and Sync are ignored by PostgreSQL in COPY IN mode; anything else fails the COPY there
      // (08P01), as it would direct.
      if (!batch_.copyInFailedByProxy) host_.toUpstream(frame.bytes);
      return true;
  }
}

std::size_t Relay::copyInRun(std::span<const char> data, std::uint32_t maxMessage) {
  if (!batch_.open || statement_.dropAtCopyData || batch_.copyInFailedByProxy) return 0;
  // What onCopyInFrame does for each, added up.
  const std::uint64_t limit =
      context_.maxCopyInBytes > 0 ? context_.maxCopyInBytes : std::numeric_limits<std::uint64_t>::max();
  std::uint64_t copied = statement_.copyInBytes;
  const std::size_t run = protocol::frameRun(data, fe::kCopyData, maxMessage, [&](std::size_t size) {
    if (size > limit - copied) return false;
    copied += size;
    return true;
  });
  if (run == 0) return 0;
  statement_.copyInBytes = copied;
  host_.toUpstream(data.first(run));
  return run;
}

// ---- a simple Query: a batch of one with an implicit Sync ------------------------------------------

void Relay::startQuery(const protocol::Frame& frame) {
  const std::string_view sql = protocol::parseQuery(frame.body());  // a malformed Query never goes upstream
  observability::QueryRecord record = startRecord(sql);
  if (const auto verdict = currentGuardrails()->filter.check(sql)) {
    sendError(recordDenied(record, *verdict), true);
    return;
  }
  std::shared_ptr<faults::Rule> fault;
  if (context_.faults != nullptr) fault = firingFault(sql, false);
  openSingleStatementBatch(std::move(record));
  if (fault && injectQueryFault(*fault, frame)) return;
  host_.toUpstream(frame.bytes);
}

// ---- the extended query protocol, relayed ------------------------------------------------------------

bool Relay::relayExtended(const protocol::Frame& frame) {
  const char type = frame.type();
  if (batch_.clientSkipping) {
    // The proxy failed this batch; PostgreSQL would ignore everything up to the Sync. A Query the
    // client sends instead of the Sync is served after the batch (see endBatchForQuery).
    if (type == fe::kSync || type == fe::kQuery) {
      batch_.clientSkipping = false;
      batch_.ended = true;
      batch_.upstreamSkipping = false;
      Pending sync(fe::kSync);
      sync.ownSync = type == fe::kQuery;
      pushPending(std::move(sync));
      queueAbortingStatement(true);
      return type == fe::kSync;
    }
    return true;
  }
  if (!batch_.open) {
    if (type == fe::kFlush) return true;  // nothing is owed: PostgreSQL would send nothing
    openBatch();
  }
  if (type == fe::kQuery) {
    endBatchForQuery();  // served once the batch has ended
    return false;
  }
  if (batch_.upstreamSkipping) {
    // The upstream failed the batch and ignores everything up to the Sync: no bookkeeping, no checks.
    switch (type) {
      case fe::kParse:
      case fe::kBind:
      case fe::kDescribe:
      case fe::kExecute:
      case fe::kClose:
      case fe::kFlush:
        host_.toUpstream(frame.bytes);
        return true;
      case fe::kFunctionCall:
      case fe::kCopyData:
      case fe::kCopyDone:
      case fe::kCopyFail:
        return true;
      default:
        break;
    }
  }
  switch (type) {
    case fe::kParse: {
      const auto parse = protocol::parseParseMessage(frame.body());
      if (const auto verdict = batch_.rails->filter.check(parse.sql)) {
        // Its own record: the statement answering may be an earlier Execute.
        observability::QueryRecord record = startRecord(parse.sql);
        failAtClient(recordDenied(record, *verdict));
        return true;
      }
      Pending reply(fe::kParse);
      reply.statement.assign(parse.statement);
      auto& slot = statements_.slot(parse.statement);
      reply.previous = slot;
      // A driver that re-parses its unnamed statement for every query mostly sends the same text.
      if (!slot || *slot != parse.sql) {
        slot = std::make_shared<const std::string>(parse.sql);
        reply.retained = static_cast<std::uint32_t>(parse.sql.size());  // within --max-message-size
      }
      reply.sql = slot;
      pushPending(std::move(reply));
      break;
    }
    case fe::kBind: {
      const auto bind = protocol::parseBindMessage(frame.body());
      Pending reply(fe::kBind);
      reply.sql = statements_.find(bind.statement);
      portals_.slot(bind.portal) = reply.sql;
      pushPending(std::move(reply));
      break;
    }
    case fe::kExecute: {
      Pending reply(fe::kExecute);
      reply.sql = portals_.find(protocol::parseExecutePortal(frame.body()));
      reply.sent = Clock::now();
      if (context_.faults != nullptr && injectExecuteFault(reply.sql)) return true;
      context_.observer.queryStarted(context_.sessionId, reply.sql ? std::string_view(*reply.sql) : std::string_view());
      if (!batch_.deadline && context_.queryTimeout.count() > 0) {
        batch_.deadline = reply.sent + config::backstopDelay(context_.queryTimeout);
      }
      pushPending(std::move(reply));
      break;
    }
    case fe::kDescribe:
      (void)protocol::parseTargetMessage(frame.body());
      pushPending(Pending(fe::kDescribe));
      break;
    case fe::kClose: {
      const auto close = protocol::parseTargetMessage(frame.body());
      if (close.kind == 'S') statements_.erase(close.name);
      if (close.kind == 'P') portals_.erase(close.name);
      pushPending(Pending(fe::kClose));
      break;
    }
    case fe::kFlush:
      break;
    case fe::kSync:
      pushPending(Pending(fe::kSync));
      batch_.ended = true;
      batch_.upstreamSkipping = false;
      break;
    case fe::kFunctionCall: {
      const ProxyError error(Severity::kError, sqlstate::kFeatureNotSupported,
                             "the function call protocol is not supported by pgwire-proxy");
      context_.observer.proxyError(context_.sessionId, error);
      failAtClient(error);
      return true;
    }
    case fe::kCopyData:
    case fe::kCopyDone:
    case fe::kCopyFail:
      return true;  // PostgreSQL ignores these outside COPY
    default:
      throw ProtocolError("invalid frontend message type " + std::to_string(static_cast<int>(type)));
  }
  host_.toUpstream(frame.bytes);
  // This message filled the backlog: no more are read until replies come, so PostgreSQL is asked for
  // the ones it holds back (a client may always get them early: PostgreSQL sends when its buffer fills).
  // The Flush has no reply: nothing awaits one.
  if (!batch_.ended && backlogFull()) {
    std::string out;
    protocol::MessageWriter writer(out);
    protocol::writeFlush(writer);
    host_.toUpstream(out);
  }
  return true;
}

// PostgreSQL runs a Query sent inside an unfinished batch as if the batch had ended there. The proxy
// keeps one batch upstream at a time: it ends the batch with a Sync of its own, whose ReadyForQuery
// the client does not see, and serves the Query after it (with its own guardrails and records). The
// one difference a client can observe: the batch's implicit transaction commits before the Query.
void Relay::endBatchForQuery() {
  Pending sync(fe::kSync);
  sync.ownSync = true;
  pushPending(std::move(sync));
  batch_.ended = true;
  batch_.upstreamSkipping = false;
  std::string out;
  protocol::MessageWriter writer(out);
  protocol::writeSync(writer);
  host_.toUpstream(out);
}

// ---- the batch -----------------------------------------------------------------------------------

void Relay::openSingleStatementBatch(observability::QueryRecord&& record) {
  openBatch();  // the record has the text: its statement is open from the start, so the Pending needs none
  Pending statement(fe::kQuery);
  statement.sent = Clock::now();  // also its record's start and its backstop's (one clock read a query)
  const Clock::time_point sent = statement.sent;
  pushPending(std::move(statement));
  batch_.ended = true;  // its end is its ReadyForQuery
  resetStatement();
  statement_.open = true;
  statement_.record = std::move(record);
  statement_.start = sent;
}

void Relay::openBatch() {
  host_.setCancellable(true);
  batch_ = Batch{};
  pending_.clear();
  batch_.open = true;
  // Pinned for the batch; the shared_ptr is copied only when the set changed (a copy per batch would
  // be two atomic updates a query on a reference count every session shares).
  if (const auto& rails = currentGuardrails(); batchRails_ != rails) batchRails_ = rails;
  batch_.rails = batchRails_.get();
  batch_.budget = guardrails::ResultBudget(batch_.rails->maxRows, batch_.rails->maxBytes);
  failingCommit_ = false;
}

void Relay::closeBatch() {
  if (statement_.open) finishRecord();
  resetStatement();
  host_.setCancellable(false);
  batch_ = Batch{};
  pending_.clear();
  holdUntil_.reset();
  // Portals live until their transaction ends; prepared statements until closed or the session ends.
  if (transactionStatus_ == protocol::kTxIdle) portals_.clear();
}

void Relay::pushPending(Pending&& pending) {
  if (pending.type == fe::kExecute || pending.type == fe::kQuery) {
    ++batch_.statementsPending;
    if (pending.type == fe::kQuery && !batch_.deadline && context_.queryTimeout.count() > 0) {
      batch_.deadline = pending.sent + config::backstopDelay(context_.queryTimeout);  // a Query's is set
    }
  }
  pending_.push(std::move(pending));
}

void Relay::popPending() {
  if (pending_.front().type == fe::kExecute) {
    --batch_.statementsPending;
    // The backstop covers the statements still to run, from now.
    batch_.deadline.reset();
    if (batch_.statementsPending > 0 && context_.queryTimeout.count() > 0 && !batch_.swallowing) {
      batch_.deadline = Clock::now() + config::backstopDelay(context_.queryTimeout);
    }
  }
  pending_.pop();
}

// ---- recovery: one mechanism ------------------------------------------------------------------------

void Relay::failAtClient(const ProxyError& error) {
  batch_.clientSkipping = true;
  if (!pending_.empty()) {
    batch_.failureAtClient = error;
    pending_.push(Pending());  // reported once the replies before it have gone out
    return;
  }
  sendError(error, false);
  batch_.swallowing = true;
  batch_.swallowedUpstreamError = false;
}

void Relay::failAtFront(const ProxyError& error, bool cancelStatement) {
  flushPending();  // what the upstream sent before the failing frame still reaches the client
  if (statement_.open) {
    noteProxyError(error);
    finishRecord();
  }
  // Everything still pending is ignored now, by the upstream (after its error) or by the proxy.
  while (!pending_.empty() && pending_.front().type != fe::kSync &&
         pending_.front().type != fe::kQuery) {
    popPending();
  }
  batch_.deadline.reset();
  if (cancelStatement) {
    cancel();
    batch_.deadline = Clock::now() + kCancelGrace;  // until the cancelled statement's end shows
  }
  batch_.clientSkipping = !batch_.ended;
  batch_.swallowing = true;
  batch_.swallowedUpstreamError = false;
  batch_.failure = error;  // sent once the statement's fate shows (reportFailure)
  batch_.failedStatementCompleted = false;
}

void Relay::reportFailure(char transactionStatus) {
  if (!batch_.failure) return;
  ProxyError error = std::move(*batch_.failure);
  batch_.failure.reset();
  if (batch_.failedStatementCompleted) {
    // The cancel came too late: say what really happened to the statement.
    std::string detail;
    if (transactionStatus == protocol::kTxIdle) {
      detail = "The statement ran to completion upstream before the cancel reached it: its effects, if any, "
               "are committed; only its output was dropped.";
    } else if (transactionStatus == protocol::kTxFailed) {
      detail = "The statement completed upstream; the proxy ended its transaction block failed, so nothing of it "
               "will be committed.";
    } else {
      detail = "The statement completed upstream; its transaction will not commit (the proxy fails it).";
    }
    error = ProxyError(error.severity(), error.sqlstate(), std::string(error.message()), detail, error.hint());
  }
  sendError(error, false);
}

void Relay::cancel() {
  if (batch_.upstreamCancelled) return;
  batch_.upstreamCancelled = true;
  host_.cancelUpstream();
}

void Relay::onClientCancel() {
  if (holdUntil_) cancelHold();  // the client cancelled a query the proxy holds (a fault's delay)
}

void Relay::onTimer(Clock::time_point now) {
  if (holdUntil_ && now >= *holdUntil_) releaseHold();  // an injected delay is over
  if (!batch_.open || !batch_.deadline || now < *batch_.deadline) return;
  if (batch_.backstopFired) {
    throw UpstreamFailure{"the upstream server did not end a cancelled statement within " +
                          config::formatDuration(std::chrono::duration_cast<config::Milliseconds>(kCancelGrace))};
  }
  // statement_timeout should have ended the statement by now (a client may have SET it to 0).
  batch_.backstopFired = true;
  reportGuardrail("query-timeout", config::formatDuration(context_.queryTimeout));
  if (batch_.swallowing) {
    // The client already has the proxy's error; the statement still runs: cancel it (again).
    batch_.upstreamCancelled = false;
    cancel();
    batch_.deadline = now + kCancelGrace;
    return;
  }
  if (!statement_.open && !pending_.empty() && pending_.front().type == fe::kExecute) {
    openRecord(pending_.front());
  }
  statement_.record.outcome = observability::QueryOutcome::kTimeout;
  failAtFront(backstopError(), true);
}

// ---- to the client -------------------------------------------------------------------------------------

void Relay::emit(std::span<const char> bytes) {
  flushPending();  // what the upstream sent before goes first
  host_.toClient(bytes);
}

void Relay::sendError(const ProxyError& error, bool withReadyForQuery) {
  std::string out;
  protocol::MessageWriter writer(out);
  protocol::writeErrorResponse(writer, error);
  if (withReadyForQuery) protocol::writeReadyForQuery(writer, transactionStatus_);
  emit(out);
}

void Relay::sendReadyForQuery() {
  std::string out;
  protocol::MessageWriter writer(out);
  protocol::writeReadyForQuery(writer, transactionStatus_);
  emit(out);
}

void Relay::queueAbortingStatement(bool extendedSync) {
  batch_.aborting = true;
  // A failed COMMIT ends the transaction in PostgreSQL (ReadyForQuery 'I'): the upstream rolls back.
  // Any other failed statement leaves a block failed: the upstream runs one that always fails.
  const std::string_view sql = failingCommit_ ? std::string_view("ROLLBACK") : kAbortTransactionSql;
  std::string out;
  protocol::MessageWriter writer(out);
  if (extendedSync) {
    protocol::writeUnnamedExecution(writer, sql);
    protocol::writeSync(writer);
  } else {
    writer.beginMessage(fe::kQuery);
    writer.writeCString(sql);
    writer.endMessage();
  }
  host_.toUpstream(out);
}

}  // namespace pgwire_proxy::session
