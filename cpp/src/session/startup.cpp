// A session's startup on the event loop: SSL negotiation and the TLS handshake, the startup packet,
// cancel requests, admission and the upstream connect, each a state with a deadline.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <utility>

#include "observability/log.h"
#include "protocol/constants.h"
#include "protocol/reader.h"
#include "protocol/writer.h"
#include "session/cancel_sender.h"
#include "session/session.h"
#include "session/session_detail.h"
#include "upstream/upstream_connection.h"

namespace pgwire_proxy::session {
using namespace detail;
namespace {

bool isFalse(const std::string& value) {
  return value == "false" || value == "0" || value == "off" || value == "no";
}

// PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH: the largest password or SASL message it reads.
constexpr std::uint32_t kMaxAuthMessage = 65535;

std::string_view failureName(auth::Failure failure) {
  switch (failure) {
    case auth::Failure::kWrongPassword: return "wrong_password";
    case auth::Failure::kUnknownUser: return "unknown_user";
    case auth::Failure::kChannelBinding: return "channel_binding";
    case auth::Failure::kProtocol:
    case auth::Failure::kNone: break;
  }
  return "protocol_violation";
}

ProxyError refusedAtShutdown() {
  return ProxyError(Severity::kFatal, sqlstate::kAdminShutdown,
                    "the connection was refused because pgwire-proxy is shutting down");
}

}  // namespace

Interest Session::clientInterest(short events, Clock::time_point deadline) const {
  Interest interest;
  interest.clientFd = clientFd_;
  interest.client = events;
  interest.deadline = deadline;
  return interest;
}

Interest Session::connectInterest(int upstreamFd, short upstreamEvents) const {
  // A client that leaves ends the connect. Its messages wait in the kernel until the session is open;
  // the registration keeps POLLIN (the relay's, so it need not change at the open) until a client
  // that sends before it is told it may (clientSpokeEarly_) would wake every wait.
  short client = POLLRDHUP;
  if (!clientSpokeEarly_) client |= client_->readEvents();
  Interest interest = clientInterest(clientHalfClosed_ ? 0 : client, connectDeadline_);
  interest.upstreamFd = upstreamFd;
  interest.upstream = upstreamEvents;
  // A fresh number each time the socket may have changed: the loop registers it anew.
  interest.upstreamEpoch = connectEpoch_;
  return interest;
}

void Session::leaveStartup() noexcept {
  if (!inStartupCount_) return;
  inStartupCount_ = false;
  context_.registry.leaveStartup();
}

std::optional<Interest> Session::startupStep(const Readiness& ready) {
  if (authPhase_ != AuthPhase::kNone) return authStep(ready);
  if (overStartupLimit_) {
    throw ProxyError(Severity::kFatal, sqlstate::kTooManyConnections, "too many connections in startup",
                     "pgwire-proxy accepts at most " + std::to_string(context_.config.maxStartupConnections) +
                         " connections that have not completed startup at once (--max-startup-connections).");
  }
  if (ready.shutdown) throw refusedAtShutdown();
  for (;;) {
    if (clientOutPending()) {
      writeClientOut();
      if (clientOutPending()) return clientInterest(client_->writeEvents(), startupDeadline_);
    }
    const auto body = protocol::decodeStartupPacket(clientIn_.readable());
    if (!body) {
      const auto count = client_->read(clientIn_.prepareWrite(kClientReadChunk));
      if (count && *count == 0) {
        throw SessionEnded{clientIn_.empty() ? "client left before startup" : "incomplete startup packet"};
      }
      if (count) {
        clientIn_.commitWrite(*count);
        continue;
      }
      if (ready.timedOut && Clock::now() >= startupDeadline_) {
        throw ProtocolError("timeout expired while waiting for the startup packet (startup-timeout " +
                            config::formatDuration(context_.config.startupTimeout) + ")");
      }
      // POLLRDHUP from the start: what the connect and the session watch too, so the registration
      // stays as it is from here to the relay (no EPOLL_CTL_MOD at each change of state).
      return clientInterest(client_->readEvents() | POLLRDHUP, startupDeadline_);
    }
    const std::size_t packetSize = protocol::kUntypedHeaderSize + body->size();
    protocol::StartupPacket packet = protocol::parseStartupPacket(*body);
    clientIn_.consume(packetSize);
    switch (packet.kind) {
      case protocol::StartupKind::kSslRequest:
      case protocol::StartupKind::kGssEncRequest:
        // Bytes after the request would be read as if encrypted: refuse them (PgBouncer does too).
        if (!clientIn_.empty()) throw ProtocolError("received unencrypted data after SSL request");
        if (client_->encrypted()) throw ProtocolError("SSLRequest received on an encrypted connection");
        if (packet.kind == protocol::StartupKind::kSslRequest && context_.tls != nullptr) {
          writeClient(std::string_view("S"));
          state_ = State::kTlsHandshake;
          return tlsStep(Readiness{});
        }
        writeClient(std::string_view("N"));
        // Read on at once: the startup packet is often here already, and a session that finishes its
        // startup in the step it was accepted in never registers its socket for reading (waiting for
        // readiness instead cost more syscalls per connection than the failed reads it saved).
        continue;
      case protocol::StartupKind::kCancelRequest:
        closeReason_ = "cancel request";
        handleCancelRequest(packet);
        throw SessionEnded{"cancel request"};
      case protocol::StartupKind::kStartup:
        if (context_.config.tlsRequired && !client_->encrypted()) {
          throw ProxyError(Severity::kFatal, sqlstate::kInvalidAuthorization,
                           "pgwire-proxy requires TLS: the connection is not encrypted", {},
                           "Connect with sslmode=require (or verify-ca / verify-full).");
        }
        startup_ = std::move(packet);
        beginSession();
        return authPhase_ == AuthPhase::kNone ? connectStep(Readiness{}) : authStep(Readiness{});
    }
  }
}

std::optional<Interest> Session::tlsStep(const Readiness& ready) {
  if (ready.shutdown) throw refusedAtShutdown();
  if (clientOutPending()) {  // the 'S' goes out in plaintext first
    writeClientOut();
    if (clientOutPending()) return clientInterest(client_->writeEvents(), startupDeadline_);
  }
  if (!client_->encrypted()) {
    auto tls = std::make_unique<TlsChannel>(context_.tls->current()->newConnection(), clientFd_, true);
    SSL_set_fd(tls->ssl(), clientFd_);
    client_ = std::move(tls);
  }
  auto& tls = static_cast<TlsChannel&>(*client_);
  try {
    if (!tls.acceptStep()) {
      if (ready.timedOut && Clock::now() >= startupDeadline_) throw IoError("timeout expired during the TLS handshake");
      return clientInterest(tls.readEvents(), startupDeadline_);
    }
  } catch (const IoError& error) {
    context_.observer.tlsHandshake(id_, false);
    observability::logEvent(observability::LogLevel::kInfo, "tls_failed",
                            {{"session", id_}, {"client", clientAddress_}, {"error", error.what()}});
    throw SessionEnded{error.what()};
  }
  context_.observer.tlsHandshake(id_, true);
  observability::logEvent(observability::LogLevel::kDebug, "tls_established",
                          {{"session", id_}, {"protocol", tls.description()}});
  state_ = State::kAwaitingStartup;
  return startupStep(Readiness{});
}

void Session::handleCancelRequest(const protocol::StartupPacket& packet) {
  const int owner = context_.registry.instanceOf(packet.cancelProcessId);
  if (owner < 0 || owner == context_.registry.instanceId()) {
    // A match wakes the owning session on its own loop thread, which sends the CancelRequest upstream.
    context_.observer.cancelRequested(context_.registry.cancel({packet.cancelProcessId, packet.cancelSecretKey}));
    return;
  }
  // Another instance issued the key. A forwarded request is never forwarded again (the hop limit: a
  // peer map pointing at the wrong instance cannot make requests circle), an unknown instance's dropped.
  const auto peer = packet.forwardedCancel || context_.peers == nullptr ? std::nullopt : context_.peers->find(owner);
  if (!peer) {
    observability::logEvent(observability::LogLevel::kInfo, "cancel_dropped",
                            {{"session", id_}, {"instance", owner}, {"forwarded", packet.forwardedCancel}});
    context_.observer.cancelRequested(observability::CancelResult::kUnmatched);
    return;
  }
  if (peer->addressLength == 0) {
    observability::logEvent(observability::LogLevel::kWarning, "cancel_forward_failed",
                            {{"session", id_}, {"instance", owner}, {"peer", peer->name},
                             {"error", "the peer's address did not resolve"}});
    context_.observer.cancelRequested(observability::CancelResult::kUnmatched);
    return;
  }
  CancelDestination destination;
  destination.address = peer->address;
  destination.addressLength = peer->addressLength;
  destination.processId = packet.cancelProcessId;
  destination.secretKey = packet.cancelSecretKey;
  destination.forwarded = true;
  destination.label = peer->name;
  context_.observer.cancelRequested(observability::CancelResult::kPeer);
  observability::logEvent(observability::LogLevel::kInfo, "cancel_forwarded_to_peer",
                          {{"session", id_}, {"instance", owner}, {"peer", peer->name}});
  loop().spawn(std::make_unique<CancelSender>(std::move(destination), kPeerCancelTimeout, id_));
}

void Session::beginSession() {
  const std::string* user = startup_.parameter("user");
  if (user == nullptr || user->empty()) {
    throw ProxyError(Severity::kFatal, sqlstate::kInvalidAuthorization,
                     "no PostgreSQL user name specified in startup packet");
  }
  if (const std::string* replication = startup_.parameter("replication");
      replication != nullptr && !isFalse(*replication)) {
    throw ProxyError(Severity::kFatal, sqlstate::kFeatureNotSupported,
                     "replication connections are not supported by pgwire-proxy");
  }
  if (const std::string* app = startup_.parameter("application_name")) clientApplicationName_ = *app;
  // PostgreSQL's default: a client that names no database asks for the one named after its user.
  const std::string* database = startup_.parameter("database");
  routeName_ = database != nullptr && !database->empty() ? *database : *user;
  beginAuthentication();
}

bool Session::peerIsLoopback() const {
  sockaddr_storage peer{};
  socklen_t length = sizeof peer;
  if (::getpeername(clientFd_, reinterpret_cast<sockaddr*>(&peer), &length) != 0) return false;
  if (peer.ss_family == AF_UNIX) return true;
  if (peer.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(peer);
    return (ntohl(in.sin_addr.s_addr) >> 24) == 127;
  }
  if (peer.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(&in6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&in6) && in6.s6_addr[12] == 127;
  }
  return false;
}

void Session::authFailed(std::string_view reason) {
  const std::string* user = startup_.parameter("user");
  context_.observer.authenticationFailed(id_, clientAddress_, user != nullptr ? std::string_view(*user) : std::string_view(),
                                         config::authModeName(context_.config.authMode), reason);
}

void Session::beginAuthentication() {
  const std::string& user = *startup_.parameter("user");
  std::string out;
  protocol::MessageWriter writer(out);
  switch (context_.config.authMode) {
    case config::AuthMode::kTrust:
      admit();
      connectUpstream();
      return;
    case config::AuthMode::kPassthrough:
      // The password arrives in clear text: only where nobody can read it on the way.
      if (!client_->encrypted() && !peerIsLoopback()) {
        authFailed("insecure_transport");
        throw ProxyError(Severity::kFatal, sqlstate::kInvalidAuthorization,
                         "pgwire-proxy asks for passwords only over TLS or from a loopback client",
                         "With --auth=passthrough the password is sent in clear text; this connection from " +
                             clientAddress_ + " is not encrypted.",
                         context_.tls != nullptr ? "Connect with sslmode=require."
                                                 : "Connect from the proxy's own host, or run pgwire-proxy with --enable-tls.");
      }
      protocol::writeAuthenticationRequest(writer, 3);  // AuthenticationCleartextPassword
      authPhase_ = AuthPhase::kPassword;
      break;
    case config::AuthMode::kScramSha256: {
      std::string binding;  // tls-server-end-point: what SCRAM-SHA-256-PLUS binds the exchange to
      if (client_->encrypted()) binding = auth::tlsServerEndPoint(static_cast<TlsChannel&>(*client_).ssl());
      const auto credentials = context_.credentials->load();
      scram_ = std::make_unique<auth::ScramServer>(user, credentials->find(user), binding,
                                                   context_.credentials->mockKey());
      protocol::writeAuthenticationSasl(writer, auth::ScramServer::mechanisms(!binding.empty()));
      authPhase_ = AuthPhase::kSaslInitial;
      break;
    }
  }
  writeClient(out);
}

std::optional<Interest> Session::authStep(const Readiness& ready) {
  if (ready.shutdown) throw refusedAtShutdown();
  if (ready.timedOut && Clock::now() >= startupDeadline_) {
    authFailed("timeout");
    throw ProtocolError("timeout expired during authentication (startup-timeout " +
                        config::formatDuration(context_.config.startupTimeout) + ")");
  }
  for (;;) {
    if (clientOutPending()) {
      writeClientOut();
      if (clientOutPending()) return clientInterest(client_->writeEvents(), startupDeadline_);
    }
    std::optional<protocol::Frame> frame;
    try {
      frame = protocol::decodeFrame(clientIn_.readable(), kMaxAuthMessage);
    } catch (const ProtocolError&) {
      authFailed("protocol_violation");
      throw;
    }
    if (frame) {
      const bool done = handleAuthMessage(*frame);
      clientIn_.consume(frame->bytes.size());
      if (done) return connectStep(Readiness{});
      continue;
    }
    const auto count = client_->read(clientIn_.prepareWrite(kClientReadChunk));
    if (count && *count == 0) {
      // libpq without a password does this (and psql, before it prompts for one).
      authFailed("abandoned");
      throw SessionEnded{"client left during authentication"};
    }
    if (count) {
      clientIn_.commitWrite(*count);
      continue;
    }
    return clientInterest(client_->readEvents() | POLLRDHUP, startupDeadline_);
  }
}

bool Session::handleAuthMessage(const protocol::Frame& frame) {
  if (frame.type() != protocol::frontend::kPassword) {
    authFailed("protocol_violation");
    throw ProxyError(Severity::kFatal, sqlstate::kProtocolViolation,
                     std::string(authPhase_ == AuthPhase::kPassword ? "expected password response"
                                                                    : "expected SASL response") +
                         ", got message type " + std::to_string(static_cast<int>(frame.type())));
  }
  const std::span<const char> body = frame.body();
  if (authPhase_ == AuthPhase::kPassword) {
    // PostgreSQL's recv_password_packet checks, in its words.
    const std::string_view text(body.data(), body.size());
    if (text.empty() || text.find('\0') != text.size() - 1) {
      authFailed("protocol_violation");
      throw ProxyError(Severity::kFatal, sqlstate::kProtocolViolation, "invalid password packet size");
    }
    if (text.size() == 1) {
      authFailed("wrong_password");
      throw ProxyError(Severity::kFatal, sqlstate::kInvalidPassword, "empty password returned by client");
    }
    std::string password(text.substr(0, text.size() - 1));
    // The buffered copy goes now (the bytes are the session's own buffer, viewed read-only here).
    OPENSSL_cleanse(const_cast<char*>(frame.bytes.data()), frame.bytes.size());
    authPhase_ = AuthPhase::kNone;
    admit();
    connectUpstream(std::move(password));
    return true;
  }

  auth::ScramServer::Step result;
  if (authPhase_ == AuthPhase::kSaslInitial) {
    std::string mechanism;
    std::optional<std::string_view> data;
    try {
      protocol::MessageReader reader(body);
      mechanism.assign(reader.readCString());
      const std::int32_t length = reader.readInt32();
      if (length < -1) throw ProtocolError("insufficient data left in message");
      if (length >= 0) {
        const auto bytes = reader.readBytes(static_cast<std::size_t>(length));
        data = std::string_view(bytes.data(), bytes.size());
      }
      reader.expectEnd();
    } catch (const ProtocolError&) {
      authFailed("protocol_violation");
      throw;
    }
    result = scram_->initialResponse(mechanism, data);
  } else {
    result = scram_->response(std::string_view(body.data(), body.size()));
  }
  if (result.kind == auth::ScramServer::Step::Kind::kFailure) {
    authFailed(failureName(result.reason));
    throw *result.error;
  }
  std::string out;
  protocol::MessageWriter writer(out);
  if (result.kind == auth::ScramServer::Step::Kind::kContinue) {
    protocol::writeAuthenticationRequest(writer, 11, result.data);  // AuthenticationSASLContinue
    writeClient(out);
    authPhase_ = AuthPhase::kSaslResponse;
    return false;
  }
  protocol::writeAuthenticationRequest(writer, 12, result.data);  // AuthenticationSASLFinal; Ok comes at open
  writeClient(out);
  authPhase_ = AuthPhase::kNone;
  scram_.reset();
  admit();
  connectUpstream();
  return true;
}

void Session::admit() {
  if (!context_.registry.tryAdmit()) {
    throw ProxyError(Severity::kFatal, sqlstate::kTooManyConnections, "too many connections",
                     "pgwire-proxy admits at most " + std::to_string(context_.registry.maxSessions()) +
                         " clients at once (--max-connections).");
  }
  admitted_ = true;
}

void Session::connectUpstream(std::string password) {
  upstream::ConnectRequest request;
  if (!password.empty()) {
    request.asClient = true;
    request.password = std::move(password);
  }
  // Neither copy outlives the connect's start (libpq's own is wiped when the connect ends).
  struct WipeOnExit {
    std::string& secret;
    ~WipeOnExit() { upstream::wipe(secret); }
  } wipeOnExit{request.password};
  if (context_.routes != nullptr) {
    const auto route = context_.routes->load()->find(routeName_);
    // PostgreSQL's own words for a database it does not have.
    if (!route) {
      throw ProxyError(Severity::kFatal, sqlstate::kInvalidCatalogName,
                       "database \"" + routeName_ + "\" does not exist");
    }
    request.dsn = route->dsn;
  } else {
    request.dsn = context_.config.upstreamDsn;
  }
  request.user = *startup_.parameter("user");
  request.database = routeName_;
  for (const auto& [name, value] : startup_.parameters) {
    if (!name.starts_with("_pq_.") && name != "user" && name != "database" && name != "application_name" &&
        name != "replication") {
      request.clientParameters.emplace_back(name, value);
    }
  }
  request.auditApplicationName = upstream::auditApplicationName(clientApplicationName_, clientAddress_);
  connectStart_ = Clock::now();
  connectDeadline_ = connectStart_ + context_.config.connectTimeout;
  request.deadline = connectDeadline_;
  request.tlsDeclines = context_.tlsDeclines;
  if (context_.pool != nullptr) poolKey_ = upstream::poolKey(request);  // empty for passthrough
  if (!poolKey_.empty()) {
    handover_ = std::make_shared<upstream::UpstreamPool::Handover>([&loop = loop(), id = taskId()] { loop.wake(id); });
    auto taken = context_.pool->take(poolKey_, handover_);
    if (taken.connection) {
      handover_.reset();
      adopt(std::move(taken.connection), std::move(request));
      return;
    }
    if (taken.waiting) {  // adoptStep waits for the reset under way
      fallback_ = std::move(request);
      state_ = State::kAdopting;
      return;
    }
    handover_.reset();
  }
  startConnect(request);
}

void Session::adopt(std::unique_ptr<upstream::UpstreamConnection> connection, upstream::ConnectRequest request) {
  // A reset connection of an earlier client. Its application_name is its first client's audit name
  // again; another client's is set before the session opens (one round trip, none for a client from
  // the same host with the same application name, as a test suite's connections are). On a hot
  // standby the statement is sent whatever the name: a backend promoted while parked says so (an
  // in_hot_standby of off) only in its next reply, and the client must be told what a fresh
  // connection would be told (libpq's target_session_attrs reads it).
  upstream_ = std::move(connection);
  upstreamLink_ = upstreamChannel(*upstream_);
  ++connectEpoch_;
  if (upstream_->reported().applicationName() != request.auditApplicationName || upstream_->reported().inHotStandby()) {
    adoption_ = std::make_unique<ProxyStatement>("SET application_name = " +
                                                 upstream::quoteLiteral(request.auditApplicationName));
  }
  fallback_ = std::move(request);
  state_ = State::kAdopting;
}

void Session::startConnect(const upstream::ConnectRequest& request) {
  connectingUpstream_ = true;
  state_ = State::kConnecting;
  try {
    upstream_ = std::make_unique<upstream::UpstreamConnection>(context_.config, request);
  } catch (const ProxyError&) {
    context_.observer.upstreamConnected(id_, std::chrono::duration<double>(Clock::now() - connectStart_).count(), false);
    throw;
  }
  connectWait_ = upstream_->firstWait();
  ++connectEpoch_;
  // A local server: the first step runs now, not after registering for POLLOUT, an epoll_wait that
  // returns at once and a change to POLLIN (a probe more, in vain, for a server further away).
  connectWaitOver_ = upstream_->firstWaitOver();
}

std::optional<Interest> Session::adoptStep(const Readiness& ready) {
  if (ready.shutdown) throw refusedAtShutdown();
  if ((ready.client & (POLLRDHUP | POLLHUP | POLLERR)) != 0) throw SessionEnded{"client left during the upstream connect"};
  if (handover_) {
    auto given = context_.pool->collect(handover_);
    if (!given && !(ready.timedOut && Clock::now() >= connectDeadline_)) {
      return connectInterest(-1, 0);  // woken by the pool
    }
    if (!given) context_.pool->abandon(handover_);
    handover_.reset();
    if (!given || !*given) {  // the reset failed (or took too long): a connection of its own
      startConnect(*fallback_);
      fallback_.reset();
      return connectStep(Readiness{});
    }
    adopt(std::move(*given), std::move(*fallback_));
  }
  short events = 0;
  const auto outcome = adoption_ ? adoption_->step(*upstreamLink_, *upstream_, events) : ProxyStatement::Outcome::kDone;
  if (outcome == ProxyStatement::Outcome::kDone) {
    adoption_.reset();
    fallback_.reset();
    context_.observer.upstreamReused(id_);
    openSession();
    return step(Readiness{});
  }
  if (outcome == ProxyStatement::Outcome::kWaiting && !(ready.timedOut && Clock::now() >= connectDeadline_)) {
    return connectInterest(upstreamLink_->fd(), events);
  }
  // The parked connection is no good (the server ended it while it idled, say): a fresh one instead.
  observability::logEvent(observability::LogLevel::kInfo, "upstream_reuse_failed",
                          {{"session", id_}, {"error", outcome == ProxyStatement::Outcome::kFailed ? adoption_->why()
                                                                                                     : std::string("timeout")}});
  adoption_.reset();
  upstreamLink_.reset();
  upstream_->abandon();
  upstream_.reset();
  startConnect(*fallback_);
  fallback_.reset();
  return connectStep(Readiness{});
}

std::optional<Interest> Session::connectStep(const Readiness& ready) {
  if (state_ == State::kAdopting) return adoptStep(ready);
  if (ready.shutdown) throw refusedAtShutdown();
  try {
    const short upstreamReady = std::exchange(connectWaitOver_, false) ? connectWait_.events : ready.upstream;
    if ((upstreamReady & (connectWait_.events | POLLERR | POLLHUP)) != 0) {
      const auto next = upstream_->continueConnect();
      if (!next) {
        openSession();
        return step(Readiness{});
      }
      connectWait_ = *next;
      ++connectEpoch_;  // libpq may have closed the socket and opened another, maybe with the same number
    } else if (ready.timedOut && Clock::now() >= connectDeadline_) {
      throw upstream::UpstreamConnection::timeoutError(context_.config);
    }
  } catch (const ProxyError& error) {
    context_.observer.upstreamConnected(id_, std::chrono::duration<double>(Clock::now() - connectStart_).count(), false);
    // Passthrough: the upstream's verdict on the client's password is the authentication's.
    if (context_.config.authMode == config::AuthMode::kPassthrough &&
        (error.sqlstate() == sqlstate::kInvalidPassword || error.sqlstate() == sqlstate::kInvalidAuthorization)) {
      authFailed("upstream_rejected");
    }
    throw;
  }
  if ((ready.client & (POLLRDHUP | POLLHUP | POLLERR)) != 0) throw SessionEnded{"client left during the upstream connect"};
  return connectInterest(connectWait_.fd, connectWait_.events);
}

void Session::openSession() {
  if (connectingUpstream_) {
    connectingUpstream_ = false;
    context_.observer.upstreamConnected(id_, std::chrono::duration<double>(Clock::now() - connectStart_).count(), true);
  }
  if (!upstreamLink_) upstreamLink_ = upstreamChannel(*upstream_);  // an adopted connection has its link
  const std::string* user = startup_.parameter("user");
  relay_ = std::make_unique<Relay>(
      RelayContext{id_, context_.observer, context_.guardrails, context_.faults, context_.config.extendedProtocolRelay,
                   upstream_->statementTimeout(), user != nullptr ? *user : std::string(), routeName_,
                   clientApplicationName_, context_.config.fullProtocol, context_.config.maxCopyInBytes},
      static_cast<RelayHost&>(*this));
  canceller_ = std::make_shared<QueryCanceller>(loop(), taskId());
  cancelKey_ = context_.registry.add(canceller_);

  std::string out;
  out.reserve(512);  // AuthenticationOk, ~15 ParameterStatus, BackendKeyData, ReadyForQuery
  protocol::MessageWriter writer(out);
  // Protocol 3.x with x > 0, or _pq_. options: say what is supported, as PostgreSQL does.
  std::vector<std::string> unrecognizedOptions;
  for (const auto& [name, value] : startup_.parameters) {
    if (name.starts_with("_pq_.")) unrecognizedOptions.push_back(name);
  }
  const auto minor = static_cast<std::uint32_t>(startup_.protocolVersion) & 0xffffU;
  if (minor > 0 || !unrecognizedOptions.empty()) protocol::writeNegotiateProtocolVersion(writer, 0, unrecognizedOptions);
  protocol::writeAuthenticationOk(writer);
  // The client sees its own application_name; the upstream's audit name stays upstream.
  upstream_->reported().appendTo(out, clientApplicationName_);
  protocol::writeBackendKeyData(writer, cancelKey_->processId, cancelKey_->secretKey);
  protocol::writeReadyForQuery(writer, protocol::kTxIdle);
  // Observers know the session before the client can use it.
  opened_ = true;
  leaveStartup();
  context_.observer.sessionOpened(id_, cancelKey_->processId, clientAddress_, clientApplicationName_);
  writeClient(out);
  state_ = State::kRelaying;
}

}  // namespace pgwire_proxy::session
