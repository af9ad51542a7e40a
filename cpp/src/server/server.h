// The listening server: a Poco ServerSocket the event loops accept on, one Session per connection.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "auth/auth_file.h"
#include "config/server_config.h"
#include "faults/fault_rules.h"
#include "guardrails/guardrail_set.h"
#include "observability/metrics.h"
#include "observability/session_observer.h"
#include "server/listener.h"
#include "server/metrics_endpoint.h"
#include "server/readiness_check.h"
#include "session/event_loop.h"
#include "session/registry.h"
#include "session/session.h"
#include "upstream/routes.h"
#include "upstream/tls_declines.h"
#include "upstream/upstream_pool.h"

namespace pgwire_proxy::server {

class Server final : public session::ConnectionTracker, public Acceptor {
 public:
  // `config` is validated here (ConfigError). Logs and metrics observe every session; `extra` (the
  // Python module's stats and capture) too when given.
  explicit Server(config::ServerConfig config, std::shared_ptr<observability::SessionObserver> extra = nullptr);
  ~Server() override;
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and starts accepting; returns once the socket listens. Throws on bind failure.
  void start();
  // Graceful shutdown in steps (stop() does them all):
  // beginShutdown: the listener closes (new connections are refused), idle clients get FATAL 57P01,
  // running queries go on and their sessions end with 57P01 after ReadyForQuery.
  void beginShutdown();
  // forceShutdown: running queries are cancelled upstream, their clients get 57P01.
  void forceShutdown();
  // Waits until no connection is left; false when `timeout` passed first.
  [[nodiscard]] bool waitForConnections(std::chrono::milliseconds timeout);
  // beginShutdown, `grace` for running queries, forceShutdown, then sockets still busy are cut; returns
  // when every session and upstream connection is gone. Idempotent.
  void stop(std::chrono::milliseconds grace = std::chrono::seconds(30));
  [[nodiscard]] bool stopped() const;
  // SIGHUP: applies what can change at runtime from `next` (row/byte limits, deny/allow patterns, log
  // level and format; the TLS certificate and key are re-read) and logs what changed and which changed
  // settings need a restart. Throws ConfigError, changing nothing, when `next` is unusable.
  void reload(const config::ServerConfig& next);

  [[nodiscard]] const config::ServerConfig& config() const noexcept { return config_; }
  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
  [[nodiscard]] const std::string& host() const noexcept { return config_.listenAddress; }
  [[nodiscard]] int activeSessions() const noexcept { return registry_.activeSessions(); }
  [[nodiscard]] const observability::Metrics& metrics() const noexcept { return *metrics_; }
  // The metrics endpoint's port once started (0 when --metrics-address is off).
  [[nodiscard]] std::uint16_t metricsPort() const noexcept { return metricsEndpoint_ ? metricsEndpoint_->port() : 0; }

  // Used by the connection objects: tracks live connections so stop() can wait for them.
  // For /readyz: accepting, not shutting down, and `upstream`'s last ping answered. Never blocks on the network.
  [[nodiscard]] Readiness readiness(const ReadinessCheck& upstream) const;
  // A listener's: accepts one connection, tracks its descriptor and starts its session near `here`.
  [[nodiscard]] AcceptOutcome acceptOne(int listenFd, session::LoopHandle& here) noexcept override;
  void connectionFinished(int fd) override;
  [[nodiscard]] std::uint64_t nextSessionId() noexcept { return ++lastSessionId_; }
  [[nodiscard]] session::EventLoop* eventLoop() noexcept { return eventLoop_.get(); }
  // The fault rules in force (Python's add_fault; the binary's --faults file).
  [[nodiscard]] faults::FaultRegistry& faults() noexcept { return faults_; }
  [[nodiscard]] session::SessionContext& sessionContext() noexcept { return context_; }

 private:
  // The configuration the server started with: immutable, what sessions read. Settings a reload
  // changes live in their own holders (guardrails, routes, credentials, faults, peers, the logger);
  // `applied_` is the last reload's configuration as a whole, the one the next reload compares with.
  const config::ServerConfig config_;
  std::mutex reloadMutex_;
  std::shared_ptr<const config::ServerConfig> applied_;  // under reloadMutex_
  // Set by beginShutdown: from then on the 57P01 each session gets is logged at info, not warning.
  std::atomic<bool> stopRequested_{false};
  std::string faultsText_;
  std::string tlsText_;  // the TLS files as last loaded, for the same report  // the --faults file as last loaded: SIGHUP reports "faults" only when it differs
  std::shared_ptr<observability::Metrics> metrics_;
  std::shared_ptr<observability::ObserverList> observer_;
  session::SessionRegistry registry_;
  guardrails::GuardrailHolder guardrails_;
  faults::FaultRegistry faults_;
  session::PeerDirectory peers_;
  upstream::RouteHolder routes_;
  std::unique_ptr<auth::CredentialsHolder> credentials_;  // --auth=scram-sha-256
  std::unique_ptr<session::TlsContextHolder> tls_;
  upstream::TlsDeclines tlsDeclines_;  // forgotten on reload
  std::unique_ptr<upstream::UpstreamPool> pool_;  // --reuse-upstream; outlives the loop's tasks
  int wakeFd_ = -1;
  int forceFd_ = -1;
  bool shutdownBegun_ = false;
  session::SessionContext context_;
  std::atomic<std::uint64_t> lastSessionId_{0};
  std::uint16_t port_ = 0;

  mutable std::mutex mutex_;
  std::condition_variable connectionsDone_;
  std::set<int> connections_;
  bool stopped_ = false;

  std::unique_ptr<MetricsEndpoint> metricsEndpoint_;
  int listenFd_ = -1;  // the listeners' socket (they own it), for beginShutdown; -1 before start()
  std::atomic<bool> acceptPaused_{false};  // the last accept ran out of descriptors (for the log)
  bool nodelayInherited_ = false;          // the listening socket has TCP_NODELAY (set before the loops start)
  std::unique_ptr<session::EventLoop> eventLoop_;  // every session runs here, from accept to close
};

}  // namespace pgwire_proxy::server
