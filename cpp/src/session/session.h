// One client's life: SSL negotiation, startup, the query loop and the end, as an explicit state machine.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>

#include <atomic>

#include "auth/auth_file.h"
#include "auth/scram.h"
#include "config/server_config.h"
#include "faults/fault_rules.h"
#include "guardrails/guardrail_set.h"
#include "guardrails/result_budget.h"
#include "observability/session_observer.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "session/byte_buffer.h"
#include "session/channel.h"
#include "session/loop_task.h"
#include "session/query_canceller.h"
#include "session/tls_context.h"
#include "session/registry.h"
#include "session/socket_io.h"

#include "upstream/routes.h"
#include "upstream/upstream_connection.h"


namespace pgwire_proxy::session {

// Told when a connection's descriptor is taken and given back (the server cuts stuck ones at stop).
class ConnectionTracker {
 public:
  virtual ~ConnectionTracker() = default;
  virtual void connectionStarted(int fd) = 0;
  // Called before the descriptor is closed.
  virtual void connectionFinished(int fd) = 0;
};

// What every session shares; owned by the server, outlives all sessions.
struct SessionContext {
  const config::ServerConfig& config;
  SessionRegistry& registry;
  observability::SessionObserver& observer;
  // Read once per query (its version), so a reload applies from each session's next query on.
  const guardrails::GuardrailHolder& guardrails;
  const TlsContextHolder* tls = nullptr;  // client-side TLS; null when off
  int wakeFd = -1;   // readable once shutdown begins: idle sessions end, running queries may finish
  int forceFd = -1;  // readable when shutdown turns immediate: running queries are cancelled too
  faults::FaultRegistry* faults = nullptr;  // fault rules to apply to queries; null: none
  const PeerDirectory* peers = nullptr;       // the other instances, for cancel keys they issued
  ConnectionTracker* tracker = nullptr;       // null: nobody to tell

  // ---- routing and client authentication (startup.cpp) ----
  const upstream::RouteHolder* routes = nullptr;  // null: everything goes to config.upstreamDsn
  const auth::CredentialsHolder* credentials = nullptr;  // --auth=scram-sha-256: the auth file in force
};

// One client's life on the event loop, from its first byte to its last: SSL negotiation and the TLS
// handshake, the startup packet, the upstream connect, the relay and the end, as explicit states.
// Nothing here blocks; a failure ends this session only, logged with its id.
class Session final : public LoopTask {
 public:
  // Takes ownership of `clientFd` (closed when the session ends).
  Session(SessionContext& context, std::uint64_t id, int clientFd, std::string clientAddress);
  ~Session() override;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  [[nodiscard]] std::optional<Interest> advance(const Readiness& ready) noexcept override;

 private:
  enum class State {
    kAwaitingStartup,     // SSLRequest / GSSENCRequest / CancelRequest / StartupMessage
    kTlsHandshake,        // 'S' sent: the TLS handshake on the client's socket
    kConnecting,          // the upstream connect and authentication (PQconnectPoll)
    kReady,               // ReadyForQuery sent; reading the client's next message
    kInQuery,             // a Query is upstream; relaying its results
    kDiscardingUntilSync, // an extended-protocol message was refused; skipping to Sync
    kExtended,            // relay mode: extended-protocol messages are upstream; ReadyForQuery ends them
    kClosing,
  };

  // ---- startup (startup.cpp) ----
  [[nodiscard]] std::optional<Interest> startupStep(const Readiness& ready);
  [[nodiscard]] std::optional<Interest> tlsStep(const Readiness& ready);
  [[nodiscard]] std::optional<Interest> connectStep(const Readiness& ready);
  // The startup packet is in: checks, admission, and the upstream connect begins.
  void beginSession();
  // Connected: the client gets AuthenticationOk, the parameters, its key and ReadyForQuery.
  void openSession();
  // A CancelRequest: matched here, or forwarded to the instance that issued the key.
  void handleCancelRequest(const protocol::StartupPacket& packet);
  [[nodiscard]] Interest clientInterest(short events, Clock::time_point deadline) const;
  // Leaves the startup count (once).
  void leaveStartup() noexcept;

  // ---- the end ----
  // How the session ended, and its last words: the error reaches the client before the close.
  void fail(std::exception_ptr error) noexcept;
  // The upstream side of the end: a running statement is cancelled, the connection closed.
  void releaseUpstream() noexcept;
  // Everything else: the registry, the observers, the descriptor.
  void finish() noexcept;
  [[nodiscard]] std::optional<Interest> endingStep(const Readiness& ready);

  [[nodiscard]] std::optional<Interest> step(const Readiness& ready);
  [[nodiscard]] int upstreamFd() const noexcept;
  // One read each; `more` says whether another could find bytes. False when nothing was there.
  [[nodiscard]] bool tryReadClient(bool& more);
  [[nodiscard]] bool tryPumpUpstream(bool& more);
  // A client's CancelRequest arrived for the running query (the registry woke this session).
  void onClientCancel();

  // False: the frame is left buffered until the session can take it.
  [[nodiscard]] bool handleClientFrame(const protocol::Frame& frame);
  void startQuery(const protocol::Frame& frame);
  void rejectExtendedProtocol(char type);

  // Upstream bytes: read what is there, forward what needs no inspection, act on what does.
  // Upstream bytes not yet written to the client: [begin, end) of `data` goes out in one write.
  struct ForwardRange {
    std::span<const char> data;
    std::size_t begin = 0;
    std::size_t end = 0;
  };
  void processUpstreamBytes();
  void admitDataRow(const protocol::FrameHeader& header, ForwardRange& range);
  // Acts on a frame the relay inspects; returns whether its bytes go to the client unchanged.
  [[nodiscard]] bool handleUpstreamFrame(const protocol::Frame& frame, ForwardRange& range);
  // Writes the pending range (unless draining) and starts a new one.
  void flush(ForwardRange& range);
  void beginDraining(ProxyError error, bool cancelUpstream);
  void reportGuardrail(std::string_view limit, const std::string& value);
  void onQueryDeadline();
  void onExtendedDeadline();
  void clientLeft() noexcept;
  // Whether a CancelRequest reaches the upstream now (waits while one for the last query is in flight).
  void setCancellable(bool cancellable);
  void finishQuery();
  // A query's record from its start (the client sent it now).
  void beginRecord(std::string_view sql);
  // Records a query the deny/allow patterns refused; returns the client's 42501.
  [[nodiscard]] ProxyError recordDenied(observability::QueryRecord& record, const guardrails::FilterVerdict& verdict);
  // Sends upstream a statement that always fails (an open transaction ends failed); its answers are
  // not the client's.
  void queueAbortingQuery();
  // Fault injection: the rule that fires for this query, if any (first match wins).
  [[nodiscard]] std::shared_ptr<faults::Rule> firingFault(std::string_view sql, bool extended = false);
  // Relay mode: an error or drop rule firing on an Execute (true: the Execute is not forwarded).
  [[nodiscard]] bool injectExtendedFault(const std::shared_ptr<const std::string>& sql);
  // Carries out the fault's part at query start; returns true when the query is not to go upstream now.
  [[nodiscard]] bool injectFault(const faults::Rule& rule, const protocol::Frame& frame);
  void releaseHold();
  void cancelHold();
  [[noreturn]] void dropWithRecord(const std::string& reason);

  // ---- the extended query protocol, relayed (extended_relay.cpp) ----
  // A client message the upstream has yet to answer, oldest first, or the point at which the proxy
  // failed the batch (type 0): its error reaches the client once everything before it has.
  struct PendingReply {
    explicit PendingReply(char replyTo = 0) : type(replyTo) {}
    char type = 0;                           // Parse, Bind, Describe, Execute, Close, Sync; 0: failure
    std::shared_ptr<const std::string> sql;  // Parse: its text; Bind, Execute: the statement's text
    std::string statement;                   // Parse: the name it defines
    std::shared_ptr<const std::string> previous;  // Parse: what that name meant before (restored on error)
    Clock::time_point sent{};
    std::optional<ProxyError> failure;
    bool ownSync = false;  // Sync: the proxy's, ending a batch the client left open; its ReadyForQuery is not relayed
  };
  // Ends the batch with a Sync of the proxy's own (a Query arrived inside it).
  void endBatchForQuery();
  [[nodiscard]] bool acceptingClient() const noexcept;
  // The guardrails for the next query (reloads apply from each session's next query on).
  [[nodiscard]] const std::shared_ptr<const guardrails::GuardrailSet>& currentGuardrails();
  [[nodiscard]] bool upstreamBusy() const noexcept {
    return state_ == State::kInQuery || state_ == State::kExtended;
  }
  [[nodiscard]] bool relayExtendedFrame(const protocol::Frame& frame);
  void openBatch();
  void closeBatch();
  void pushPending(PendingReply reply);
  void popPending();
  // The proxy failed the batch at the client's current position (a denied Parse ...).
  void failBatchAtClient(const ProxyError& error);
  // The proxy failed the statement the upstream is answering (a limit, COPY, the backstop): the
  // client gets `error` now, the upstream's answers are dropped until ReadyForQuery.
  void failBatchAtFront(const ProxyError& error, bool cancel);
  void processExtendedUpstreamBytes();
  [[nodiscard]] bool handleExtendedReply(const protocol::Frame& frame, ForwardRange& range);
  // A failure queued behind replies that have all gone out now reaches the client.
  void reportQueuedFailure(ForwardRange& range);
  void openExtendedRecord();
  void finishExtendedRecord();
  void queueUpstream(std::string_view bytes);
  void writeQueuedUpstream();

  // The metric label for a client turned away before its session opened.
  [[nodiscard]] std::string_view rejectReason(const ProxyError& error) const;
  // The relay's writes to the client: what the socket does not take now waits in clientOut_, and
  // nothing more is read from the upstream (or the client) until it is out.
  void writeClient(std::span<const char> data);
  void writeClientOut();
  [[nodiscard]] bool clientOutPending() const noexcept { return clientOutSent_ < clientOut_.size(); }
  void sendToClient(const std::string& bytes) { writeClient(bytes); }
  // Sends an error of the proxy's own (observers are told by the caller: a query's errors arrive
  // with its QueryRecord, others through proxyError).
  void sendError(const ProxyError& error, bool withReadyForQuery);
  // Sends a CancelRequest for the upstream's running statement on a socket of its own (never
  // blocking the loop); the next statement waits until it has been delivered. `proxyInitiated`: the
  // proxy's own (a limit, the backstop, the client gone), sent at most once per statement.
  void cancelUpstream(bool proxyInitiated = true) noexcept;
  // The proxy's own errors, one wording for both protocols.
  [[nodiscard]] ProxyError backstopError() const;
  [[nodiscard]] ProxyError breachError(const guardrails::Breach& breach) const;
  [[nodiscard]] static ProxyError copyRefused(bool copyIn);
  // The upstream did not end a statement the proxy cancelled within kCancelGrace: the session ends.
  [[noreturn]] void cancelGraceExpired();
  [[noreturn]] void upstreamLost(const std::string& why);

  SessionContext& context_;
  const std::uint64_t id_;
  const int clientFd_;
  const std::string clientAddress_;
  std::unique_ptr<Channel> client_;  // plaintext until a TLS handshake replaces it

  State state_ = State::kAwaitingStartup;
  std::string closeReason_ = "client disconnected";
  const Clock::time_point started_;
  Clock::time_point startupDeadline_;
  Clock::time_point connectStart_{};
  Clock::time_point connectDeadline_{};
  bool inStartupCount_ = false;  // counted against --max-startup-connections
  bool overStartupLimit_ = false;
  bool ending_ = false;         // the last words are going out
  bool finished_ = false;
  Clock::time_point endDeadline_{};
  std::shared_ptr<int> cancelsInFlight_ = std::make_shared<int>(0);  // CancelRequests not yet delivered
  bool admitted_ = false;
  bool opened_ = false;    // observers were told sessionOpened
  bool draining_ = false;  // shutdown began: end after the running query
  protocol::StartupPacket startup_;
  std::string clientApplicationName_;

  std::unique_ptr<upstream::UpstreamConnection> upstream_;
  std::unique_ptr<Channel> upstreamLink_;  // the relay's view of upstream_'s socket (TLS when libpq made it so)
  std::shared_ptr<QueryCanceller> canceller_;
  std::optional<CancelKey> cancelKey_;
  char transactionStatus_ = 'I';
  bool upstreamSentFatal_ = false;
  bool connectingUpstream_ = false;
  upstream::ConnectWait connectWait_;
  std::uint32_t connectEpoch_ = 0;  // bumped whenever the upstream descriptor may have been replaced
  struct {
    std::uint64_t queries = 0;
    std::uint64_t rows = 0;
    std::uint64_t bytes = 0;
  } totals_;

  ByteBuffer clientIn_;
  ByteBuffer upstreamIn_;
  std::size_t passThroughRemaining_ = 0;  // bytes of a large frame still streaming through

  // The statement_timeout in force upstream: --query-timeout, or the client's own startup value when
  // lower. The backstop follows it.
  config::Milliseconds queryTimeout_{0};

  // The running query.
  Clock::time_point queryStart_{};
  observability::QueryRecord record_;
  guardrails::ResultBudget budget_;
  std::optional<ProxyError> pendingError_;  // set while draining: sent before ReadyForQuery
  bool upstreamCancelled_ = false;
  bool abortingTransaction_ = false;  // a failing statement was sent to mark the upstream transaction failed
  std::optional<Clock::time_point> queryDeadline_;  // the backstop, then the wait for the cancel's effect
  bool backstopFired_ = false;

  // The extended-protocol batch (messages since the last ReadyForQuery, relay mode).
  std::shared_ptr<const guardrails::GuardrailSet> rails_;
  std::uint64_t railsVersion_ = 0;
  std::shared_ptr<const guardrails::GuardrailSet> batchRails_;
  std::deque<PendingReply> pending_;
  std::size_t executesPending_ = 0;
  bool syncSent_ = false;        // the batch's Sync is upstream: the client waits for ReadyForQuery
  bool upstreamSkipping_ = false;  // the upstream reported an error: it ignores messages until Sync
  bool clientSkipping_ = false;  // the proxy failed the batch: the client's messages are dropped until Sync
  bool swallowing_ = false;      // the client has the proxy's error: upstream replies are dropped until ReadyForQuery
  bool swallowedUpstreamError_ = false;
  bool recordOpen_ = false;      // record_ is the Execute at the front of pending_
  std::unordered_map<std::string, std::shared_ptr<const std::string>> statements_;  // name -> text
  std::unordered_map<std::string, std::shared_ptr<const std::string>> portals_;     // name -> statement text
  // Fault injection.
  std::vector<std::shared_ptr<faults::Rule>> faultRules_;
  std::uint64_t faultsVersion_ = 0;
  bool faultsLoaded_ = false;
  std::unordered_map<std::uint64_t, std::uint64_t> faultMatches_;  // per-session match counts by rule
  std::optional<Clock::time_point> holdUntil_;  // delay: the query (heldQuery_) or its results wait until then
  std::string heldQuery_;
  std::optional<std::uint64_t> dropAfterRows_;  // drop after_rows
  bool dropMidMessage_ = false;
  std::string clientOut_;
  std::size_t clientOutSent_ = 0;
  bool clientHalfClosed_ = false;  // POLLRDHUP seen: the client sends nothing more
  bool shutdownSeen_ = false;
  bool forcedSeen_ = false;
  std::string upstreamOut_;      // bytes for the upstream, written as it reads (it never reads while writing)
  std::size_t upstreamOutSent_ = 0;

  // ---- routing and client authentication (startup.cpp) ----
  // Counts the client against --max-connections (FATAL 53300 when full).
  void admit();
  // Picks the route for the client's database and starts the upstream connect (state kConnecting).
  // `password` (passthrough): the client's, to connect as the client with; wiped once libpq has it.
  void connectUpstream(std::string password = {});
  // The route's name: the client's database (its user's name when it sent none). Fault rules, query
  // records and logs carry it where they carry a database.
  std::string routeName_;
  // Client authentication, a sub-state of kAwaitingStartup (startupStep hands over to authStep):
  // the proxy's request is out, the client's answer is awaited, all within --startup-timeout.
  enum class AuthPhase { kNone, kPassword, kSaslInitial, kSaslResponse };
  AuthPhase authPhase_ = AuthPhase::kNone;
  std::unique_ptr<auth::ScramServer> scram_;
  // Sends the --auth request (or, for trust, admits and connects at once).
  void beginAuthentication();
  [[nodiscard]] std::optional<Interest> authStep(const Readiness& ready);
  // One PasswordMessage / SASLInitialResponse / SASLResponse; true when authentication is done.
  [[nodiscard]] bool handleAuthMessage(const protocol::Frame& frame);
  // Counted and logged (observers); the caller throws the client's error.
  void authFailed(std::string_view reason);
  [[nodiscard]] bool peerIsLoopback() const;
};

}  // namespace pgwire_proxy::session
