// The proxy's options by name: one table for the command line, the Python module and config files.
#include "config/options.h"

#include <cstdint>
#include <cstdlib>


namespace pgwire_proxy::config {

const std::vector<OptionSpec>& optionSpecs() {
  static const std::vector<OptionSpec> specs = {
      {"config", "path",
       "Read options from this file (properties `key = value`, or .ini); the command line wins over it. "
       "SIGHUP re-reads it."},
      {"listen-address", "host", "Address to listen on. Default: 127.0.0.1."},
      {"port", "port", "Port to listen on; 0 picks a free port. Default: 5433."},
      {"upstream-dsn", "dsn",
       "libpq connection string or URI of the upstream PostgreSQL. Default: the environment variable "
       "PGWIRE_PROXY_UPSTREAM_DSN (keeps passwords out of argv)."},
      {"database", "name=dsn",
       "A route: a client asking for database NAME goes to DSN (whose own user/dbname win; where it names "
       "none the client's are used). Repeatable; re-read on SIGHUP (new sessions). Other names go to "
       "--upstream-dsn, or get FATAL 3D000 without one.",
       true},
      {"max-connections", "n", "Most concurrent client sessions; the next gets FATAL 53300. Default: 100."},
      {"max-startup-connections", "n",
       "Most connections still in startup (TLS, startup packet, upstream connect) at once; the next is "
       "refused with FATAL 53300. Each costs a descriptor and a small buffer until --startup-timeout. "
       "Default: 2000."},
      {"query-timeout", "duration",
       "Upstream statement_timeout for every session, with a proxy-side backstop a little later "
       "(500ms, 30s, 2min; 0 = off). Default: 30s."},
      {"idle-in-transaction-timeout", "duration",
       "Upstream idle_in_transaction_session_timeout (0 = off). Default: 0."},
      {"startup-timeout", "duration", "Time a client has for SSL negotiation and its startup packet. Default: 10s."},
      {"connect-timeout", "duration", "Time allowed to connect and authenticate upstream. Default: 10s."},
      {"shutdown-timeout", "duration",
       "On SIGTERM/SIGINT, how long running queries may finish before they are cancelled (a second signal "
       "cuts it short). Default: 30s."},
      {"max-message-size", "size", "Largest client message (a Query) accepted (kB, MB). Default: 16MB."},
      {"protocol", "mode",
       "What is relayed. simple: the simple query protocol; Parse/Bind/Execute, COPY and function calls are "
       "refused with 0A000. extended: the extended query protocol too, pipelined, with the same guardrails. "
       "full: extended plus COPY (FROM STDIN and TO STDOUT) and the function-call protocol. Replication "
       "and COPY BOTH are refused in every mode. Default: simple."},
      {"extended-protocol", "mode",
       "The older name of --protocol: reject is simple, relay is extended (--protocol wins when both are "
       "given). Default: reject."},
      {"max-copy-in-bytes", "size",
       "Most bytes one COPY FROM STDIN may send upstream (--protocol=full); past it the COPY is failed "
       "upstream and the client gets 54000 (0 = off). Default: 1GB."},
      {"reuse-upstream", nullptr,
       "Give a finished session's upstream connection, reset with DISCARD ALL, to the next client of the same "
       "database, user and startup parameters instead of closing it (not with --auth=passthrough). A reused "
       "client sees a backend that served others (pg_backend_pid, pg_stat_activity's backend_start). "
       "Default: off (one upstream connection per client)."},
      {"reuse-pool-size", "n", "Most idle upstream connections --reuse-upstream keeps, over all databases. Default: 20."},
      {"reuse-idle-timeout", "duration", "An idle upstream connection kept by --reuse-upstream is closed after this. "
       "Default: 60s."},
      {"pin-loops", nullptr,
       "Pin each event-loop thread to one CPU (the proxy runs a loop per CPU it may use: all of the "
       "machine's, or those taskset or a container's cpuset allow). For a machine that runs the proxy and "
       "its database and little else; a pinned loop waits for its CPU rather than move. Default: off (the "
       "kernel places the loops)."},
      {"max-rows", "n",
       "Most rows per statement sent to a client; past it the statement is cancelled with 54000 (0 = off). "
       "Default: 10000."},
      {"max-bytes", "size", "Most result bytes per statement sent to a client (kB, MB, GB; 0 = off). Default: 100MB."},
      {"deny", "regex", "Refuse queries matching this POSIX extended regex with 42501 (repeatable).", true},
      {"allow", "regex", "When given, only queries matching one of these run (repeatable).", true},
      {"deny-file", "path", "Deny patterns from a file, one a line, # comments (repeatable).", true},
      {"allow-file", "path", "Allow patterns from a file, one a line, # comments (repeatable).", true},
      {"patterns-ignore-case", nullptr, "Match --deny/--allow patterns case-insensitively. Default: off."},
      {"enable-tls", nullptr, "Answer SSLRequest with 'S' and run TLS (1.2 or newer) with the client. Default: off."},
      {"tls-cert", "path", "PEM certificate (chain) the proxy presents to clients."},
      {"tls-key", "path", "PEM private key of --tls-cert; must not be group or world readable."},
      {"tls-ca", "path", "PEM CA certificates; when given, clients must present a certificate signed by one."},
      {"tls-required", nullptr, "Refuse clients that do not use TLS (FATAL 28000). Default: off."},
      {"auth", "method",
       "How clients authenticate: trust (nobody is asked; the upstream decides as for the proxy's own "
       "connection), passthrough (the client's password, asked in clear text only over TLS or from "
       "loopback, goes upstream as the client's user), scram-sha-256 (SCRAM with the client against "
       "--auth-file; -PLUS channel binding over TLS). Default: trust."},
      {"auth-file", "path",
       "Users for --auth=scram-sha-256, PgBouncer's userlist.txt format (\"user\" \"secret\", the secret a "
       "SCRAM-SHA-256 verifier or a plain password); no group/world access; re-read on SIGHUP."},
      {"faults", "path",
       "Fault rules to inject, one a line (match=REGEX; action=error|delay|drop|notice; ...), re-read on "
       "SIGHUP. See docs/fault-injection.md. Default: none."},
      {"instance-id", "n",
       "This instance's id (0-255) when several run behind a balancer: encoded in the cancel keys it issues "
       "(the top 8 bits of the 31-bit process id). Default: none."},
      {"peers", "id=host:port,...",
       "The instances: a CancelRequest for a key another instance issued is forwarded to it (once; keys of "
       "unknown instances are dropped; this instance's own entry is skipped). Needs --instance-id. Re-read "
       "on SIGHUP."},
      {"metrics-address", "host:port",
       "Serve Prometheus metrics at http://HOST:PORT/metrics, and /healthz and /readyz (port 0 picks one). "
       "Default: off."},
      {"log-level", "level", "debug, info, warning, error or off. Default: info."},
      {"log-format", "format", "text (key=value) or json, one event per line. Default: text."},
      {"log-file", "path", "Append logs to this file instead of stderr."},
      {"log-queries", nullptr, "Log one line per query (text excerpt, outcome, rows, duration). Default: off."},
  };
  return specs;
}

ServerConfig configFromOptions(const OptionValues& values) {
  for (const auto& [name, list] : values) {
    bool known = false;
    for (const auto& spec : optionSpecs()) known = known || name == spec.name;
    if (!known) throw ConfigError(name + ": unknown option");
  }
  // "config" names the file the values came from; the shell reads it (readConfigFile).
  auto value = [&values](const char* name) -> const std::string* {
    const auto it = values.find(name);
    return it == values.end() || it->second.empty() ? nullptr : &it->second.back();
  };
  auto all = [&values](const char* name) {
    const auto it = values.find(name);
    return it == values.end() ? std::vector<std::string>{} : it->second;
  };

  ServerConfig config;
  if (auto* v = value("listen-address")) config.listenAddress = *v;
  if (auto* v = value("port")) config.port = static_cast<std::uint16_t>(parseInteger(*v, "port", 0, 65535));
  if (auto* v = value("upstream-dsn")) {
    config.upstreamDsn = *v;
  } else if (const char* env = std::getenv("PGWIRE_PROXY_UPSTREAM_DSN")) {
    config.upstreamDsn = env;
  }
  for (const auto& route : all("database")) {
    const auto equals = route.find('=');
    if (equals == std::string::npos || equals == 0) {
      throw ConfigError("database: expected NAME=DSN, got \"" + route + "\"");
    }
    config.databases.emplace_back(route.substr(0, equals), route.substr(equals + 1));
  }
  if (auto* v = value("max-connections")) {
    config.maxConnections = static_cast<int>(parseInteger(*v, "max-connections", 1, 100000));
  }
  if (auto* v = value("max-startup-connections")) {
    config.maxStartupConnections = static_cast<int>(parseInteger(*v, "max-startup-connections", 1, 1000000));
  }
  if (auto* v = value("query-timeout")) config.queryTimeout = parseDuration(*v, "query-timeout");
  if (auto* v = value("idle-in-transaction-timeout")) {
    config.idleInTransactionTimeout = parseDuration(*v, "idle-in-transaction-timeout");
  }
  if (auto* v = value("startup-timeout")) config.startupTimeout = parseDuration(*v, "startup-timeout");
  if (auto* v = value("connect-timeout")) config.connectTimeout = parseDuration(*v, "connect-timeout");
  if (auto* v = value("shutdown-timeout")) config.shutdownTimeout = parseDuration(*v, "shutdown-timeout");
  if (auto* v = value("max-message-size")) {
    const auto size = parseSize(*v, "max-message-size");
    if (size > 1024ULL * 1024 * 1024) throw ConfigError("max-message-size: must be at most 1GB");
    config.maxMessageSize = static_cast<std::uint32_t>(size);
  }
  if (auto* v = value("extended-protocol")) {
    if (*v != "reject" && *v != "relay") {
      throw ConfigError("extended-protocol: invalid value \"" + *v + "\" (reject or relay)");
    }
    config.extendedProtocolRelay = *v == "relay";
  }
  if (auto* v = value("protocol")) {
    if (*v != "simple" && *v != "extended" && *v != "full") {
      throw ConfigError("protocol: invalid value \"" + *v + "\" (simple, extended or full)");
    }
    config.extendedProtocolRelay = *v != "simple";
    config.fullProtocol = *v == "full";
  }
  if (auto* v = value("max-copy-in-bytes")) config.maxCopyInBytes = parseSize(*v, "max-copy-in-bytes");
  if (auto* v = value("reuse-pool-size")) {
    config.reusePoolSize = static_cast<int>(parseInteger(*v, "reuse-pool-size", 0, 100000));
  }
  if (auto* v = value("reuse-idle-timeout")) config.reuseIdleTimeout = parseDuration(*v, "reuse-idle-timeout");
  if (auto* v = value("max-rows")) config.maxRows = static_cast<std::uint64_t>(parseInteger(*v, "max-rows", 0, INT64_MAX));
  if (auto* v = value("max-bytes")) config.maxBytes = parseSize(*v, "max-bytes");
  config.denyPatterns = all("deny");
  config.allowPatterns = all("allow");
  config.denyFiles = all("deny-file");  // read by server::loadConfig (config/ reads no files)
  config.allowFiles = all("allow-file");
  auto flag = [&value](const char* name) {
    const std::string* v = value(name);
    if (v == nullptr) return false;
    if (v->empty() || *v == "true" || *v == "1" || *v == "on" || *v == "yes") return true;
    if (*v == "false" || *v == "0" || *v == "off" || *v == "no") return false;
    throw ConfigError(std::string(name) + ": invalid boolean \"" + *v + "\"");
  };
  config.patternsIgnoreCase = flag("patterns-ignore-case");
  config.tlsEnabled = flag("enable-tls");
  config.reuseUpstream = flag("reuse-upstream");
  config.pinLoops = flag("pin-loops");
  config.tlsRequired = flag("tls-required");
  if (auto* v = value("tls-cert")) config.tlsCertFile = *v;
  if (auto* v = value("tls-key")) config.tlsKeyFile = *v;
  if (auto* v = value("tls-ca")) config.tlsCaFile = *v;
  if (auto* v = value("log-level")) config.logLevel = *v;    // checked by server::loadConfig
  if (auto* v = value("log-format")) config.logFormat = *v;
  if (auto* v = value("log-file")) config.logFile = *v;
  config.logQueries = flag("log-queries");
  if (auto* v = value("metrics-address")) config.metricsAddress = *v;
  if (auto* v = value("instance-id")) config.instanceId = static_cast<int>(parseInteger(*v, "instance-id", 0, 255));
  if (auto* v = value("peers")) {
    if (config.instanceId < 0) throw ConfigError("peers: needs --instance-id");
    std::string_view rest = *v;
    while (!rest.empty()) {
      const std::size_t comma = rest.find(',');
      const std::string_view item = rest.substr(0, comma);
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
      const std::size_t equals = item.find('=');
      const std::size_t colon = item.rfind(':');
      if (equals == std::string_view::npos || colon == std::string_view::npos || colon < equals) {
        throw ConfigError("peers: expected ID=HOST:PORT, got \"" + std::string(item) + "\"");
      }
      const int id = static_cast<int>(parseInteger(item.substr(0, equals), "peers", 0, 255));
      (void)parseInteger(item.substr(colon + 1), "peers", 1, 65535);
      // This instance's own entry is skipped: every instance can share one peer list (one ConfigMap).
      if (id != config.instanceId) config.peers.emplace_back(id, std::string(item.substr(equals + 1)));
    }
  }
  if (auto* v = value("auth")) {
    if (*v == "trust") config.authMode = AuthMode::kTrust;
    else if (*v == "passthrough") config.authMode = AuthMode::kPassthrough;
    else if (*v == "scram-sha-256") config.authMode = AuthMode::kScramSha256;
    else throw ConfigError("auth: invalid value \"" + *v + "\" (trust, passthrough or scram-sha-256)");
  }
  if (auto* v = value("auth-file")) config.authFile = *v;
  if (auto* v = value("faults")) config.faultsFile = *v;
  config.validate();
  return config;
}

}  // namespace pgwire_proxy::config
