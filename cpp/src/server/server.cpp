// The listening server: a Poco ServerSocket the loops accept on, one Session per connection.
#include "server/server.h"

#include <Poco/Net/NetException.h>
#include <Poco/Net/ServerSocket.h>
#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <optional>
#include <regex>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <system_error>
#include <thread>

#include "config/file_text.h"
#include "observability/log.h"
#include "protocol/errors.h"
#include "protocol/sqlstate.h"
#include "session/cpu_quota.h"
#include "session/event_loop.h"
#include "session/upstream_reuse.h"
#include "session/session.h"
#include "upstream/upstream_connection.h"

namespace pgwire_proxy::server {
namespace {

// After forceShutdown, how long sessions get to cancel and say goodbye before their sockets are cut.
constexpr auto kForceGrace = std::chrono::seconds(3);
// The listening socket's backlog: connections the kernel completes before a loop accepts them.
constexpr int kListenBacklog = 1024;

// The client's address as logs and the audit application_name show it (no port).
std::string peerHost(const sockaddr_storage& peer) {
  if (peer.ss_family == AF_INET) {  // the dotted quad without inet_ntop's sprintf, once per connection
    const auto* bytes = reinterpret_cast<const unsigned char*>(&reinterpret_cast<const sockaddr_in&>(peer).sin_addr);
    std::string quad;  // at most 15 characters: the string's own buffer, no allocation
    for (int i = 0; i < 4; ++i) {
      if (i > 0) quad += '.';
      char digits[3];
      quad.append(digits, std::to_chars(digits, digits + sizeof digits, bytes[i]).ptr);
    }
    return quad;
  }
  char text[INET6_ADDRSTRLEN] = {};
  if (peer.ss_family != AF_INET6 ||
      ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr, text, sizeof text) == nullptr) {
    return "unknown";
  }
  return text;
}

config::ServerConfig validated(config::ServerConfig config) {
  config.validate();
  return config;
}

// The log observer, with the 57P01 that a requested shutdown (SIGTERM, Proxy.stop()) sends every
// client at info: ending sessions is what was asked for, not something to warn about (a test suite
// whose fixtures stop proxies under open clients would get a warning per test).
class ServerLoggingObserver final : public observability::LoggingObserver {
 public:
  ServerLoggingObserver(bool logQueries, const std::atomic<bool>& stopRequested)
      : LoggingObserver(logQueries), stopRequested_(stopRequested) {}

  void proxyError(std::uint64_t sessionId, const ProxyError& error) override {
    if (!causedByStop(error)) return LoggingObserver::proxyError(sessionId, error);
    observability::logEvent(observability::LogLevel::kInfo, "proxy_error",
                            {{"session", sessionId}, {"sqlstate", error.sqlstate()}, {"message", error.message()}});
  }
  void sessionRejected(std::uint64_t sessionId, std::string_view clientAddress, std::string_view reason,
                       const ProxyError& error) override {
    if (!causedByStop(error)) return LoggingObserver::sessionRejected(sessionId, clientAddress, reason, error);
    observability::logEvent(observability::LogLevel::kInfo, "session_rejected",
                            {{"session", sessionId}, {"client", clientAddress}, {"reason", reason},
                             {"sqlstate", error.sqlstate()}, {"message", error.message()}});
  }

 private:
  [[nodiscard]] bool causedByStop(const ProxyError& error) const {
    return error.sqlstate() == sqlstate::kAdminShutdown && stopRequested_.load(std::memory_order_acquire);
  }
  const std::atomic<bool>& stopRequested_;
};

// The TLS certificate, key and CA files (those reload() re-reads), to report "tls-files" only when
// one of them changed.
std::string tlsFilesText(const config::ServerConfig& config) {
  std::string text;
  for (const std::string* path : {&config.tlsCertFile, &config.tlsKeyFile, &config.tlsCaFile}) {
    text += config::fileText(*path).value_or("(unreadable)");
    text += '\0';
  }
  return text;
}

std::shared_ptr<observability::ObserverList> observers(const config::ServerConfig& config,
                                                       const std::atomic<bool>& stopRequested,
                                                       std::shared_ptr<observability::Metrics> metrics,
                                                       std::shared_ptr<observability::SessionObserver> extra) {
  auto list = std::make_shared<observability::ObserverList>();
  list->add(std::make_shared<ServerLoggingObserver>(config.logQueries, stopRequested));
  list->add(std::move(metrics));
  if (extra) list->add(std::move(extra));
  return list;
}

// The DSN for logs: a password (keyword or URI form) never appears.
std::string maskedDsn(const std::string& dsn) {
  static const std::regex keyword(R"((password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+))", std::regex::icase);
  static const std::regex uri(R"(^(postgres(?:ql)?://[^:/@]*:)[^@]*@)", std::regex::icase);
  static const std::regex query(R"(([?&]password=)[^&]*)", std::regex::icase);
  std::string masked = std::regex_replace(dsn, keyword, "$1********");
  masked = std::regex_replace(masked, uri, "$1********@");
  return std::regex_replace(masked, query, "$1********");
}

// Said once when a route's DSN names the user or database itself: those win over the client's.
void logFixedNames(const std::string& route, const std::string& dsn) {
  const upstream::DsnNames names = upstream::dsnNames(dsn);
  if (names.user.empty() && names.dbname.empty()) return;
  observability::logEvent(
      observability::LogLevel::kInfo, "route_names_fixed",
      {{"route", route},
       {"user", names.user.empty() ? std::string("(the client's)") : names.user},
       {"dbname", names.dbname.empty() ? std::string("(the client's)") : names.dbname},
       {"note", "names the DSN gives are used whatever the client asks for"}});
}

}  // namespace

Server::Server(config::ServerConfig config, std::shared_ptr<observability::SessionObserver> extra)
    : config_(validated(std::move(config))),
      applied_(std::make_shared<const config::ServerConfig>(config_)),
      metrics_(std::make_shared<observability::Metrics>()),
      observer_(observers(config_, stopRequested_, metrics_, std::move(extra))),
      registry_(config_.maxConnections, config_.instanceId),
      guardrails_(std::make_shared<const guardrails::GuardrailSet>(config_)),
      routes_(std::make_shared<const upstream::RouteTable>(config_.databases, config_.upstreamDsn)),
      credentials_(config_.authFile.empty() ? nullptr
                                            : std::make_unique<auth::CredentialsHolder>(
                                                  std::make_shared<const auth::Credentials>(
                                                      auth::Credentials::read(config_.authFile)))),
      tls_(config_.tlsEnabled ? std::make_unique<session::TlsContextHolder>(session::TlsSettings{
                                    config_.tlsCertFile, config_.tlsKeyFile, config_.tlsCaFile})
                              : nullptr),
      pool_(config_.reuseUpstream ? std::make_unique<upstream::UpstreamPool>(
                                        static_cast<std::size_t>(config_.reusePoolSize), config_.reuseIdleTimeout)
                                  : nullptr),
      wakeFd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      forceFd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      context_{config_, registry_, *observer_, guardrails_, tls_.get(), wakeFd_, forceFd_, &faults_, &peers_, this,
               &routes_, credentials_.get(), pool_.get(), &tlsDeclines_} {
  if (wakeFd_ < 0 || forceFd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
}

Server::~Server() {
  stop();
  if (wakeFd_ >= 0) ::close(wakeFd_);
  if (forceFd_ >= 0) ::close(forceFd_);
}

void Server::start() {
  auto listening = std::make_shared<Poco::Net::ServerSocket>();
  try {
    // SO_REUSEADDR for quick restarts, never SO_REUSEPORT: a second proxy must not share the port.
    listening->bind(Poco::Net::SocketAddress(config_.listenAddress, config_.port), true, false);
    listening->listen(kListenBacklog);
    listening->setBlocking(false);  // a loop's accept returns EAGAIN when another took the connection
    // Linux gives an accepted socket the listener's TCP_NODELAY: set once here, not a syscall per
    // connection (acceptOne sets it on each only if this failed).
    const int one = 1;
    nodelayInherited_ = ::setsockopt(listening->impl()->sockfd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0;
  } catch (const Poco::Exception& error) {
    throw std::runtime_error("cannot listen on " + config_.listenAddress + ":" + std::to_string(config_.port) + ": " +
                             error.displayText());
  }
  port_ = listening->address().port();
  auto& logger = observability::Logger::instance();
  observability::LogLevel level{};
  if (observability::parseLogLevel(config_.logLevel, level)) logger.setLevel(level);
  observability::LogFormat format{};
  if (observability::parseLogFormat(config_.logFormat, format)) logger.setFormat(format);
  if (!config_.logFile.empty()) logger.setFile(config_.logFile);
  if (!config_.metricsAddress.empty()) {
    // The /readyz callback owns the upstream check, so its thread lives exactly as long as the endpoint.
    // Without a fallback, the first route stands for the upstream.
    auto upstream = std::make_shared<ReadinessCheck>(config_.upstreamDsn.empty() ? config_.databases.front().second
                                                                                  : config_.upstreamDsn);
    metricsEndpoint_ = std::make_unique<MetricsEndpoint>(
        config_.metricsAddress, [metrics = metrics_] { return metrics->render(); },
        [this, upstream] { return readiness(*upstream); });
  }

  if (tls_) tlsText_ = tlsFilesText(config_);
  if (!config_.faultsFile.empty()) {
    faultsText_ = config::fileText(config_.faultsFile).value_or("");
    faults_.replace(faults::readFaultFile(config_.faultsFile));
  }
  peers_.replace(config_.peers);
  // A loop per CPU the proxy may run on (taskset, a container's cpuset), not per CPU of the machine,
  // and no more than a cgroup's CPU quota pays for (docker --cpus=1 on a larger machine: one loop,
  // not loops that take turns on one CPU's worth of time and are throttled together).
  std::vector<int> cpus = session::allowedCpus();
  const std::optional<double> quota = session::cpuQuota();
  cpus.resize(session::loopsFor(cpus.size(), quota));
  char quotaText[32] = "none";
  if (quota) (void)std::snprintf(quotaText, sizeof quotaText, "%g", *quota);
  eventLoop_ = std::make_unique<session::EventLoop>(static_cast<unsigned>(cpus.size()), wakeFd_, forceFd_,
                                                   config_.pinLoops ? cpus : std::vector<int>{});
  if (pool_) eventLoop_->adopt(std::make_unique<session::PoolSweeper>(*pool_, config_.reuseIdleTimeout));
  {
    std::lock_guard lock(mutex_);  // /readyz reads it from the metrics thread
    listenFd_ = listening->impl()->sockfd();
  }
  eventLoop_->adoptOnEach([this, &listening] { return std::make_unique<Listener>(*this, listening); });
  listening.reset();  // the listeners own it now
  const std::string upstream = maskedDsn(config_.upstreamDsn);
  observability::logEvent(observability::LogLevel::kInfo, "listening",
                          {{"address", config_.listenAddress}, {"port", static_cast<std::int64_t>(port_)},
                           {"upstream", upstream}, {"max_connections", config_.maxConnections},
                           {"tls", config_.tlsEnabled},
                           {"auth", std::string(config::authModeName(config_.authMode))},
                           {"loops", static_cast<std::int64_t>(cpus.size())}, {"pinned", config_.pinLoops},
                           {"cpu_quota", std::string_view(quotaText)},
                           {"metrics_port", static_cast<std::int64_t>(metricsPort())}});
  if (!config_.upstreamDsn.empty()) logFixedNames("(fallback)", config_.upstreamDsn);
  for (const auto& [name, dsn] : config_.databases) logFixedNames(name, dsn);
}

bool Server::stopped() const {
  std::lock_guard lock(mutex_);
  return stopped_;
}

void Server::beginShutdown() {
  {
    std::lock_guard lock(mutex_);
    if (shutdownBegun_ || listenFd_ < 0) return;
    shutdownBegun_ = true;
    // New connections are refused from here on (Linux: the socket goes to CLOSE, accept fails with
    // EINVAL). The listeners end when they see the shutdown below, and the last one closes the socket;
    // until then the number is still the socket's, so shutting it down here cannot hit another.
    (void)::shutdown(listenFd_, SHUT_RDWR);
  }
  stopRequested_.store(true, std::memory_order_release);
  const std::uint64_t one = 1;
  (void)::write(wakeFd_, &one, sizeof one);  // every session's and listener's wait returns
  observability::logEvent(observability::LogLevel::kInfo, "shutdown_begun",
                          {{"sessions", static_cast<std::int64_t>(registry_.activeSessions())}});
}

Readiness Server::readiness(const ReadinessCheck& upstream) const {
  {
    std::lock_guard lock(mutex_);
    if (shutdownBegun_ || listenFd_ < 0) return {false, "shutting down"};
  }
  switch (upstream.state()) {
    case ReadinessCheck::State::kReachable:
      return {true, {}};
    case ReadinessCheck::State::kUnreachable:
      break;
  }
  return {false, "the upstream server is not reachable"};
}

void Server::forceShutdown() {
  const std::uint64_t one = 1;
  (void)::write(forceFd_, &one, sizeof one);
}

bool Server::waitForConnections(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return connectionsDone_.wait_for(lock, timeout, [this] { return connections_.empty(); });
}

void Server::stop(std::chrono::milliseconds grace) {
  {
    std::lock_guard lock(mutex_);
    if (stopped_ || (listenFd_ < 0 && !shutdownBegun_)) return;
    stopped_ = true;
  }
  beginShutdown();
  if (!waitForConnections(grace)) {
    observability::logEvent(observability::LogLevel::kWarning, "shutdown_forced",
                            {{"sessions", static_cast<std::int64_t>(registry_.activeSessions())}});
    forceShutdown();
    if (!waitForConnections(kForceGrace)) {
      // Sessions blocked writing to clients that do not read: cut their sockets.
      std::unique_lock lock(mutex_);
      for (const int fd : connections_) (void)::shutdown(fd, SHUT_RDWR);
      connectionsDone_.wait(lock, [this] { return connections_.empty(); });
    }
  }
  eventLoop_.reset();  // its threads and the listeners end: a stopped server holds no threads or descriptors
  if (pool_) pool_->clear();
  metricsEndpoint_.reset();
  ::close(wakeFd_);
  ::close(forceFd_);
  wakeFd_ = forceFd_ = -1;
  observability::logEvent(observability::LogLevel::kInfo, "stopped");
}

void Server::reload(const config::ServerConfig& next) {
  std::lock_guard reloadLock(reloadMutex_);
  // What the last reload applied (the startup configuration at first): compared with, never changed;
  // a new snapshot replaces it whole at the end.
  const config::ServerConfig& applied = *applied_;
  next.validate();
  auto rails = std::make_shared<const guardrails::GuardrailSet>(next);  // throws before anything changes
  observability::LogLevel level{};
  observability::LogFormat format{};
  if (!observability::parseLogLevel(next.logLevel, level) || !observability::parseLogFormat(next.logFormat, format)) {
    throw config::ConfigError("log-level/log-format: invalid value");
  }
  // The auth file is read before anything changes: a bad line fails the whole reload.
  std::shared_ptr<const auth::Credentials> credentials;
  if (credentials_ && !next.authFile.empty()) {
    credentials = std::make_shared<const auth::Credentials>(auth::Credentials::read(next.authFile));
  }
  if (tls_) tls_->reload();  // re-reads the files; throws (keeping the old ones) when they are bad
  const std::string tlsText = tls_ ? tlsFilesText(config_) : std::string();  // the paths in force
  // Fault rules are replaced when the --faults file (its name or its text) changed, and their counts
  // start over; an unchanged file keeps the rules and their counts. A bad file keeps the old rules.
  std::optional<std::vector<faults::RuleSpec>> faultSpecs;
  std::optional<std::string> faultsText;
  if (!next.faultsFile.empty()) {
    faultsText = config::fileText(next.faultsFile);
    if (!faultsText || next.faultsFile != applied.faultsFile || *faultsText != faultsText_) {
      faultSpecs = faults::readFaultFile(next.faultsFile);
    }
  }
  const bool faultsChanged = faultSpecs.has_value() || (next.faultsFile.empty() && !applied.faultsFile.empty());

  std::string changed;
  std::string restart;
  auto note = [](std::string& list, const char* name) { list += list.empty() ? name : std::string(",") + name; };
  if (next.databases != applied.databases) note(changed, "database");
  if (credentials) note(changed, "auth-file");
  if (next.authMode != applied.authMode) note(restart, "auth");
  if (next.maxRows != applied.maxRows) note(changed, "max-rows");
  if (next.maxBytes != applied.maxBytes) note(changed, "max-bytes");
  if (next.denyPatterns != applied.denyPatterns) note(changed, "deny");
  if (next.allowPatterns != applied.allowPatterns) note(changed, "allow");
  if (next.patternsIgnoreCase != applied.patternsIgnoreCase) note(changed, "patterns-ignore-case");
  if (next.logLevel != applied.logLevel) note(changed, "log-level");
  if (next.logFormat != applied.logFormat) note(changed, "log-format");
  if (tls_ && tlsText != tlsText_) note(changed, "tls-files");
  if (faultsChanged) note(changed, "faults");
  if (next.listenAddress != applied.listenAddress) note(restart, "listen-address");
  if (next.port != applied.port && next.port != 0) note(restart, "port");
  if (next.upstreamDsn != config_.upstreamDsn) note(restart, "upstream-dsn");
  if (next.maxConnections != applied.maxConnections) note(restart, "max-connections");
  if (next.queryTimeout != applied.queryTimeout) note(restart, "query-timeout");
  if (next.idleInTransactionTimeout != applied.idleInTransactionTimeout) note(restart, "idle-in-transaction-timeout");
  if (next.startupTimeout != applied.startupTimeout) note(restart, "startup-timeout");
  if (next.connectTimeout != applied.connectTimeout) note(restart, "connect-timeout");
  if (next.shutdownTimeout != applied.shutdownTimeout) note(restart, "shutdown-timeout");
  if (next.maxMessageSize != applied.maxMessageSize) note(restart, "max-message-size");
  if (next.extendedProtocolRelay != applied.extendedProtocolRelay || next.fullProtocol != applied.fullProtocol) {
    note(restart, "protocol");
  }
  if (next.maxCopyInBytes != applied.maxCopyInBytes) note(restart, "max-copy-in-bytes");
  if (next.reuseUpstream != applied.reuseUpstream || next.reusePoolSize != applied.reusePoolSize ||
      next.reuseIdleTimeout != applied.reuseIdleTimeout) {
    note(restart, "reuse-upstream");
  }
  if (next.instanceId != applied.instanceId) note(restart, "instance-id");
  if (next.tlsEnabled != applied.tlsEnabled || next.tlsRequired != applied.tlsRequired ||
      next.tlsCertFile != applied.tlsCertFile || next.tlsKeyFile != applied.tlsKeyFile ||
      next.tlsCaFile != applied.tlsCaFile) {
    note(restart, "tls settings");
  }
  if (next.metricsAddress != applied.metricsAddress) note(restart, "metrics-address");
  if (next.logFile != applied.logFile) note(restart, "log-file");
  if (next.logQueries != applied.logQueries) note(restart, "log-queries");

  guardrails_.store(std::move(rails));
  tlsDeclines_.clear();  // a server that declined TLS may offer it now: the next connects ask again
  auto snapshot = std::make_shared<config::ServerConfig>(applied);
  if (credentials) {
    credentials_->store(std::move(credentials));
    snapshot->authFile = next.authFile;
  }
  if (next.databases != applied.databases) {
    routes_.store(std::make_shared<const upstream::RouteTable>(next.databases, config_.upstreamDsn));
    for (const auto& route : next.databases) {
      if (std::find(applied.databases.begin(), applied.databases.end(), route) == applied.databases.end()) {
        logFixedNames(route.first, route.second);
      }
    }
    snapshot->databases = next.databases;
  }
  if (faultSpecs) {
    faults_.replace(std::move(*faultSpecs));
  } else if (faultsChanged) {
    faults_.clear();  // --faults was dropped from the configuration
  }
  snapshot->faultsFile = next.faultsFile;
  faultsText_ = std::move(faultsText).value_or("");
  tlsText_ = tlsText;
  if (next.peers != applied.peers) note(changed, "peers");
  peers_.replace(next.peers);
  snapshot->peers = next.peers;
  snapshot->maxRows = next.maxRows;
  snapshot->maxBytes = next.maxBytes;
  snapshot->denyPatterns = next.denyPatterns;
  snapshot->allowPatterns = next.allowPatterns;
  snapshot->patternsIgnoreCase = next.patternsIgnoreCase;
  snapshot->logLevel = next.logLevel;
  snapshot->logFormat = next.logFormat;
  applied_ = std::move(snapshot);  // `applied` is not read after this
  observability::Logger::instance().setLevel(level);
  observability::Logger::instance().setFormat(format);
  observability::logEvent(observability::LogLevel::kInfo, "reloaded",
                          {{"changed", changed.empty() ? std::string("none") : changed},
                           {"restart_required", restart.empty() ? std::string("none") : restart}});
}

AcceptOutcome Server::acceptOne(int listenFd, session::LoopHandle& here) noexcept {
  sockaddr_storage peer{};
  socklen_t length = sizeof peer;
  int fd = -1;
  int error = 0;
  {
    // Under the lock connectionFinished closes with: a number closed on one loop and accepted again on
    // another is ordered for TSan as it is by the kernel. Every loop's listener is woken by a new
    // connection; one that finds another accepting leaves it the connection (the socket stays
    // readable if more wait) instead of sleeping on the lock.
    std::unique_lock lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return AcceptOutcome::kDrained;
    fd = ::accept4(listenFd, reinterpret_cast<sockaddr*>(&peer), &length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    error = errno;
    if (fd >= 0) connections_.insert(fd);
  }
  if (fd < 0) {
    switch (error) {
      case EAGAIN:
        return AcceptOutcome::kDrained;
      case EMFILE:
      case ENFILE:
      case ENOBUFS:
      case ENOMEM:
        if (!acceptPaused_.exchange(true, std::memory_order_relaxed)) {  // once per spell, not every 100 ms
          observability::logEvent(observability::LogLevel::kError, "accept_failed",
                                  {{"error", std::strerror(error)}, {"note", "accepting again in 100 ms"}});
        }
        return AcceptOutcome::kPause;
      case EINVAL:
      case EBADF:
      case ENOTSOCK:
        return AcceptOutcome::kClosed;
      default:
        return AcceptOutcome::kRetry;  // EINTR, ECONNABORTED, and the network errors accept passes on
    }
  }
  acceptPaused_.store(false, std::memory_order_relaxed);
  if (!nodelayInherited_) {
    const int one = 1;
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  std::unique_ptr<session::Session> session;
  try {
    session = std::make_unique<session::Session>(context_, nextSessionId(), fd, peerHost(peer));
  } catch (const std::exception& failure) {
    observability::logEvent(observability::LogLevel::kError, "accept_failed", {{"error", failure.what()}});
    connectionFinished(fd);
    return AcceptOutcome::kRetry;
  }
  try {
    eventLoop_->adoptNear(here, std::move(session));
  } catch (const std::exception& failure) {  // allocation: the session closes its descriptor
    observability::logEvent(observability::LogLevel::kError, "accept_failed", {{"error", failure.what()}});
  }
  return AcceptOutcome::kAccepted;
}

void Server::connectionFinished(int fd) {
  std::lock_guard lock(mutex_);
  connections_.erase(fd);
  ::close(fd);
  if (connections_.empty()) connectionsDone_.notify_all();
}

}  // namespace pgwire_proxy::server
