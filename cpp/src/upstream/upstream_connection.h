// The PostgreSQL side of a session: libpq connects and authenticates, then the relay owns the socket.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string_view>
#include <string>
#include <utility>
#include <vector>

#include <sys/socket.h>

#include "config/server_config.h"
#include "protocol/errors.h"
#include "upstream/reported_parameters.h"
#include "upstream/tls_declines.h"

struct pg_conn;
struct pg_cancel;
struct ssl_st;

namespace pgwire_proxy::upstream {

using Parameters = std::vector<std::pair<std::string, std::string>>;

// What a session asks of the upstream connection, beyond the DSN.
struct ConnectRequest {
  std::string dsn;                // the route's DSN; empty: --upstream-dsn
  Parameters clientParameters;    // the client's startup parameters (user/database already removed)
  std::string auditApplicationName;  // becomes the upstream's application_name
  // The client's user and database: used where the DSN names none (a DSN that names them wins).
  std::string user;
  std::string database;
  // Passthrough authentication: connect as `user` with this password whatever the DSN says. Wiped
  // by the caller once the connect has started (libpq's own copy is wiped when the connect ends).
  bool asClient = false;
  std::string password;
  std::chrono::steady_clock::time_point deadline;
  // sslmode=prefer's answers per DSN (the server's); null: ask before every connection, as libpq does.
  TlsDeclines* tlsDeclines = nullptr;
};

// The user and database a DSN names itself (empty when it names none); throws ProxyError for a DSN
// libpq cannot parse.
struct DsnNames {
  std::string user;
  std::string dbname;
};
[[nodiscard]] DsnNames dsnNames(const std::string& dsn);

// Whether libpq, given these connection parameters, sends an SSLRequest first and carries on in
// plaintext when the server declines: sslmode prefer (the parameters', else requiressl's, else
// PGSSLMODE's, else libpq's default) and one TCP host (a list may hold servers that answer
// differently; a socket directory, or no host at all, is libpq's Unix socket, never asked).
[[nodiscard]] bool asksForTlsLikePrefer(const Parameters& params);

// Overwrites a secret before its memory is released (OPENSSL_cleanse: not optimised away).
void wipe(std::string& secret) noexcept;

// Builds the upstream's application_name, `pgwire-proxy/<app>@<address>`, within PostgreSQL's 63 bytes.
[[nodiscard]] std::string auditApplicationName(std::string_view clientApplication, std::string_view clientAddress);

// The last statement_timeout a libpq `options` string sets (`-c statement_timeout=5s`,
// `-cstatement_timeout=5s`, `--statement-timeout=5s`), in milliseconds; nullopt when it sets none or
// the value is not a valid duration (PostgreSQL then refuses the connection itself).
[[nodiscard]] std::optional<std::chrono::milliseconds> statementTimeoutIn(std::string_view options);

// A string literal for SQL the proxy sends itself: E'...' with quotes and backslashes escaped (right
// whatever standard_conforming_strings says).
[[nodiscard]] std::string quoteLiteral(std::string_view value);

// Escapes a value for a `-c name=value` item of the libpq `options` parameter (spaces and backslashes).
[[nodiscard]] std::string escapeOptionValue(std::string_view value);

// What a CancelRequest for this connection needs: the address libpq connected to and the backend's key.
struct CancelData {
  sockaddr_storage address{};
  socklen_t addressLength = 0;
  std::int32_t processId = 0;
  std::int32_t secretKey = 0;
};

// What the connect waits for next: the socket (it can change between attempts) and the poll events.
struct ConnectWait {
  int fd = -1;
  short events = 0;
};

class UpstreamConnection {
 public:
  // Starts connecting through libpq without blocking (PQconnectStartParams; a host name is resolved
  // here, so DSNs name addresses or fast-resolving hosts). Throws ProxyError when it cannot start.
  UpstreamConnection(const config::ServerConfig& config, const ConnectRequest& request);
  // What to wait for before the first step: the socket writable (libpq's rule after PQconnectStart).
  [[nodiscard]] ConnectWait firstWait() const;
  // Whether what firstWait() asks is already so (a poll that does not wait): a server on this host has
  // completed the TCP handshake by the time connect() returns, and refused it as fast.
  [[nodiscard]] bool firstWaitOver() const;
  // One step of the connect and authentication (PQconnectPoll), called each time the socket is ready
  // for what the last wait asked. nullopt once connected. Throws ProxyError
  // (FATAL) carrying the upstream's own SQLSTATE when it sent one (28P01, 3D000 ...), else 08006.
  [[nodiscard]] std::optional<ConnectWait> continueConnect();
  // The error for a connect that did not finish by its deadline.
  [[nodiscard]] static ProxyError timeoutError(const config::ServerConfig& config);
  // The key and address for cancelling this connection's statements without libpq (which blocks);
  // nullopt when this libpq's layout is not the one checked for (then cancel() is the way).
  [[nodiscard]] const std::optional<CancelData>& cancelData() const noexcept { return cancelData_; }
  ~UpstreamConnection();
  UpstreamConnection(const UpstreamConnection&) = delete;
  UpstreamConnection& operator=(const UpstreamConnection&) = delete;

  // The statement_timeout in force upstream: --query-timeout, or the client's own startup value
  // when that is lower (0: none).
  [[nodiscard]] std::chrono::milliseconds statementTimeout() const noexcept { return statementTimeout_; }

  // The socket the relay reads and writes (non-blocking: libpq leaves it so).
  [[nodiscard]] int socket() const;
  [[nodiscard]] int backendPid() const;
  // libpq's OpenSSL object when the link is TLS (sslmode), else null; the relay reads and writes
  // through it. Owned by libpq.
  [[nodiscard]] ssl_st* sslObject() const;
  // What the upstream reported, for the client's startup (read from libpq at the first use: the
  // connection is up by then).
  [[nodiscard]] const ReportedParameters& reported() const;
  // A ParameterStatus the proxy read itself after startup (the reset between clients of
  // --reuse-upstream): reported() says it from now on.
  void noteParameter(std::string_view name, std::string_view value);

  // Asks the server to cancel whatever this connection is running, through libpq's PQcancel, which
  // blocks (no connect timeout): only where cancelData() is not available. Returns false with a
  // message in `error` when the cancel request could not be delivered.
  [[nodiscard]] bool cancel(std::string& error) const;

  // Closes the socket without sending Terminate (for an upstream already lost).
  void abandon();

 private:
  // Overwrites libpq's copy of the password (PQpass): the connect is over, it is needed no more.
  void wipePassword() noexcept;

  // Whether this connect asks for TLS the way sslmode=prefer does, so its outcome is worth noting in
  // tlsDeclines_; or goes plaintext because that DSN's server declined recently.
  enum class TlsProbe { kNotApplicable, kAsking, kSkipped };
  void noteTlsOutcome(bool connected) noexcept;

  TlsDeclines* tlsDeclines_ = nullptr;
  TlsProbe tlsProbe_ = TlsProbe::kNotApplicable;
  std::string dsnKey_;  // tlsDeclines_'s key: the DSN as configured
  std::chrono::milliseconds statementTimeout_{0};
  std::optional<CancelData> cancelData_;
  int pollStatus_ = 0;  // libpq's PostgresPollingStatusType of the last step
  mutable std::optional<ReportedParameters> reported_;
  pg_conn* conn_ = nullptr;
  pg_cancel* cancel_ = nullptr;
  mutable std::mutex cancelMutex_;
};

}  // namespace pgwire_proxy::upstream
