// One client's life: SSL negotiation, startup, the query loop and the end, as an explicit state machine.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include <atomic>

#include "auth/auth_file.h"
#include "auth/scram.h"
#include "config/server_config.h"
#include "faults/fault_rules.h"
#include "guardrails/guardrail_set.h"
#include "observability/session_observer.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "session/byte_buffer.h"
#include "session/channel.h"
#include "session/loop_task.h"
#include "session/query_canceller.h"
#include "session/relay.h"
#include "session/tls_context.h"
#include "session/upstream_reuse.h"
#include "session/registry.h"
#include "session/socket_io.h"

#include "upstream/routes.h"
#include "upstream/upstream_connection.h"
#include "upstream/upstream_pool.h"


namespace pgwire_proxy::session {

// Where a session's descriptor comes from and goes back to (the server cuts stuck ones at stop).
class ConnectionTracker {
 public:
  virtual ~ConnectionTracker() = default;
  // Closes the descriptor of a connection that has ended. Under the same lock as the duplication
  // that may reuse its number, so the reuse is ordered for TSan as it is by the kernel.
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
  upstream::UpstreamPool* pool = nullptr;  // --reuse-upstream: reset connections of ended sessions; null: off
  upstream::TlsDeclines* tlsDeclines = nullptr;  // sslmode=prefer's recent answers; null: libpq asks every time
};

// One client's life on the event loop, from its first byte to its last: SSL negotiation and the TLS
// handshake, the startup packet, the upstream connect, the relay and the end, as explicit states.
// Nothing here blocks; a failure ends this session only, logged with its id.
class Session final : public LoopTask, private RelayHost {
 public:
  // Takes ownership of `clientFd` (closed when the session ends).
  Session(SessionContext& context, std::uint64_t id, int clientFd, std::string clientAddress);
  ~Session() override;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  [[nodiscard]] std::optional<Interest> advance(const Readiness& ready) noexcept override;
  // The client's descriptor closes; the upstream's closes too, or goes on to its reset on this loop.
  [[nodiscard]] bool handsOn(int fd) const noexcept override;

 private:
  enum class State {
    kAwaitingStartup,  // SSLRequest / GSSENCRequest / CancelRequest / StartupMessage
    kTlsHandshake,     // 'S' sent: the TLS handshake on the client's socket
    kConnecting,       // the upstream connect and authentication (PQconnectPoll)
    kAdopting,         // --reuse-upstream: a parked connection (given this client's application_name)
    kRelaying,         // the session is open: the Relay decides, this shell moves the bytes
    kClosing,
  };

  // ---- startup (startup.cpp) ----
  [[nodiscard]] std::optional<Interest> startupStep(const Readiness& ready);
  [[nodiscard]] std::optional<Interest> tlsStep(const Readiness& ready);
  [[nodiscard]] std::optional<Interest> connectStep(const Readiness& ready);
  [[nodiscard]] std::optional<Interest> adoptStep(const Readiness& ready);
  // The startup packet is in: checks, admission, and the upstream connect begins.
  void beginSession();
  // Connected: the client gets AuthenticationOk, the parameters, its key and ReadyForQuery.
  void openSession();
  // A CancelRequest: matched here, or forwarded to the instance that issued the key.
  void handleCancelRequest(const protocol::StartupPacket& packet);
  [[nodiscard]] Interest clientInterest(short events, Clock::time_point deadline) const;
  // While the upstream connects (or a parked one is adopted): its socket, the client's hang-up and
  // the connect deadline.
  [[nodiscard]] Interest connectInterest(int upstreamFd, short upstreamEvents) const;
  // Leaves the startup count (once).
  void leaveStartup() noexcept;
  // The metric label for a client turned away before its session opened.
  [[nodiscard]] std::string_view rejectReason(const ProxyError& error) const;

  // ---- the end (session.cpp) ----
  // How the session ended, and its last words: the error reaches the client before the close.
  void fail(std::exception_ptr error) noexcept;
  // The upstream side of the end: a running statement is cancelled, the connection closed.
  void releaseUpstream() noexcept;
  // Everything else: the registry, the observers, the descriptor.
  void finish() noexcept;
  [[nodiscard]] std::optional<Interest> endingStep(const Readiness& ready);
  [[noreturn]] void upstreamLost(const std::string& why);

  // ---- the relay's shell (session.cpp) ----
  [[nodiscard]] std::optional<Interest> step(const Readiness& ready);
  [[nodiscard]] bool upstreamBusy() const noexcept;
  // The client's next message may be read: the relay takes it, the upstream queue has room, and no
  // cancel the proxy sent is still in flight.
  [[nodiscard]] bool acceptingClient() const noexcept;
  [[nodiscard]] int upstreamFd() const noexcept;
  // One read each; `more` says whether another could find bytes. False when nothing was there.
  [[nodiscard]] bool tryReadClient(bool& more);
  [[nodiscard]] bool tryPumpUpstream(bool& more);
  // A client's CancelRequest arrived for the running query (the registry woke this session).
  void onClientCancel();
  void clientLeft() noexcept;
  // What the socket does not take now waits in clientOut_, and nothing more is read from the
  // upstream (or the client) until it is out.
  void writeClient(std::span<const char> data);
  void writeClientOut();
  [[nodiscard]] bool clientOutPending() const noexcept { return clientOutSent_ < clientOut_.size(); }
  void writeQueuedUpstream();
  // A CancelRequest for the upstream's running statement on a socket of its own (never blocking the
  // loop); the next statement waits until it has been delivered.
  void sendCancel() noexcept;

  // RelayHost
  void toClient(std::span<const char> bytes) override;
  void toUpstream(std::span<const char> bytes) override;
  void cancelUpstream() override { sendCancel(); }
  void setCancellable(bool cancellable) override;
  void upstreamParameter(std::string_view name, std::string_view value) override;

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
  bool ending_ = false;  // the last words are going out
  bool finished_ = false;
  Clock::time_point endDeadline_{};
  bool admitted_ = false;
  bool opened_ = false;    // observers were told sessionOpened
  bool draining_ = false;  // shutdown began: end after the running query
  bool shutdownSeen_ = false;
  bool forcedSeen_ = false;
  bool clientHalfClosed_ = false;  // POLLRDHUP seen: the client sends nothing more
  bool connectWaitOver_ = false;  // the upstream connect's first wait needs no waiting: step at once
  bool clientSpokeEarly_ = false;  // readable during the upstream connect: watched for hanging up only
  protocol::StartupPacket startup_;
  std::string clientApplicationName_;

  std::unique_ptr<upstream::UpstreamConnection> upstream_;
  std::unique_ptr<Channel> upstreamLink_;  // the relay's view of upstream_'s socket (TLS when libpq made it so)
  bool upstreamGone_ = false;              // lost: nothing left to cancel
  bool upstreamReleased_ = false;          // the end began: cancelled if busy, key removed
  bool connectingUpstream_ = false;
  upstream::ConnectWait connectWait_;
  std::uint32_t connectEpoch_ = 0;  // bumped whenever the upstream descriptor may have been replaced
  std::shared_ptr<QueryCanceller> canceller_;
  std::optional<CancelKey> cancelKey_;
  std::shared_ptr<int> cancelsInFlight_ = std::make_shared<int>(0);  // CancelRequests not yet delivered
  std::unique_ptr<Relay> relay_;  // from openSession on

  ByteBuffer clientIn_;
  ByteBuffer upstreamIn_;
  std::string clientOut_;
  std::size_t clientOutSent_ = 0;
  std::string upstreamOut_;  // bytes for the upstream, written as it reads (it never reads while writing)
  std::size_t upstreamOutSent_ = 0;

  // ---- routing and client authentication (startup.cpp) ----
  // Counts the client against --max-connections (FATAL 53300 when full).
  void admit();
  // Picks the route for the client's database and starts the upstream connect (state kConnecting).
  // `password` (passthrough): the client's, to connect as the client with; wiped once libpq has it.
  void connectUpstream(std::string password = {});
  // libpq's connect for `request` begins (state kConnecting).
  void startConnect(const upstream::ConnectRequest& request);
  // A parked (or just reset) connection becomes this session's upstream (state kAdopting).
  void adopt(std::unique_ptr<upstream::UpstreamConnection> connection, upstream::ConnectRequest request);
  // --reuse-upstream: waiting for a connection of this key whose reset is under way.
  std::shared_ptr<upstream::UpstreamPool::Handover> handover_;
  // The end of a session whose upstream can serve the next client: reset and parked (--reuse-upstream).
  [[nodiscard]] bool upstreamReusable() const noexcept;
  std::string poolKey_;                 // --reuse-upstream: what the connection was opened for; empty: never shared
  std::optional<upstream::ConnectRequest> fallback_;  // a parked connection failed its adoption: connect anew
  std::unique_ptr<ProxyStatement> adoption_;         // kAdopting: SET application_name (null: it has it)
  bool reusable_ = false;               // decided when the end began
  bool cancelSent_ = false;             // a cancel may still land: the connection is never reused
  bool clientEnded_ = false;            // the client said Terminate or hung up between statements
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
