// One client's life: SSL negotiation, startup, the query loop and the end, as an explicit state machine.
#include "session/session.h"

#include <openssl/ssl.h>
#include <poll.h>
#include <unistd.h>

#include <mutex>

#include "observability/log.h"
#include "protocol/constants.h"
#include "protocol/reader.h"
#include "protocol/writer.h"
#include "session/cancel_sender.h"
#include "session/session_detail.h"
#include "upstream/upstream_connection.h"

namespace pgwire_proxy::session {
using namespace detail;
namespace {

namespace fe = protocol::frontend;
namespace be = protocol::backend;

// The backend messages the relay must see whole (all small); all others stream through untouched.
// Inspected frames that go on unchanged still join the surrounding bytes in one write.
bool needsInspection(char type) {
  return type == be::kReadyForQuery || type == be::kErrorResponse || type == be::kCommandComplete ||
         type == be::kEmptyQueryResponse || type == be::kCopyInResponse || type == be::kCopyOutResponse ||
         type == be::kCopyBothResponse;
}

const char* frontendMessageName(char type) {
  switch (type) {
    case fe::kParse: return "Parse";
    case fe::kBind: return "Bind";
    case fe::kDescribe: return "Describe";
    case fe::kExecute: return "Execute";
    case fe::kClose: return "Close";
    default: return "extended-protocol";
  }
}


}  // namespace

Session::Session(SessionContext& context, std::uint64_t id, int clientFd, std::string clientAddress)
    : context_(context),
      id_(id),
      clientFd_(clientFd),
      clientAddress_(std::move(clientAddress)),
      client_(std::make_unique<PlainChannel>(clientFd)),
      started_(Clock::now()),
      startupDeadline_(started_ + context.config.startupTimeout),
      clientIn_(kClientReadChunk),
      upstreamIn_(kUpstreamReadChunk),
      budget_(0, 0) {
  if (context_.tracker != nullptr) context_.tracker->connectionStarted(clientFd_);
  inStartupCount_ = true;
  overStartupLimit_ = !context_.registry.enterStartup(context_.config.maxStartupConnections);
}

Session::~Session() {
  if (!finished_) {
    releaseUpstream();
    finish();
  }
}

std::optional<Interest> Session::advance(const Readiness& ready) noexcept {
  try {
    if (ending_) return endingStep(ready);
    try {
      switch (state_) {
        case State::kAwaitingStartup:
          return startupStep(ready);
        case State::kTlsHandshake:
          return tlsStep(ready);
        case State::kConnecting:
          return connectStep(ready);
        default:
          return step(ready);
      }
    } catch (...) {
      fail(std::current_exception());
    }
    return endingStep(Readiness{});
  } catch (...) {
    releaseUpstream();
    finish();
    return std::nullopt;
  }
}

void Session::fail(std::exception_ptr failure) noexcept {
  ending_ = true;
  endDeadline_ = Clock::now() + kBestEffortWriteTimeout;
  std::optional<ProxyError> lastWords;
  try {
    std::rethrow_exception(failure);
  } catch (const SessionEnded& ended) {
    closeReason_ = ended.reason;
  } catch (const ProxyError& error) {
    closeReason_ = error.what();
    if (opened_) {
      context_.observer.proxyError(id_, error);
    } else {
      context_.observer.sessionRejected(id_, clientAddress_, rejectReason(error), error);
    }
    lastWords = error;
  } catch (const IoError& error) {
    closeReason_ = std::string("client connection failed: ") + error.what();
    clientOut_.clear();  // nobody left to read it
    clientOutSent_ = 0;
  } catch (const std::exception& error) {
    closeReason_ = std::string("internal error: ") + error.what();
    observability::logEvent(observability::LogLevel::kError, "session_failed",
                            {{"session", id_}, {"error", error.what()}});
    lastWords = ProxyError(Severity::kFatal, sqlstate::kInternalError, "internal error in pgwire-proxy");
  } catch (...) {
    closeReason_ = "internal error";
    observability::logEvent(observability::LogLevel::kError, "session_failed", {{"session", id_}, {"error", "unknown"}});
  }
  releaseUpstream();
  if (lastWords) {
    try {
      // After whatever the client has not taken yet: the error must not land inside a message.
      std::string out;
      protocol::MessageWriter writer(out);
      protocol::writeErrorResponse(writer, *lastWords);
      if (clientOutSent_ == clientOut_.size()) {
        clientOut_.clear();
        clientOutSent_ = 0;
      }
      clientOut_ += out;
    } catch (...) {
    }
  }
}

std::optional<Interest> Session::endingStep(const Readiness& ready) {
  if (clientOutPending() && !ready.forced && Clock::now() < endDeadline_) {
    try {
      writeClientOut();
    } catch (const IoError&) {
      clientOut_.clear();
      clientOutSent_ = 0;
    }
    if (clientOutPending()) {
      Interest interest = clientInterest(client_->writeEvents(), endDeadline_);
      interest.upstreamEpoch = connectEpoch_;
      return interest;
    }
  }
  finish();
  return std::nullopt;
}

void Session::releaseUpstream() noexcept {
  // A client gone mid-query must not leave its query running upstream.
  if (upstream_ && (upstreamBusy() || connectingUpstream_)) cancelUpstream();
  if (cancelKey_) context_.registry.remove(cancelKey_->processId);
  cancelKey_.reset();
  if (canceller_) canceller_->detach();
  upstreamLink_.reset();
  if (upstream_) {
    upstream_.reset();  // Terminate, then close
    ++connectEpoch_;    // the loop forgets the closed descriptor (its number may be reused at once)
  }
}

void Session::finish() noexcept {
  if (finished_) return;
  finished_ = true;
  leaveStartup();
  if (admitted_) context_.registry.release();
  admitted_ = false;
  if (opened_) {
    const std::chrono::duration<double> lifetime = Clock::now() - started_;
    const std::string* user = startup_.parameter("user");
    const std::string* database = startup_.parameter("database");
    try {
      context_.observer.sessionClosed({id_, clientAddress_, user != nullptr ? *user : std::string_view(),
                                       database != nullptr ? *database : std::string_view(), clientApplicationName_,
                                       lifetime.count(), totals_.queries, totals_.rows, totals_.bytes, closeReason_});
    } catch (...) {
    }
  }
  client_.reset();  // a TLS channel frees its SSL object
  if (context_.tracker != nullptr) context_.tracker->connectionFinished(clientFd_);
  ::close(clientFd_);
}


std::string_view Session::rejectReason(const ProxyError& error) const {
  if (connectingUpstream_) return "upstream_error";
  const auto& code = error.sqlstate();
  if (code == sqlstate::kTooManyConnections) return "too_many_connections";
  if (code == sqlstate::kInvalidAuthorization && context_.config.tlsRequired) return "tls_required";
  if (code == sqlstate::kProtocolViolation) return "protocol_violation";
  if (code == sqlstate::kFeatureNotSupported) return "unsupported";
  if (code == sqlstate::kAdminShutdown) return "shutdown";
  return "other";
}

// ---- the relay: one step at a time ----------------------------------------------------------------

void Session::onClientCancel() {
  if (holdUntil_) {
    cancelHold();  // the client cancelled a query the proxy holds (a fault's delay)
    return;
  }
  if (!upstreamBusy()) return;
  observability::logEvent(observability::LogLevel::kInfo, "cancel_forwarded", {{"session", id_}});
  cancelUpstream(false);
}


std::optional<Interest> Session::step(const Readiness& ready) {
  const ProxyError shuttingDown(Severity::kFatal, sqlstate::kAdminShutdown,
                                "terminating connection because pgwire-proxy is shutting down");
  shutdownSeen_ = shutdownSeen_ || ready.shutdown;
  forcedSeen_ = forcedSeen_ || ready.forced;
  const auto now = Clock::now();
  if (canceller_ && canceller_->takeRequest()) onClientCancel();
  if (holdUntil_ && now >= *holdUntil_) releaseHold();  // an injected delay is over
  if (ready.timedOut && upstreamBusy() && queryDeadline_ && now >= *queryDeadline_) {
    // A client that does not read must not hold the session past the query's deadline.
    if (clientOutPending()) throw SessionEnded{"the client stopped reading; the query timeout expired"};
    onQueryDeadline();
  }
  if (forcedSeen_) {
    if (clientOutPending()) throw SessionEnded{"immediate shutdown while the client was not reading"};
    throw shuttingDown;  // a running query is cancelled on the way out
  }
  if (shutdownSeen_) {
    if (!upstreamBusy()) throw shuttingDown;  // idle: end now; a running query may finish first
    draining_ = true;
  }

  bool clientReadable = ready.client != 0;
  bool upstreamReadable = ready.upstream != 0;
  for (;;) {
    if (state_ == State::kClosing) return std::nullopt;
    if (clientOutPending()) writeClientOut();
    if (!upstreamBusy() && draining_) throw shuttingDown;  // the running query has finished
    // The client's next message waits until its previous answer is out (and, in a query, in the kernel).
    if (acceptingClient() && !clientOutPending()) {
      if (const auto frame = protocol::decodeFrame(clientIn_.readable(), context_.config.maxMessageSize)) {
        // A frame left unconsumed waits for the state it needs (a Query behind an unfinished batch).
        if (handleClientFrame(*frame)) clientIn_.consume(frame->bytes.size());
        continue;
      }
      if ((clientReadable || client_->hasPendingInput()) && tryReadClient(clientReadable)) continue;
    }
    // Everything the client's buffered messages produced goes upstream in one write.
    if (upstreamOutSent_ < upstreamOut_.size()) {
      const bool wasAccepting = acceptingClient();
      writeQueuedUpstream();
      // Room again for the client's messages: those already buffered are decoded now, never left
      // waiting for more input that may not come (a large Bind read whole).
      if (!wasAccepting && acceptingClient() && !clientIn_.empty()) continue;
    }
    // Upstream bytes are read once the client has taken the last ones (no unbounded buffering).
    if (!clientOutPending() && !holdUntil_ && (upstreamReadable || upstreamLink_->hasPendingInput()) &&
        tryPumpUpstream(upstreamReadable)) {
      continue;
    }
    break;
  }
  // While a query runs the client is only watched for hanging up; its next messages wait in the kernel.
  if ((ready.client & (POLLRDHUP | POLLHUP | POLLERR)) != 0 && upstreamBusy() && !acceptingClient()) {
    throw SessionEnded{"client disconnected during a query"};
  }
  // Seen once is enough: level-triggered, a half-closed client would otherwise wake every wait (say
  // while it does not read the rest of an answer).
  if ((ready.client & POLLRDHUP) != 0) clientHalfClosed_ = true;
  if (!upstreamBusy()) {
    // Give back what an unusually large message or result made the buffers grow to (no frame is
    // being processed here, so no span into them is alive).
    clientIn_.shrinkTo(kIdleBufferCapacity);
    upstreamIn_.shrinkTo(kIdleBufferCapacity);
  }
  Interest interest;
  interest.clientFd = clientFd_;
  interest.upstreamFd = upstreamFd();
  interest.upstreamEpoch = connectEpoch_;
  interest.client = clientHalfClosed_ ? 0 : POLLRDHUP;
  if (acceptingClient() && !clientOutPending()) interest.client |= client_->readEvents();
  if (clientOutPending()) interest.client |= client_->writeEvents();
  if (!clientOutPending() && !holdUntil_) interest.upstream = upstreamLink_->readEvents();
  if (upstreamOutSent_ < upstreamOut_.size()) interest.upstream |= upstreamLink_->writeEvents();
  if (upstreamBusy()) interest.deadline = queryDeadline_;
  if (holdUntil_) {
    // A cancel request for a held query is noticed within kHoldPollInterval.
    const auto wake = std::min(*holdUntil_, Clock::now() + kHoldPollInterval);
    if (!interest.deadline || wake < *interest.deadline) interest.deadline = wake;
  }
  return interest;
}

bool Session::tryReadClient(bool& more) {
  const std::span<char> into = clientIn_.prepareWrite(kClientReadChunk);
  const auto count = client_->read(into);
  more = false;
  if (!count) return false;
  if (*count == 0) {
    clientLeft();
    return true;
  }
  clientIn_.commitWrite(*count);
  more = *count == into.size();  // a full read: there may be more
  return true;
}

bool Session::tryPumpUpstream(bool& more) {
  std::optional<std::size_t> count;
  std::span<char> into;
  try {
    into = upstreamIn_.prepareWrite(kUpstreamReadChunk);
    count = upstreamLink_->read(into);
  } catch (const IoError& error) {
    upstreamLost(error.what());
  }
  more = false;
  if (!count) return false;
  if (*count == 0) upstreamLost("the upstream server closed the connection");
  upstreamIn_.commitWrite(*count);
  more = *count == into.size();
  processUpstreamBytes();
  return true;
}

void Session::writeClient(std::span<const char> data) {
  if (!clientOutPending()) data = data.subspan(client_->write(data));
  if (data.empty()) return;
  if (clientOutSent_ == clientOut_.size()) {
    clientOut_.clear();
    clientOutSent_ = 0;
  }
  clientOut_.append(data.data(), data.size());
}

void Session::writeClientOut() {
  while (clientOutSent_ < clientOut_.size()) {
    const std::size_t written =
        client_->write(std::span<const char>(clientOut_.data() + clientOutSent_, clientOut_.size() - clientOutSent_));
    if (written == 0) return;
    clientOutSent_ += written;
  }
  clientOut_.clear();
  clientOutSent_ = 0;
  if (clientOut_.capacity() > kIdleBufferCapacity) clientOut_.shrink_to_fit();
}

void Session::setCancellable(bool cancellable) { canceller_->setInQuery(cancellable); }

void Session::clientLeft() noexcept {
  if (upstreamBusy()) cancelUpstream();  // an unfinished extended-protocol batch must not run on
  state_ = State::kClosing;
}

bool Session::handleClientFrame(const protocol::Frame& frame) {
  if (state_ == State::kDiscardingUntilSync) {
    if (frame.type() == fe::kSync) {
      std::string out;
      protocol::MessageWriter writer(out);
      protocol::writeReadyForQuery(writer, transactionStatus_);
      sendToClient(out);
      state_ = State::kReady;
    } else if (frame.type() == fe::kTerminate) {
      closeReason_ = "client terminated";
      state_ = State::kClosing;
    } else if (frame.type() == fe::kQuery) {
      // A client that sends a simple Query without a Sync after the proxy's refusal (node-pg after a
      // refused stream) expects its answer: the refusal ends there, the Query is served.
      state_ = State::kReady;
      startQuery(frame);
    }
    return true;
  }
  if (context_.config.extendedProtocolRelay &&
      (state_ == State::kExtended || frame.type() == fe::kParse || frame.type() == fe::kBind ||
       frame.type() == fe::kDescribe || frame.type() == fe::kExecute || frame.type() == fe::kClose ||
       frame.type() == fe::kSync || frame.type() == fe::kFlush)) {
    return relayExtendedFrame(frame);
  }
  switch (frame.type()) {
    case fe::kQuery:
      startQuery(frame);
      return true;
    case fe::kTerminate:
      closeReason_ = "client terminated";
      state_ = State::kClosing;
      return true;
    case fe::kSync: {  // a Sync with nothing before it still gets its ReadyForQuery
      std::string out;
      protocol::MessageWriter writer(out);
      protocol::writeReadyForQuery(writer, transactionStatus_);
      sendToClient(out);
      return true;
    }
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
      sendToClient(out);
      return true;
    }
    case fe::kParse:
    case fe::kBind:
    case fe::kDescribe:
    case fe::kExecute:
      rejectExtendedProtocol(frame.type());
      return true;
    case fe::kFunctionCall: {
      const ProxyError error(Severity::kError, sqlstate::kFeatureNotSupported,
                             "the function call protocol is not supported by pgwire-proxy");
      context_.observer.proxyError(id_, error);
      sendError(error, true);
      return true;
    }
    default:
      throw ProtocolError("invalid frontend message type " + std::to_string(static_cast<int>(frame.type())));
  }
}

void Session::rejectExtendedProtocol(char type) {
  const ProxyError error(Severity::kError, sqlstate::kFeatureNotSupported,
                         "the extended query protocol is not supported by pgwire-proxy",
                         std::string("The client sent a ") + frontendMessageName(type) + " message.",
                         "Use the simple query protocol (for example psycopg's ClientCursor, or psql).");
  context_.observer.proxyError(id_, error);
  sendError(error, false);
  state_ = State::kDiscardingUntilSync;
}

void Session::startQuery(const protocol::Frame& frame) {
  const std::string_view sql = protocol::parseQuery(frame.body());  // a malformed Query never goes upstream
  beginRecord(sql);
  const auto& rails = currentGuardrails();
  if (const auto verdict = rails->filter.check(sql)) {
    sendError(recordDenied(record_, *verdict), true);
    return;
  }
  std::shared_ptr<faults::Rule> fault;
  if (context_.faults != nullptr) fault = firingFault(sql);
  if (fault && injectFault(*fault, frame)) return;
  canceller_->setInQuery(true);  // waits while a cancel for the previous query is in flight
  budget_ = guardrails::ResultBudget(rails->maxRows, rails->maxBytes);
  upstreamCancelled_ = false;
  abortingTransaction_ = false;
  backstopFired_ = false;
  queryDeadline_.reset();
  if (queryTimeout_.count() > 0) {
    queryDeadline_ = queryStart_ + config::backstopDelay(queryTimeout_);
  }
  state_ = State::kInQuery;
  if (fault) {
    const auto& spec = fault->spec();
    if (spec.action == faults::Action::kError) {
      // After: the query runs, its results are discarded, and the client gets the error instead.
      record_.outcome = observability::QueryOutcome::kError;
      beginDraining(ProxyError(spec.severity == "FATAL" ? Severity::kFatal : Severity::kError, spec.sqlstate,
                               spec.message, spec.detail, spec.hint),
                    false);
      if (spec.when == faults::When::kBefore) {
        // Before, inside a transaction block: an error fails the transaction, so the upstream's must
        // fail too. The query is not sent; a failing statement is (its error is discarded).
        queueAbortingQuery();
        return;
      }
    } else if (spec.action == faults::Action::kDelay && spec.when == faults::When::kBefore) {
      heldQuery_.assign(frame.bytes.data(), frame.bytes.size());
      holdUntil_ = Clock::now() + spec.delay;
      queryDeadline_.reset();  // the backstop starts when the query goes upstream
      return;
    } else if (spec.action == faults::Action::kDelay) {
      holdUntil_ = Clock::now() + spec.delay;  // the results wait
    } else if (spec.action == faults::Action::kDrop && spec.when == faults::When::kAfterRows) {
      dropAfterRows_ = spec.rows;
    } else if (spec.action == faults::Action::kDrop) {
      dropMidMessage_ = true;
    }
  }
  queueUpstream({frame.bytes.data(), frame.bytes.size()});
}

std::shared_ptr<faults::Rule> Session::firingFault(std::string_view sql, bool extended) {
  if (const auto version = context_.faults->version(); !faultsLoaded_ || version != faultsVersion_) {
    faultRules_ = context_.faults->rules();
    faultsVersion_ = version;
    faultsLoaded_ = true;
  }
  if (faultRules_.empty()) return nullptr;
  const std::string* user = startup_.parameter("user");
  const std::string* database = startup_.parameter("database");
  const faults::QueryContext who{user != nullptr ? std::string_view(*user) : std::string_view(),
                                 database != nullptr ? std::string_view(*database) : std::string_view(),
                                 clientApplicationName_};
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

bool Session::injectFault(const faults::Rule& rule, const protocol::Frame& frame) {
  const auto& spec = rule.spec();
  record_.injected.assign(faults::actionName(spec.action));
  context_.observer.faultInjected(id_, rule.id(), faults::actionName(spec.action),
                                  std::string_view(record_.sql).substr(0, kQueryExcerptLength));
  (void)frame;
  const bool fatal = spec.severity == "FATAL";
  switch (spec.action) {
    case faults::Action::kError: {
      if (spec.when == faults::When::kAfter) return false;
      if (!fatal && transactionStatus_ == protocol::kTxInBlock) return false;  // startQuery fails it upstream
      const ProxyError error(fatal ? Severity::kFatal : Severity::kError, spec.sqlstate, spec.message, spec.detail,
                             spec.hint);
      record_.sqlstate = error.sqlstate();
      record_.errorMessage = error.message();
      record_.outcome = observability::QueryOutcome::kError;
      ++totals_.queries;
      context_.observer.queryFinished(record_);
      if (fatal) throw error;  // sent as the session's last words, then the connection closes
      sendError(error, true);
      return true;
    }
    case faults::Action::kDrop:
      if (spec.when != faults::When::kBefore) return false;
      record_.outcome = observability::QueryOutcome::kError;
      ++totals_.queries;
      context_.observer.queryFinished(record_);
      throw SessionEnded{"fault injected: connection dropped before the query"};
    case faults::Action::kNotice: {
      std::string out;
      protocol::MessageWriter writer(out);
      protocol::writeNoticeResponse(writer, spec.severity.empty() ? "NOTICE" : spec.severity, spec.sqlstate,
                                    spec.message, spec.detail, spec.hint);
      sendToClient(out);
      return false;
    }
    case faults::Action::kDelay:
      return false;
  }
  return false;
}

void Session::dropWithRecord(const std::string& reason) {
  // The query stays "running" (state kInQuery), so the way out cancels it upstream.
  record_.outcome = observability::QueryOutcome::kError;
  record_.seconds = std::chrono::duration<double>(Clock::now() - queryStart_).count();
  ++totals_.queries;
  totals_.rows += record_.rows;
  totals_.bytes += record_.bytes;
  context_.observer.queryFinished(record_);
  throw SessionEnded{reason};
}

void Session::cancelHold() {
  holdUntil_.reset();
  const ProxyError cancelled(Severity::kError, sqlstate::kQueryCanceled, "canceling statement due to user request");
  record_.outcome = observability::QueryOutcome::kCancelled;
  if (!heldQuery_.empty()) {  // it never went upstream
    heldQuery_.clear();
    record_.sqlstate = cancelled.sqlstate();
    record_.errorMessage = cancelled.message();
    finishQuery();
    sendError(cancelled, true);
    return;
  }
  beginDraining(cancelled, false);  // its results are dropped; the error comes at their end
}

void Session::releaseHold() {
  holdUntil_.reset();
  if (heldQuery_.empty()) return;
  queueUpstream(heldQuery_);
  heldQuery_.clear();
  if (queryTimeout_.count() > 0) {
    queryDeadline_ = Clock::now() + config::backstopDelay(queryTimeout_);
  }
}

const std::shared_ptr<const guardrails::GuardrailSet>& Session::currentGuardrails() {
  if (const auto version = context_.guardrails.version(); !rails_ || version != railsVersion_) {
    rails_ = context_.guardrails.load();  // stored before the version was bumped: this one or newer
    railsVersion_ = version;
  }
  return rails_;
}

void Session::beginRecord(std::string_view sql) {
  queryStart_ = Clock::now();
  record_ = observability::QueryRecord{};
  record_.sessionId = id_;
  record_.sql.assign(sql);
  record_.started = std::chrono::system_clock::now();
  context_.observer.queryStarted(id_, sql);
}

ProxyError Session::recordDenied(observability::QueryRecord& record, const guardrails::FilterVerdict& verdict) {
  // Refused before anything ran: no time went by that the guardrail report could show.
  context_.observer.guardrailTripped(id_, verdict.rule.starts_with("deny") ? "deny" : "allow", verdict.rule, 0.0,
                                     std::string_view(record.sql).substr(0, kQueryExcerptLength));
  ProxyError error(Severity::kError, sqlstate::kInsufficientPrivilege, verdict.message, {},
                   "The proxy's --deny/--allow patterns decide which queries may run.");
  record.sqlstate = error.sqlstate();
  record.errorMessage = error.message();
  record.outcome = observability::QueryOutcome::kDenied;
  ++totals_.queries;
  context_.observer.queryFinished(record);  // recorded before the client can see the outcome
  return error;
}

void Session::queueAbortingQuery() {
  abortingTransaction_ = true;
  std::string out;
  protocol::MessageWriter writer(out);
  writer.beginMessage(fe::kQuery);
  writer.writeCString(kAbortTransactionSql);
  writer.endMessage();
  queueUpstream(out);
}

void Session::finishQuery() {
  dropAfterRows_.reset();
  dropMidMessage_ = false;
  canceller_->setInQuery(false);
  state_ = State::kReady;
  const std::chrono::duration<double> elapsed = Clock::now() - queryStart_;
  record_.seconds = elapsed.count();
  ++totals_.queries;
  totals_.rows += record_.rows;
  totals_.bytes += record_.bytes;
  context_.observer.queryFinished(record_);
}

// ---- upstream to client ----------------------------------------------------------------------

int Session::upstreamFd() const noexcept { return upstreamLink_ ? upstreamLink_->fd() : -1; }

void Session::processUpstreamBytes() {
  if (state_ == State::kExtended) {
    processExtendedUpstreamBytes();
    if (state_ == State::kExtended || upstreamIn_.empty()) return;
  }
  ForwardRange range{upstreamIn_.readable()};
  // The rest of a frame whose start was already forwarded streams on without buffering.
  if (passThroughRemaining_ > 0) {
    range.end = std::min(passThroughRemaining_, range.data.size());
    passThroughRemaining_ -= range.end;
  }
  while (range.end < range.data.size()) {
    std::optional<protocol::FrameHeader> header;
    try {
      header = protocol::decodeHeader(range.data.subspan(range.end), kMaxUpstreamMessage);
    } catch (const ProtocolError& error) {
      upstreamLost(std::string("invalid data from the upstream server: ") + error.what());
    }
    if (!header) break;
    const std::size_t available = range.data.size() - range.end;
    if (dropMidMessage_) {
      range.end += std::min(available, std::max<std::size_t>(1, header->frameSize() / 2));
      flush(range);  // half a message, then nothing
      dropWithRecord("fault injected: connection dropped in the middle of a message");
    }
    if (!needsInspection(header->type)) {
      if (header->type == be::kDataRow) admitDataRow(*header, range);
      if (header->frameSize() <= available) {
        range.end += header->frameSize();
      } else {
        passThroughRemaining_ = header->frameSize() - available;
        range.end = range.data.size();
      }
      continue;
    }
    const bool prefixOnly = streamsWithPrefix(*header);
    if (!prefixOnly && header->frameSize() > kMaxInspectedUpstreamMessage) {
      upstreamLost("the upstream server sent an oversized message of type '" + std::string(1, header->type) + "'");
    }
    // Wait for the whole frame, or for the prefix of one read from its prefix.
    if ((prefixOnly ? kErrorPrefix : header->frameSize()) > available) break;
    const protocol::Frame frame{*header, range.data.subspan(range.end, std::min(header->frameSize(), available))};
    bool forward = true;
    try {
      forward = handleUpstreamFrame(frame, range);
    } catch (const ProtocolError& error) {
      upstreamLost(std::string("invalid message from the upstream server: ") + error.what());
    }
    if (header->frameSize() <= available) {
      range.end += header->frameSize();
    } else {
      // The rest streams on: forwarded, or dropped with the frame while draining (flush skips it).
      passThroughRemaining_ = header->frameSize() - available;
      range.end = range.data.size();
    }
    if (!forward) range.begin = range.end;
  }
  flush(range);
  upstreamIn_.consume(range.end);
}

void Session::admitDataRow(const protocol::FrameHeader& header, ForwardRange& range) {
  if (pendingError_) return;  // draining: nothing is counted or sent
  if (dropAfterRows_ && record_.rows >= *dropAfterRows_) {
    flush(range);  // the rows before this one reach the client, then the connection goes
    dropWithRecord("fault injected: connection dropped after " + std::to_string(*dropAfterRows_) + " rows");
  }
  if (const auto breach = budget_.admitRow(header.frameSize())) {
    // Rows before this one go out; this one and the rest are discarded while draining.
    flush(range);
    reportGuardrail(breach->limitName(), breach->kind == guardrails::Breach::Kind::kRows
                                             ? std::to_string(breach->limit)
                                             : guardrails::formatBytes(breach->limit));
    record_.outcome = breach->kind == guardrails::Breach::Kind::kRows ? observability::QueryOutcome::kLimitRows
                                                                       : observability::QueryOutcome::kLimitBytes;
    beginDraining(breachError(*breach),
                  true);
    return;
  }
  ++record_.rows;
  record_.bytes += header.frameSize();
}

bool Session::handleUpstreamFrame(const protocol::Frame& frame, ForwardRange& range) {
  switch (frame.type()) {
    case be::kCommandComplete:
    case be::kEmptyQueryResponse:
      budget_.endStatement();
      if (frame.type() == be::kCommandComplete && !pendingError_) {
        protocol::MessageReader reader(frame.body());
        record_.commandTag.assign(reader.readCString());
        reader.expectEnd();
      }
      return !pendingError_;
    case be::kReadyForQuery: {
      protocol::MessageReader reader(frame.body());
      transactionStatus_ = static_cast<char>(reader.readByte());
      reader.expectEnd();
      if (pendingError_ && transactionStatus_ == protocol::kTxInBlock && !abortingTransaction_ &&
          state_ == State::kInQuery) {
        // The statement finished upstream before the cancel landed, inside a transaction block: fail
        // the transaction there too, then report (the next ReadyForQuery says 'E').
        queueAbortingQuery();
        return false;
      }
      // The query is recorded before the client can see its end (capture reads are then exact).
      if (state_ == State::kInQuery) finishQuery();
      if (!pendingError_) return true;
      flush(range);
      const ProxyError error = std::move(*pendingError_);
      pendingError_.reset();
      if (error.severity() == Severity::kFatal) throw error;  // an injected FATAL: the session ends with it
      sendError(error, true);
      return false;
    }
    case be::kErrorResponse: {
      const auto fields = errorFieldsOf(frame);
      budget_.endStatement();
      if (fields.isFatal()) {
        upstreamSentFatal_ = true;
        // The client is about to lose the session: the upstream's own FATAL error reaches it.
        pendingError_.reset();
      }
      if (pendingError_) return false;  // consequences of the proxy's own action (cancel, CopyFail)
      if (record_.sqlstate.empty()) {
        record_.sqlstate = fields.get('C');
        record_.errorMessage = fields.get('M');
        record_.outcome = observability::QueryOutcome::kError;
        if (record_.sqlstate == sqlstate::kQueryCanceled) {
          // The server's statement_timeout and a user's cancel share 57014; the message tells them apart.
          record_.outcome = record_.errorMessage.find("statement timeout") != std::string::npos
                                ? observability::QueryOutcome::kTimeout
                                : observability::QueryOutcome::kCancelled;
        }
      }
      return true;
    }
    case be::kCopyInResponse: {
      // Get the upstream out of COPY FROM STDIN; its answer is an error that ends the query.
      std::string out;
      protocol::MessageWriter writer(out);
      protocol::writeCopyFail(writer, "COPY FROM STDIN is not supported by pgwire-proxy");
      queueUpstream(out);
      if (!pendingError_) {
        flush(range);
        beginDraining(copyRefused(true),
                      false);
      }
      return false;
    }
    case be::kCopyOutResponse:
    case be::kCopyBothResponse:
      if (!pendingError_) {
        flush(range);
        beginDraining(copyRefused(false),
                      true);
      }
      return false;
    default:
      return !pendingError_;
  }
}

void Session::flush(ForwardRange& range) {
  if (range.end > range.begin && !pendingError_) {
    writeClient(range.data.subspan(range.begin, range.end - range.begin));
  }
  range.begin = range.end;
}

void Session::beginDraining(ProxyError error, bool cancel) {
  if (record_.sqlstate.empty()) {
    record_.sqlstate = error.sqlstate();
    record_.errorMessage = error.message();
  }
  if (record_.outcome == observability::QueryOutcome::kOk) record_.outcome = observability::QueryOutcome::kError;
  pendingError_ = std::move(error);
  if (cancel && !upstreamCancelled_) cancelUpstream();
}

void Session::reportGuardrail(std::string_view limit, const std::string& value) {
  const std::chrono::duration<double> elapsed = Clock::now() - queryStart_;
  context_.observer.guardrailTripped(id_, limit, value, elapsed.count(),
                                     std::string_view(record_.sql).substr(0, kQueryExcerptLength));
}

void Session::onQueryDeadline() {
  if (state_ == State::kExtended) {
    onExtendedDeadline();
    return;
  }
  if (!backstopFired_) {
    // statement_timeout should have ended the query by now (a client may have SET it to 0).
    backstopFired_ = true;
    reportGuardrail("query-timeout", config::formatDuration(queryTimeout_));
    const bool wasDraining = pendingError_.has_value();
    upstreamCancelled_ = false;  // a cancel sent earlier evidently did not stop it; send another
    if (!wasDraining) {
      record_.outcome = observability::QueryOutcome::kTimeout;
      beginDraining(backstopError(),
                    true);
    } else {
      cancelUpstream();
    }
    queryDeadline_ = Clock::now() + kCancelGrace;
    return;
  }
  cancelGraceExpired();
}

ProxyError Session::backstopError() const {
  return ProxyError(Severity::kError, sqlstate::kQueryCanceled,
                    "canceling statement due to the proxy's query timeout of " +
                        config::formatDuration(queryTimeout_),
                    "The upstream server did not stop the statement at its statement_timeout; "
                    "pgwire-proxy cancelled it.",
                    "Raise --query-timeout, or make the query faster.");
}

ProxyError Session::breachError(const guardrails::Breach& breach) const {
  return ProxyError(Severity::kError, sqlstate::kProgramLimitExceeded, breach.message(),
                    "pgwire-proxy stopped the result after " + std::to_string(budget_.rows()) +
                        " rows and cancelled the statement.",
                    breach.hint());
}

ProxyError Session::copyRefused(bool copyIn) {
  return copyIn ? ProxyError(Severity::kError, sqlstate::kFeatureNotSupported,
                             "COPY FROM STDIN is not supported by pgwire-proxy",
                             "The COPY was aborted on the upstream server; nothing was copied.",
                             "Use INSERT statements, or connect to PostgreSQL directly for bulk loads.")
                : ProxyError(Severity::kError, sqlstate::kFeatureNotSupported,
                             "COPY TO STDOUT is not supported by pgwire-proxy",
                             "The COPY was cancelled on the upstream server.",
                             "Use SELECT, or connect to PostgreSQL directly for bulk exports.");
}

void Session::cancelGraceExpired() {
  upstreamLost("the upstream server did not end a cancelled statement within " +
               config::formatDuration(std::chrono::duration_cast<config::Milliseconds>(kCancelGrace)));
}

void Session::cancelUpstream(bool proxyInitiated) noexcept {
  if (!upstream_ || (proxyInitiated && upstreamCancelled_)) return;
  if (proxyInitiated) upstreamCancelled_ = true;
  const auto& data = upstream_->cancelData();
  if (!data) {
    // This libpq's cancel key could not be read: its own blocking PQcancel is all there is.
    std::string error;
    if (!upstream_->cancel(error)) {
      observability::logEvent(observability::LogLevel::kWarning, "cancel_failed", {{"session", id_}, {"error", error}});
    }
    return;
  }
  CancelDestination destination;
  destination.address = data->address;
  destination.addressLength = data->addressLength;
  destination.processId = data->processId;
  destination.secretKey = data->secretKey;
  destination.label = "upstream";
  ++*cancelsInFlight_;
  // The next statement waits until this one's cancel has been delivered (see acceptingClient), so a
  // late cancel never lands on it. The session may be gone by then: the counter outlives it.
  auto done = [inFlight = cancelsInFlight_, &loop = loop(), session = taskId()](bool) {
    --*inFlight;
    loop.wake(session);
  };
  try {
    loop().spawn(std::make_unique<CancelSender>(std::move(destination), kCancelSendTimeout, id_, std::move(done)));
  } catch (...) {
    --*cancelsInFlight_;
  }
}

void Session::upstreamLost(const std::string& why) {
  observability::logEvent(observability::LogLevel::kWarning, "upstream_lost", {{"session", id_}, {"reason", why}});
  upstream_->abandon();
  upstreamCancelled_ = true;  // nothing left to cancel
  state_ = State::kClosing;
  // The client already has the upstream's own FATAL error (admin shutdown, idle timeout ...).
  if (upstreamSentFatal_) throw SessionEnded{"upstream ended the session"};
  throw ProxyError(Severity::kFatal, sqlstate::kConnectionFailure, "lost the connection to the upstream server",
                   why);
}

// ---- client I/O --------------------------------------------------------------------------------

void Session::sendError(const ProxyError& error, bool withReadyForQuery) {
  std::string out;
  protocol::MessageWriter writer(out);
  protocol::writeErrorResponse(writer, error);
  if (withReadyForQuery) protocol::writeReadyForQuery(writer, transactionStatus_);
  sendToClient(out);
}

}  // namespace pgwire_proxy::session
