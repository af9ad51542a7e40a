// One client's life on the event loop: the relay's shell (its sockets, buffers and flow control) and
// the end. What the messages mean is the Relay's (relay.h); the startup states are in startup.cpp.
#include "session/session.h"

#include <poll.h>
#include <unistd.h>

#include "observability/log.h"
#include "protocol/constants.h"
#include "protocol/writer.h"
#include "session/cancel_sender.h"
#include "session/session_detail.h"
#include "upstream/upstream_connection.h"

namespace pgwire_proxy::session {
using namespace detail;
namespace {

namespace fe = protocol::frontend;

// Client messages queued for a slow upstream beyond this stop the session reading the client.
constexpr std::size_t kMaxQueuedUpstreamBytes = 1024 * 1024;
// Reads per wake-up: a session with a fast client and a fast upstream yields to the others on its
// loop after this many (at most a few MB), and is stepped again at once.
constexpr int kMaxReadsPerStep = 32;

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
      upstreamIn_(kUpstreamReadChunk) {
  inStartupCount_ = true;
  overStartupLimit_ = !context_.registry.enterStartup(context_.config.maxStartupConnections);
}

Session::~Session() {
  if (handover_) context_.pool->abandon(handover_);  // a connection given meanwhile is parked
  if (!finished_) {
    releaseUpstream();
    finish();
  }
  // Descriptors close only here, after the loop has taken them out of its set: a number closed
  // earlier could be reused by another connection before the loop forgot it.
  upstreamLink_.reset();
  if (reusable_ && upstream_) {
    // Reset and parked by a task of its own (this session is out of the loop's set by now); a loop
    // going away drops the task, which closes the connection.
    loop().spawn(std::make_unique<UpstreamReset>(*context_.pool, poolKey_, std::move(upstream_), id_));
  }
  upstream_.reset();  // Terminate, then close
  client_.reset();    // a TLS channel frees its SSL object
  if (context_.tracker != nullptr) {
    context_.tracker->connectionFinished(clientFd_);
  } else {
    ::close(clientFd_);
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
        case State::kAdopting:
          if ((ready.client & POLLIN) != 0) clientSpokeEarly_ = true;
          return state_ == State::kConnecting ? connectStep(ready) : adoptStep(ready);
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

bool Session::handsOn(int fd) const noexcept {
  if (fd == clientFd_ || !upstream_ || fd != upstream_->socket()) return false;
  // The destructor spawns the reset iff reusable_, decided by releaseUpstream: already, or in the
  // destructor from the same state (the loop asks right before it destroys the session).
  return upstreamReleased_ ? reusable_ : upstreamReusable();
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
      return clientInterest(client_->writeEvents(), endDeadline_);  // the upstream is no longer watched
    }
  }
  finish();
  return std::nullopt;
}

void Session::releaseUpstream() noexcept {
  if (upstreamReleased_) return;
  upstreamReleased_ = true;
  reusable_ = upstreamReusable();
  // A client gone mid-query must not leave its query running upstream.
  if (upstream_ && !upstreamGone_ && upstreamBusy()) sendCancel();
  if (cancelKey_) context_.registry.remove(cancelKey_->processId);
  cancelKey_.reset();
  if (canceller_) canceller_->detach();
  // The connection itself closes with the session (see the destructor); it is not watched meanwhile.
}

bool Session::upstreamReusable() const noexcept {
  // Only a session the client ended between statements, on an upstream that is idle outside any
  // transaction with nothing in flight either way, and no cancel that could land on the next client.
  return context_.pool != nullptr && !poolKey_.empty() && state_ == State::kClosing && clientEnded_ && !ending_ &&
         relay_ && upstream_ && upstreamLink_ && !upstreamGone_ && !upstreamBusy() &&
         relay_->transactionStatus() == protocol::kTxIdle && !relay_->upstreamSentFatal() && !relay_->holdingQuery() &&
         !cancelSent_ && *cancelsInFlight_ == 0 && !shutdownSeen_ && !forcedSeen_ && !draining_ &&
         upstreamIn_.empty() && upstreamOutSent_ == upstreamOut_.size() && !upstreamLink_->hasPendingInput();
}

void Session::finish() noexcept {
  if (finished_) return;
  finished_ = true;
  leaveStartup();
  if (admitted_) context_.registry.release();
  admitted_ = false;
  if (opened_) {
    const std::chrono::duration<double> lifetime = Clock::now() - started_;
    const Relay::Totals totals = relay_ ? relay_->totals() : Relay::Totals{};
    const std::string* user = startup_.parameter("user");
    try {
      // The database is the route's name (the client's database, its user's name when it sent none).
      context_.observer.sessionClosed({id_, clientAddress_, user != nullptr ? *user : std::string_view(), routeName_,
                                       clientApplicationName_,
                                       lifetime.count(), totals.queries, totals.rows, totals.bytes, closeReason_});
    } catch (...) {
    }
  }
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

// ---- the relay's shell: one step at a time ----------------------------------------------------------

bool Session::upstreamBusy() const noexcept { return relay_ && relay_->busy(); }

bool Session::acceptingClient() const noexcept {
  // A cancel the proxy sent is not delivered yet: the next statement must not be the one it hits.
  return relay_ && relay_->acceptingClient() && *cancelsInFlight_ == 0 &&
         upstreamOut_.size() - upstreamOutSent_ < kMaxQueuedUpstreamBytes;
}

void Session::onClientCancel() {
  if (relay_->holdingQuery()) {
    relay_->onClientCancel();  // the client cancelled a query the proxy holds (a fault's delay)
    return;
  }
  if (!upstreamBusy()) return;
  observability::logEvent(observability::LogLevel::kInfo, "cancel_forwarded", {{"session", id_}});
  sendCancel();
}

std::optional<Interest> Session::step(const Readiness& ready) {
  // Built only when thrown: a step runs for every round trip.
  const auto shuttingDown = [] {
    return ProxyError(Severity::kFatal, sqlstate::kAdminShutdown,
                      "terminating connection because pgwire-proxy is shutting down");
  };
  shutdownSeen_ = shutdownSeen_ || ready.shutdown;
  forcedSeen_ = forcedSeen_ || ready.forced;
  if (canceller_ && canceller_->takeRequest()) onClientCancel();
  const auto now = Clock::now();
  if (const auto deadline = relay_->deadline(); deadline && now >= *deadline) {
    // A client that does not read must not hold the session past the query's deadline.
    if (clientOutPending() && upstreamBusy()) throw SessionEnded{"the client stopped reading; the query timeout expired"};
    try {
      relay_->onTimer(now);
    } catch (const UpstreamFailure& failure) {
      upstreamLost(failure.why);
    }
  }
  if (forcedSeen_) {
    if (clientOutPending()) throw SessionEnded{"immediate shutdown while the client was not reading"};
    throw shuttingDown();  // a running query is cancelled on the way out
  }
  if (shutdownSeen_) {
    if (!upstreamBusy()) throw shuttingDown();  // idle: end now; a running query may finish first
    draining_ = true;
  }

  bool clientReadable = ready.client != 0;
  bool upstreamReadable = ready.upstream != 0;
  int reads = 0;
  for (;;) {
    if (state_ == State::kClosing) return std::nullopt;
    if (clientOutPending()) writeClientOut();
    if (!upstreamBusy() && draining_) throw shuttingDown();  // the running query has finished
    // The client's next message waits until its previous answer is out (and, in a query, in the kernel).
    if (acceptingClient() && !clientOutPending()) {
      if (const std::size_t run = relay_->admitCopyInRun(clientIn_.readable(), context_.config.maxMessageSize)) {
        clientIn_.consume(run);
        continue;
      }
      if (const auto frame = protocol::decodeFrame(clientIn_.readable(), context_.config.maxMessageSize)) {
        if (frame->type() == fe::kTerminate) {
          closeReason_ = "client terminated";
          clientLeft();
          continue;
        }
        // A frame left unconsumed waits for the state it needs (a Query behind an unfinished batch).
        if (relay_->onClientFrame(*frame)) clientIn_.consume(frame->bytes.size());
        continue;
      }
      if (reads < kMaxReadsPerStep && (clientReadable || client_->hasPendingInput()) && tryReadClient(clientReadable)) {
        ++reads;
        continue;
      }
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
    if (reads < kMaxReadsPerStep && !clientOutPending() && !relay_->holdingUpstream() &&
        (upstreamReadable || upstreamLink_->hasPendingInput()) && tryPumpUpstream(upstreamReadable)) {
      ++reads;
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
  if (!clientOutPending() && !relay_->holdingUpstream()) interest.upstream = upstreamLink_->readEvents();
  if (upstreamOutSent_ < upstreamOut_.size()) interest.upstream |= upstreamLink_->writeEvents();
  interest.deadline = relay_->deadline();
  // Work left after this wake-up's share (bytes buffered in TLS need no readiness): step again at once.
  if (reads >= kMaxReadsPerStep) interest.deadline = Clock::now();
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
  try {
    upstreamIn_.consume(relay_->onUpstreamBytes(upstreamIn_.readable()));
  } catch (const UpstreamFailure& failure) {
    upstreamLost(failure.why);
  }
  return true;
}

void Session::toClient(std::span<const char> data) { writeClient(data); }

void Session::toUpstream(std::span<const char> bytes) {
  if (upstreamOutSent_ == upstreamOut_.size()) {
    upstreamOut_.clear();
    upstreamOutSent_ = 0;
  }
  upstreamOut_.append(bytes.data(), bytes.size());
}

void Session::setCancellable(bool cancellable) {
  if (canceller_) canceller_->setInQuery(cancellable);
}

void Session::upstreamParameter(std::string_view name, std::string_view value) {
  // Only a connection that may be shared keeps what it reported; the reset's own notes come after.
  if (!poolKey_.empty() && upstream_) upstream_->noteParameter(name, value);
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

void Session::clientLeft() noexcept {
  if (upstreamBusy()) sendCancel();  // an unfinished batch must not run on
  clientEnded_ = !upstreamBusy();
  state_ = State::kClosing;
}

int Session::upstreamFd() const noexcept { return upstreamLink_ ? upstreamLink_->fd() : -1; }

void Session::sendCancel() noexcept {
  if (!upstream_) return;
  cancelSent_ = true;
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
  upstreamGone_ = true;  // nothing left to cancel
  state_ = State::kClosing;
  // The client already has the upstream's own FATAL error (admin shutdown, idle timeout ...).
  if (relay_ && relay_->upstreamSentFatal()) throw SessionEnded{"upstream ended the session"};
  throw ProxyError(Severity::kFatal, sqlstate::kConnectionFailure, "lost the connection to the upstream server",
                   why);
}

}  // namespace pgwire_proxy::session
