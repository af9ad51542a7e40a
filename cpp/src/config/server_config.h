// The one ServerConfig: every setting of the proxy, validated once, then shared read-only.
#pragma once

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace pgwire_proxy::config {

using Milliseconds = std::chrono::milliseconds;

// A setting that cannot be used; the message names the setting and what was wrong with it.
class ConfigError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// How clients authenticate to the proxy: trust (nobody is asked), passthrough (the client's password
// goes upstream as the client's user), scram-sha-256 (against --auth-file).
enum class AuthMode { kTrust, kPassthrough, kScramSha256 };
[[nodiscard]] std::string_view authModeName(AuthMode mode) noexcept;

struct ServerConfig {
  std::string listenAddress = "127.0.0.1";
  std::uint16_t port = 5433;            // 0 picks a free port
  std::string upstreamDsn;              // libpq connection string or URI; the fallback route (may be empty with routes)
  // Named routes (--database NAME=DSN): a client asking for NAME goes to DSN. Reloadable.
  std::vector<std::pair<std::string, std::string>> databases;
  int maxConnections = 100;             // concurrent client sessions
  int maxStartupConnections = 2000;       // connections before their session opens (pre-authentication)
  Milliseconds queryTimeout{30'000};    // upstream statement_timeout; 0 = off
  Milliseconds idleInTransactionTimeout{0};  // upstream idle_in_transaction_session_timeout; 0 = off
  Milliseconds startupTimeout{10'000};  // SSL negotiation + startup packet
  Milliseconds connectTimeout{10'000};  // upstream connection and authentication
  Milliseconds shutdownTimeout{30'000}; // how long running queries may finish after SIGTERM
  std::uint32_t maxMessageSize = 16U * 1024 * 1024;  // largest client message (a Query) accepted
  // --protocol: the extended query protocol (Parse/Bind/Execute ...) refused with 0A000 by default,
  // or relayed (extended); full adds COPY both ways and the function-call protocol.
  bool extendedProtocolRelay = false;
  bool fullProtocol = false;
  std::uint64_t maxCopyInBytes = 1024ULL * 1024 * 1024;  // one COPY FROM STDIN's bytes upstream; 0 = off
  // --reuse-upstream: a finished session's upstream, reset with DISCARD ALL, goes to the next client of
  // the same route, user and startup parameters. Off: one upstream connection per client, closed with it.
  bool reuseUpstream = false;
  int reusePoolSize = 20;                   // idle upstream connections kept, over all routes
  Milliseconds reuseIdleTimeout{60'000};    // an idle one is closed after this
  // --pin-loops: each event-loop thread (one per CPU the process may run on) runs only on its CPU.
  bool pinLoops = false;

  // Guardrails (0 turns a limit off).
  std::uint64_t maxRows = 10'000;                 // rows per statement sent to the client
  std::uint64_t maxBytes = 100ULL * 1024 * 1024;  // DataRow bytes per statement sent to the client
  std::vector<std::string> denyPatterns;          // POSIX extended regexes; a match refuses the query
  std::vector<std::string> allowPatterns;         // when any, a query must match one
  std::vector<std::string> denyFiles;             // --deny-file / --allow-file: their patterns are read into
  std::vector<std::string> allowFiles;            // denyPatterns / allowPatterns by server::loadConfig
  bool patternsIgnoreCase = false;

  // Client-side TLS (the upstream's comes from the DSN's sslmode and friends, through libpq).
  bool tlsEnabled = false;
  bool tlsRequired = false;  // clients without TLS get FATAL 28000
  std::string tlsCertFile;
  std::string tlsKeyFile;
  std::string tlsCaFile;     // when set, clients must present a certificate signed by it

  // Client authentication.
  AuthMode authMode = AuthMode::kTrust;
  std::string authFile;  // --auth=scram-sha-256: userlist.txt; re-read on reload

  std::string metricsAddress;     // HOST:PORT for the Prometheus endpoint; empty = off
  std::string faultsFile;
  // Scale-out: this instance's id (0-255; -1 = none) is encoded in the cancel keys it issues, and
  // CancelRequests for another instance's keys go to that peer (id -> "host:port").
  int instanceId = -1;
  std::vector<std::pair<int, std::string>> peers;         // fault rules, one a line (faults/fault_rules.h); re-read on reload

  // Logging (process-wide: the last proxy started in a process decides).
  std::string logLevel = "info";  // debug, info, warning, error, off
  std::string logFormat = "text"; // text or json
  std::string logFile;            // empty = stderr
  bool logQueries = false;        // one line per query

  // Throws ConfigError naming the first invalid setting; checks the DSN with libpq's parser.
  void validate() const;
};

// Checks a DSN with libpq's parser (and what the relay cannot do); the message starts with `setting`.
void validateDsn(std::string_view setting, const std::string& dsn);

// "500ms", "30s", "2min", "1h", a bare number of seconds, "0" = off. Throws ConfigError.
[[nodiscard]] Milliseconds parseDuration(std::string_view text, std::string_view setting);
// "1024", "64kB", "100MB", "1GB" (PostgreSQL's units, powers of 1024). Throws ConfigError.
[[nodiscard]] std::uint64_t parseSize(std::string_view text, std::string_view setting);
// A decimal integer within [min, max]. Throws ConfigError.
[[nodiscard]] std::int64_t parseInteger(std::string_view text, std::string_view setting, std::int64_t min,
                                        std::int64_t max);

// When the proxy itself cancels a query that outlived --query-timeout (the server's statement_timeout
// should have stopped it first): a little later, so the server's own 57014 normally wins.
[[nodiscard]] Milliseconds backstopDelay(Milliseconds queryTimeout);

// The inverse of parseDuration, for --help and logs: "30s", "500ms", "0".
[[nodiscard]] std::string formatDuration(Milliseconds value);

}  // namespace pgwire_proxy::config
