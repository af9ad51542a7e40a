// The extended query protocol, relayed (--extended-protocol=relay).
//
// The client's Parse/Bind/Describe/Execute/Close/Flush messages go upstream as they come, pipelined;
// the replies come back unchanged and in order. The session keeps, oldest first, the messages still
// awaiting a reply (pending_), which tells it which Execute a DataRow belongs to (for the row and
// byte budgets and the query records) and which message an ErrorResponse answers.
//
// One batch (everything up to and including a Sync) is upstream at a time: after a Sync the client
// is not read until its ReadyForQuery, so a cancel the proxy sends for one batch can never land in
// the next.
//
// When the proxy itself fails a statement (a limit, a denied Parse, COPY, the backstop), the client
// gets the proxy's error where PostgreSQL's would have been, the client's messages up to its Sync are
// dropped (PostgreSQL ignores them after an error), the upstream's replies are dropped up to the
// ReadyForQuery, and before the Sync the proxy sends a failing statement of its own: whatever the
// upstream ran of the batch is rolled back with it, as the client was told.
#include <poll.h>

#include "observability/log.h"
#include "protocol/constants.h"
#include "protocol/reader.h"
#include "protocol/writer.h"
#include "session/session.h"
#include "session/session_detail.h"
#include "upstream/upstream_connection.h"

namespace pgwire_proxy::session {
using namespace detail;
namespace {

namespace fe = protocol::frontend;
namespace be = protocol::backend;

// Client messages queued for a slow upstream beyond this stop the session reading the client.
constexpr std::size_t kMaxQueuedUpstreamBytes = 1024 * 1024;

// The replies that must be held whole before the relay acts on them (all small).
bool needsWholeFrame(char type) {
  return type == be::kErrorResponse || type == be::kReadyForQuery || type == be::kCommandComplete;
}

// Parse/Bind/Execute of a statement that always fails, then the batch's Sync: the upstream's
// implicit or explicit transaction ends failed, whatever of the batch it already ran.
const std::string& abortingSync() {
  static const std::string bytes = [] {
    std::string out;
    protocol::MessageWriter writer(out);
    protocol::writeUnnamedExecution(writer, kAbortTransactionSql);
    protocol::writeSync(writer);
    return out;
  }();
  return bytes;
}

}  // namespace

bool Session::acceptingClient() const noexcept {
  // A cancel the proxy sent is not delivered yet: the next statement must not be the one it hits.
  if (*cancelsInFlight_ > 0) return false;
  switch (state_) {
    case State::kReady:
    case State::kDiscardingUntilSync:
      return true;
    case State::kExtended:
      return !syncSent_ && upstreamOut_.size() - upstreamOutSent_ < kMaxQueuedUpstreamBytes;
    default:
      return false;
  }
}

bool Session::relayExtendedFrame(const protocol::Frame& frame) {
  const char type = frame.type();
  if (type == fe::kTerminate) {
    closeReason_ = "client terminated";
    clientLeft();
    return true;
  }
  if (clientSkipping_) {
    // The proxy failed this batch; PostgreSQL would ignore everything up to the Sync. A Query the
    // client sends instead of the Sync is served after the batch (see endBatchForQuery).
    if (type == fe::kSync || type == fe::kQuery) {
      clientSkipping_ = false;
      syncSent_ = true;
      upstreamSkipping_ = false;
      PendingReply sync(fe::kSync);
      sync.ownSync = type == fe::kQuery;
      pushPending(std::move(sync));
      queueUpstream(abortingSync());
      return type == fe::kSync;
    }
    return true;
  }
  if (state_ != State::kExtended) {
    if (type == fe::kFlush) return true;  // nothing is owed: PostgreSQL would send nothing
    openBatch();
  }
  if (upstreamSkipping_) {
    // The upstream failed the batch and ignores everything up to the Sync: no bookkeeping, no checks.
    switch (type) {
      case fe::kParse:
      case fe::kBind:
      case fe::kDescribe:
      case fe::kExecute:
      case fe::kClose:
      case fe::kFlush:
        queueUpstream({frame.bytes.data(), frame.bytes.size()});
        return true;
      case fe::kQuery:
        endBatchForQuery();  // the upstream would ignore it until a Sync; the proxy sends one
        return false;
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
      if (const auto verdict = batchRails_->filter.check(parse.sql)) {
        // Its own record: record_ may be an earlier Execute still answering.
        observability::QueryRecord record;
        record.sessionId = id_;
        record.sql.assign(parse.sql);
        record.started = std::chrono::system_clock::now();
        context_.observer.queryStarted(id_, parse.sql);
        failBatchAtClient(recordDenied(record, *verdict));
        return true;
      }
      PendingReply reply(fe::kParse);
      reply.sql = std::make_shared<const std::string>(parse.sql);
      reply.statement.assign(parse.statement);
      auto& slot = statements_[reply.statement];
      reply.previous = std::exchange(slot, reply.sql);
      pushPending(std::move(reply));
      break;
    }
    case fe::kBind: {
      const auto bind = protocol::parseBindMessage(frame.body());
      PendingReply reply(fe::kBind);
      if (const auto it = statements_.find(std::string(bind.statement)); it != statements_.end()) reply.sql = it->second;
      portals_[std::string(bind.portal)] = reply.sql;
      pushPending(std::move(reply));
      break;
    }
    case fe::kExecute: {
      PendingReply reply(fe::kExecute);
      if (const auto it = portals_.find(std::string(protocol::parseExecutePortal(frame.body())));
          it != portals_.end()) {
        reply.sql = it->second;
      }
      reply.sent = Clock::now();
      if (context_.faults != nullptr && injectExtendedFault(reply.sql)) return true;
      context_.observer.queryStarted(id_, reply.sql ? std::string_view(*reply.sql) : std::string_view());
      if (!queryDeadline_ && queryTimeout_.count() > 0) {
        queryDeadline_ = reply.sent + config::backstopDelay(queryTimeout_);
      }
      pushPending(std::move(reply));
      break;
    }
    case fe::kDescribe:
      (void)protocol::parseTargetMessage(frame.body());
      pushPending(PendingReply(fe::kDescribe));
      break;
    case fe::kClose: {
      const auto close = protocol::parseTargetMessage(frame.body());
      if (close.kind == 'S') statements_.erase(std::string(close.name));
      if (close.kind == 'P') portals_.erase(std::string(close.name));
      pushPending(PendingReply(fe::kClose));
      break;
    }
    case fe::kFlush:
      break;
    case fe::kSync:
      pushPending(PendingReply(fe::kSync));
      syncSent_ = true;
      upstreamSkipping_ = false;
      break;
    case fe::kFunctionCall: {
      const ProxyError error(Severity::kError, sqlstate::kFeatureNotSupported,
                             "the function call protocol is not supported by pgwire-proxy");
      context_.observer.proxyError(id_, error);
      failBatchAtClient(error);
      return true;
    }
    case fe::kCopyData:
    case fe::kCopyDone:
    case fe::kCopyFail:
      return true;  // PostgreSQL ignores these outside COPY
    case fe::kQuery:
      endBatchForQuery();
      return false;  // served once the batch has ended
    default:
      throw ProtocolError("invalid frontend message type " + std::to_string(static_cast<int>(type)));
  }
  queueUpstream({frame.bytes.data(), frame.bytes.size()});
  return true;
}

// PostgreSQL runs a Query sent inside an unfinished batch as if the batch had ended there. The proxy
// keeps one batch upstream at a time: it ends the batch with a Sync of its own, whose ReadyForQuery
// the client does not see, and serves the Query after it (with its own guardrails and records). The
// one difference a client can observe: the batch's implicit transaction commits before the Query.
void Session::endBatchForQuery() {
  PendingReply sync(fe::kSync);
  sync.ownSync = true;
  pushPending(std::move(sync));
  syncSent_ = true;
  upstreamSkipping_ = false;
  std::string out;
  protocol::MessageWriter writer(out);
  protocol::writeSync(writer);
  queueUpstream(out);
}

bool Session::injectExtendedFault(const std::shared_ptr<const std::string>& sql) {
  const std::string_view text = sql ? std::string_view(*sql) : std::string_view();
  const auto rule = firingFault(text, true);
  if (!rule) return false;
  const auto& spec = rule->spec();
  context_.observer.faultInjected(id_, rule->id(), faults::actionName(spec.action), text.substr(0, kQueryExcerptLength));
  // Its own record: record_ may be the Execute still answering before this one.
  observability::QueryRecord record;
  record.sessionId = id_;
  record.sql.assign(text);
  record.started = std::chrono::system_clock::now();
  record.outcome = observability::QueryOutcome::kError;
  record.injected.assign(faults::actionName(spec.action));
  if (spec.action == faults::Action::kDrop) {
    ++totals_.queries;
    context_.observer.queryFinished(record);
    throw SessionEnded{"fault injected: connection dropped before the query"};
  }
  const ProxyError error(spec.severity == "FATAL" ? Severity::kFatal : Severity::kError, spec.sqlstate, spec.message,
                         spec.detail, spec.hint);
  record.sqlstate = error.sqlstate();
  record.errorMessage = error.message();
  ++totals_.queries;
  context_.observer.queryFinished(record);
  if (error.severity() == Severity::kFatal) throw error;
  // As if the statement had failed: the error in order, the rest of the batch ignored up to the Sync,
  // what the batch already ran rolled back.
  failBatchAtClient(error);
  return true;
}

void Session::openBatch() {
  setCancellable(true);
  state_ = State::kExtended;
  batchRails_ = currentGuardrails();
  budget_ = guardrails::ResultBudget(batchRails_->maxRows, batchRails_->maxBytes);
  pending_.clear();
  executesPending_ = 0;
  syncSent_ = upstreamSkipping_ = clientSkipping_ = swallowing_ = swallowedUpstreamError_ = recordOpen_ = false;
  upstreamCancelled_ = abortingTransaction_ = backstopFired_ = false;
  queryDeadline_.reset();
}

void Session::closeBatch() {
  if (recordOpen_) finishExtendedRecord();
  setCancellable(false);
  state_ = State::kReady;
  pending_.clear();
  executesPending_ = 0;
  queryDeadline_.reset();
  batchRails_.reset();
  // Portals live until their transaction ends; prepared statements until closed or the session ends.
  if (transactionStatus_ == protocol::kTxIdle) portals_.clear();
}

void Session::pushPending(PendingReply reply) {
  if (reply.type == fe::kExecute) ++executesPending_;
  pending_.push_back(std::move(reply));
}

void Session::popPending() {
  if (pending_.front().type == fe::kExecute) {
    --executesPending_;
    // The backstop covers the statements still to run, from now.
    queryDeadline_.reset();
    if (executesPending_ > 0 && queryTimeout_.count() > 0 && !swallowing_) {
      queryDeadline_ = Clock::now() + config::backstopDelay(queryTimeout_);
    }
  }
  pending_.pop_front();
}

void Session::failBatchAtClient(const ProxyError& error) {
  clientSkipping_ = true;
  PendingReply failure;
  failure.failure = error;
  if (!pending_.empty()) {
    pending_.push_back(std::move(failure));  // reported once the replies before it have gone out
    return;
  }
  sendError(error, false);
  swallowing_ = true;
  swallowedUpstreamError_ = false;
}

void Session::failBatchAtFront(const ProxyError& error, bool cancel) {
  if (recordOpen_) {
    if (record_.sqlstate.empty()) {
      record_.sqlstate = error.sqlstate();
      record_.errorMessage = error.message();
    }
    if (record_.outcome == observability::QueryOutcome::kOk) record_.outcome = observability::QueryOutcome::kError;
    finishExtendedRecord();
  }
  // Everything still pending is ignored now, by the upstream (after its error) or by the proxy.
  while (!pending_.empty() && pending_.front().type != fe::kSync) popPending();
  queryDeadline_.reset();
  if (cancel) {
    cancelUpstream();
    queryDeadline_ = Clock::now() + kCancelGrace;  // until the cancelled statement's end shows
  }
  clientSkipping_ = !syncSent_;
  swallowing_ = true;
  swallowedUpstreamError_ = false;
  sendError(error, false);
}

void Session::onExtendedDeadline() {
  if (!backstopFired_ && !swallowing_) {
    // statement_timeout should have ended the statement by now (a client may have SET it to 0).
    backstopFired_ = true;
    reportGuardrail("query-timeout", config::formatDuration(queryTimeout_));
    if (!recordOpen_ && !pending_.empty() && pending_.front().type == fe::kExecute) openExtendedRecord();
    record_.outcome = observability::QueryOutcome::kTimeout;
    failBatchAtFront(backstopError(),
                     true);
    return;
  }
  cancelGraceExpired();
}

// ---- upstream replies ------------------------------------------------------------------------------

void Session::processExtendedUpstreamBytes() {
  ForwardRange range{upstreamIn_.readable()};
  // The rest of a frame whose start was already relayed (or dropped) goes the same way.
  if (passThroughRemaining_ > 0) {
    range.end = std::min(passThroughRemaining_, range.data.size());
    passThroughRemaining_ -= range.end;
    if (swallowing_) range.begin = range.end;
  }
  while (range.end < range.data.size() && state_ == State::kExtended) {
    reportQueuedFailure(range);
    std::optional<protocol::FrameHeader> header;
    try {
      header = protocol::decodeHeader(range.data.subspan(range.end), kMaxUpstreamMessage);
    } catch (const ProtocolError& error) {
      upstreamLost(std::string("invalid data from the upstream server: ") + error.what());
    }
    if (!header) break;
    const std::size_t available = range.data.size() - range.end;
    if (needsWholeFrame(header->type) && streamsWithPrefix(*header)) {
      if (kErrorPrefix > available) break;  // its fields are read from the prefix, the rest streams
    } else if (needsWholeFrame(header->type)) {
      if (header->frameSize() > kMaxInspectedUpstreamMessage) {
        upstreamLost("the upstream server sent an oversized message of type '" + std::string(1, header->type) + "'");
      }
      if (header->frameSize() > available) break;  // wait for the whole frame
    }
    // Frames not held whole are acted on by their header alone; their body may not be here yet.
    const protocol::Frame frame{*header, range.data.subspan(range.end, std::min(header->frameSize(), available))};
    bool forward = true;
    try {
      forward = handleExtendedReply(frame, range);
    } catch (const ProtocolError& error) {
      upstreamLost(std::string("invalid message from the upstream server: ") + error.what());
    }
    if (header->frameSize() <= available) {
      range.end += header->frameSize();
    } else {
      passThroughRemaining_ = header->frameSize() - available;
      range.end = range.data.size();
    }
    if (!forward) range.begin = range.end;
  }
  if (state_ == State::kExtended) reportQueuedFailure(range);
  flush(range);
  upstreamIn_.consume(range.end);
}

bool Session::handleExtendedReply(const protocol::Frame& frame, ForwardRange& range) {
  const char type = frame.type();
  if (type == be::kReadyForQuery) {
    protocol::MessageReader reader(frame.body());
    const auto status = static_cast<char>(reader.readByte());
    reader.expectEnd();
    if (swallowing_ && !swallowedUpstreamError_ && status == protocol::kTxInBlock && !abortingTransaction_) {
      // The batch's Sync went upstream before the proxy failed it, and the upstream finished the
      // statement inside a transaction block: fail the transaction there too (the next
      // ReadyForQuery says 'E', as the client expects after an error).
      queueAbortingQuery();
      return false;
    }
    transactionStatus_ = status;
    const bool ownSync = !pending_.empty() && pending_.front().type == fe::kSync && pending_.front().ownSync;
    closeBatch();
    return !ownSync;
  }
  if (type == be::kErrorResponse) {
    const auto fields = errorFieldsOf(frame);
    budget_.endStatement();
    if (fields.isFatal()) {
      upstreamSentFatal_ = true;  // the session ends with the upstream's own error
      return true;
    }
    if (swallowing_) {
      swallowedUpstreamError_ = true;
      queryDeadline_.reset();  // the cancelled statement has ended
      return false;
    }
    if (!pending_.empty()) {
      PendingReply& failed = pending_.front();
      if (failed.type == fe::kParse) statements_[failed.statement] = failed.previous;
      if (failed.type == fe::kExecute || failed.type == fe::kParse || failed.type == fe::kBind) {
        if (failed.type == fe::kExecute) {
          openExtendedRecord();
        } else {
          // A statement that failed before it could run is recorded too: the harness shows it.
          record_ = observability::QueryRecord{};
          record_.sessionId = id_;
          if (failed.sql) record_.sql = *failed.sql;
          record_.started = std::chrono::system_clock::now();
          queryStart_ = Clock::now();
          recordOpen_ = true;
        }
        record_.sqlstate = fields.get('C');
        record_.errorMessage = fields.get('M');
        record_.outcome = observability::QueryOutcome::kError;
        if (record_.sqlstate == sqlstate::kQueryCanceled) {
          record_.outcome = record_.errorMessage.find("statement timeout") != std::string::npos
                                ? observability::QueryOutcome::kTimeout
                                : observability::QueryOutcome::kCancelled;
        }
        finishExtendedRecord();
      }
    }
    // PostgreSQL ignores the rest of the batch up to its Sync.
    while (!pending_.empty() && pending_.front().type != fe::kSync) popPending();
    upstreamSkipping_ = pending_.empty();
    return true;
  }
  if (swallowing_) {
    if (type == be::kCommandComplete || type == be::kPortalSuspended || type == be::kEmptyQueryResponse) {
      queryDeadline_.reset();  // the cancel came too late, but the statement has ended
    }
    // Asynchronous messages still reach the client.
    return type == be::kNotificationResponse || type == be::kParameterStatus;
  }
  const bool executing = !pending_.empty() && pending_.front().type == fe::kExecute;
  switch (type) {
    case be::kDataRow: {
      if (!executing) return true;
      openExtendedRecord();
      if (const auto breach = budget_.admitRow(frame.header.frameSize())) {
        flush(range);  // the rows before this one go out
        reportGuardrail(breach->limitName(), breach->kind == guardrails::Breach::Kind::kRows
                                                 ? std::to_string(breach->limit)
                                                 : guardrails::formatBytes(breach->limit));
        record_.outcome = breach->kind == guardrails::Breach::Kind::kRows
                              ? observability::QueryOutcome::kLimitRows
                              : observability::QueryOutcome::kLimitBytes;
        failBatchAtFront(breachError(*breach),
                         true);
        return false;
      }
      ++record_.rows;
      record_.bytes += frame.header.frameSize();
      return true;
    }
    case be::kCommandComplete:
    case be::kEmptyQueryResponse:
    case be::kPortalSuspended:
      if (!executing) return true;
      openExtendedRecord();
      budget_.endStatement();
      if (type == be::kCommandComplete) {
        protocol::MessageReader reader(frame.body());
        record_.commandTag.assign(reader.readCString());
        reader.expectEnd();
      }
      finishExtendedRecord();
      popPending();
      break;
    case be::kParseComplete:
    case be::kBindComplete:
    case be::kCloseComplete:
    case be::kNoData:
      if (!pending_.empty() && pending_.front().type != fe::kSync) popPending();
      break;
    case be::kRowDescription:
      if (!pending_.empty() && pending_.front().type == fe::kDescribe) popPending();
      break;
    case be::kCopyInResponse:
    case be::kCopyOutResponse:
    case be::kCopyBothResponse: {
      const bool copyIn = type == be::kCopyInResponse;
      if (copyIn) {
        // Get the upstream out of COPY FROM STDIN; its error ends the statement (and is dropped).
        std::string out;
        protocol::MessageWriter writer(out);
        protocol::writeCopyFail(writer, "COPY FROM STDIN is not supported by pgwire-proxy");
        // PostgreSQL ignores a Sync read in COPY IN mode: when the batch's Sync came right after this
        // Execute, it was swallowed that way and the upstream needs another to end the batch.
        if (syncSent_ && pending_.size() == 2 && pending_.back().type == fe::kSync) protocol::writeSync(writer);
        queueUpstream(out);
      }
      flush(range);
      if (executing) openExtendedRecord();
      failBatchAtFront(copyRefused(copyIn),
                       !copyIn);
      return false;
    }
    default:
      return true;  // ParameterDescription, notices, notifications, parameter status
  }
  return true;
}

void Session::reportQueuedFailure(ForwardRange& range) {
  if (passThroughRemaining_ > 0 || swallowing_ || pending_.empty() || !pending_.front().failure) return;
  const ProxyError error = std::move(*pending_.front().failure);
  pending_.pop_front();
  flush(range);  // the replies before it go out first
  swallowing_ = true;
  swallowedUpstreamError_ = false;
  sendError(error, false);
}

void Session::openExtendedRecord() {
  if (recordOpen_) return;
  const PendingReply& execute = pending_.front();
  record_ = observability::QueryRecord{};
  record_.sessionId = id_;
  if (execute.sql) record_.sql = *execute.sql;
  queryStart_ = execute.sent;
  record_.started = std::chrono::system_clock::now() -
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(Clock::now() - execute.sent);
  recordOpen_ = true;
}

void Session::finishExtendedRecord() {
  recordOpen_ = false;
  const std::chrono::duration<double> elapsed = Clock::now() - queryStart_;
  record_.seconds = elapsed.count();
  ++totals_.queries;
  totals_.rows += record_.rows;
  totals_.bytes += record_.bytes;
  context_.observer.queryFinished(record_);
}

// ---- writes to the upstream --------------------------------------------------------------------------

void Session::queueUpstream(std::string_view bytes) {
  if (upstreamOutSent_ == upstreamOut_.size()) {
    upstreamOut_.clear();
    upstreamOutSent_ = 0;
  }
  upstreamOut_.append(bytes);
}

void Session::writeQueuedUpstream() {
  try {
    while (upstreamOutSent_ < upstreamOut_.size()) {
      const std::size_t written = upstreamLink_->write(
          std::span<const char>(upstreamOut_.data() + upstreamOutSent_, upstreamOut_.size() - upstreamOutSent_));
      if (written == 0) return;  // the upstream is busy writing replies: the poll loop waits for both
      upstreamOutSent_ += written;
    }
  } catch (const IoError& error) {
    upstreamLost(error.what());
  }
  upstreamOut_.clear();
  upstreamOutSent_ = 0;
  if (upstreamOut_.capacity() > kMaxQueuedUpstreamBytes) upstreamOut_.shrink_to_fit();
}

}  // namespace pgwire_proxy::session
