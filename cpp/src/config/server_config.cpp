// The one ServerConfig: every setting of the proxy, validated once, then shared read-only.
#include "config/server_config.h"

#include <libpq-fe.h>

#include <algorithm>
#include <charconv>
#include <limits>
#include <memory>

namespace pgwire_proxy::config {
namespace {

struct NumberAndUnit {
  std::uint64_t number = 0;
  std::string_view unit;
};

NumberAndUnit splitNumber(std::string_view text, std::string_view setting) {
  std::uint64_t number = 0;
  const auto* first = text.data();
  const auto* last = text.data() + text.size();
  const auto [end, ec] = std::from_chars(first, last, number);
  if (ec == std::errc::result_out_of_range) {
    throw ConfigError(std::string(setting) + ": value \"" + std::string(text) + "\" is out of range");
  }
  if (ec != std::errc() || end == first) {
    throw ConfigError(std::string(setting) + ": invalid value \"" + std::string(text) + "\"");
  }
  std::string_view unit(end, static_cast<std::size_t>(last - end));
  while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  return {number, unit};
}

std::uint64_t checkedMultiply(std::uint64_t value, std::uint64_t factor, std::string_view text,
                              std::string_view setting) {
  if (factor != 0 && value > std::numeric_limits<std::uint64_t>::max() / factor) {
    throw ConfigError(std::string(setting) + ": value \"" + std::string(text) + "\" is out of range");
  }
  return value * factor;
}

}  // namespace

Milliseconds parseDuration(std::string_view text, std::string_view setting) {
  const auto [number, unit] = splitNumber(text, setting);
  std::uint64_t factor = 0;
  if (unit == "ms") factor = 1;
  else if (unit.empty() || unit == "s") factor = 1000;
  else if (unit == "min") factor = 60'000;
  else if (unit == "h") factor = 3'600'000;
  else {
    throw ConfigError(std::string(setting) + ": invalid duration \"" + std::string(text) +
                      "\" (use a number with ms, s, min or h, e.g. 500ms, 30s, 2min; 0 turns it off)");
  }
  const auto ms = checkedMultiply(number, factor, text, setting);
  // statement_timeout is an int of milliseconds on the server.
  if (ms > static_cast<std::uint64_t>(std::numeric_limits<std::int32_t>::max())) {
    throw ConfigError(std::string(setting) + ": duration \"" + std::string(text) + "\" is too long");
  }
  return Milliseconds(static_cast<std::int64_t>(ms));
}

std::uint64_t parseSize(std::string_view text, std::string_view setting) {
  const auto [number, unit] = splitNumber(text, setting);
  std::uint64_t factor = 0;
  if (unit.empty() || unit == "B") factor = 1;
  else if (unit == "kB") factor = 1024;
  else if (unit == "MB") factor = 1024ULL * 1024;
  else if (unit == "GB") factor = 1024ULL * 1024 * 1024;
  else if (unit == "TB") factor = 1024ULL * 1024 * 1024 * 1024;
  else {
    throw ConfigError(std::string(setting) + ": invalid size \"" + std::string(text) +
                      "\" (use a number with B, kB, MB, GB or TB, e.g. 100MB)");
  }
  return checkedMultiply(number, factor, text, setting);
}

std::int64_t parseInteger(std::string_view text, std::string_view setting, std::int64_t min, std::int64_t max) {
  std::int64_t value = 0;
  const auto* last = text.data() + text.size();
  const auto [end, ec] = std::from_chars(text.data(), last, value);
  if (ec != std::errc() || end != last || text.empty()) {
    throw ConfigError(std::string(setting) + ": invalid integer \"" + std::string(text) + "\"");
  }
  if (value < min || value > max) {
    throw ConfigError(std::string(setting) + ": " + std::string(text) + " is outside the valid range " +
                      std::to_string(min) + ".." + std::to_string(max));
  }
  return value;
}

Milliseconds backstopDelay(Milliseconds queryTimeout) {
  return queryTimeout + std::max(Milliseconds(1000), queryTimeout / 10);
}

std::string formatDuration(Milliseconds value) {
  const auto ms = value.count();
  if (ms == 0) return "0";
  if (ms % 60'000 == 0) return std::to_string(ms / 60'000) + "min";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

void validateDsn(std::string_view setting, const std::string& dsn) {
  char* error = nullptr;
  std::unique_ptr<PQconninfoOption, decltype(&PQconninfoFree)> options(PQconninfoParse(dsn.c_str(), &error),
                                                                       &PQconninfoFree);
  if (!options) {
    std::string message = error != nullptr ? error : "out of memory";
    PQfreemem(error);
    while (!message.empty() && message.back() == '\n') message.pop_back();
    throw ConfigError(std::string(setting) + ": " + message);
  }
  for (PQconninfoOption* o = options.get(); o->keyword != nullptr; ++o) {
    if (std::string_view(o->keyword) == "gssencmode" && o->val != nullptr && std::string_view(o->val) == "require") {
      throw ConfigError(std::string(setting) +
                        ": gssencmode=require is not supported (the relay cannot speak GSSAPI "
                        "encryption; use sslmode for an encrypted upstream link)");
    }
  }
}

std::string_view authModeName(AuthMode mode) noexcept {
  switch (mode) {
    case AuthMode::kTrust: return "trust";
    case AuthMode::kPassthrough: return "passthrough";
    case AuthMode::kScramSha256: return "scram-sha-256";
  }
  return "trust";
}

void ServerConfig::validate() const {
  if (listenAddress.empty()) throw ConfigError("listen-address: must not be empty");
  if (upstreamDsn.empty() && databases.empty()) {
    throw ConfigError(
        "upstream-dsn: no upstream given (use --upstream-dsn or the environment variable PGWIRE_PROXY_UPSTREAM_DSN, "
        "or --database NAME=DSN)");
  }
  if (!upstreamDsn.empty()) validateDsn("upstream-dsn", upstreamDsn);
  for (std::size_t i = 0; i < databases.size(); ++i) {
    const auto& [name, dsn] = databases[i];
    if (name.empty()) throw ConfigError("database: a route needs a name (NAME=DSN)");
    for (std::size_t j = 0; j < i; ++j) {
      if (databases[j].first == name) throw ConfigError("database: \"" + name + "\" is routed twice");
    }
    validateDsn("database " + name, dsn);
  }
  if (!tlsEnabled) {
    if (tlsRequired) throw ConfigError("tls-required: needs --enable-tls");
    if (!tlsCertFile.empty() || !tlsKeyFile.empty() || !tlsCaFile.empty()) {
      throw ConfigError("tls-cert/tls-key/tls-ca: given without --enable-tls");
    }
  } else if (tlsCertFile.empty() || tlsKeyFile.empty()) {
    throw ConfigError("enable-tls: needs --tls-cert and --tls-key");
  }
  if (authMode == AuthMode::kScramSha256 && authFile.empty()) {
    throw ConfigError("auth: scram-sha-256 needs --auth-file (the users and their secrets)");
  }
  if (authMode != AuthMode::kScramSha256 && !authFile.empty()) {
    throw ConfigError("auth-file: only used with --auth=scram-sha-256");
  }
  if (reuseUpstream && authMode == AuthMode::kPassthrough) {
    throw ConfigError(
        "reuse-upstream: cannot be combined with --auth=passthrough (each client's own password authenticates its "
        "upstream connection, which must not serve another client)");
  }
  if (reuseUpstream && reuseIdleTimeout.count() <= 0) throw ConfigError("reuse-idle-timeout: must be more than 0");
  if (!metricsAddress.empty()) {
    const auto colon = metricsAddress.rfind(':');
    const std::string portText = colon == std::string::npos ? std::string() : metricsAddress.substr(colon + 1);
    if (colon == std::string::npos || colon == 0 || portText.empty() ||
        portText.find_first_not_of("0123456789") != std::string::npos || portText.size() > 5 ||
        std::stoi(portText) > 65535) {
      throw ConfigError("metrics-address: invalid address \"" + metricsAddress + "\" (use HOST:PORT, e.g. 127.0.0.1:9187)");
    }
  }
  if (maxConnections < 1) throw ConfigError("max-connections: must be at least 1");
  if (maxStartupConnections < 1) throw ConfigError("max-startup-connections: must be at least 1");
  if (startupTimeout.count() <= 0) throw ConfigError("startup-timeout: must be greater than 0");
  if (connectTimeout.count() <= 0) throw ConfigError("connect-timeout: must be greater than 0");
  if (maxMessageSize < 1024) throw ConfigError("max-message-size: must be at least 1kB");
  if (maxMessageSize > 1024U * 1024 * 1024) throw ConfigError("max-message-size: must be at most 1GB");
}

}  // namespace pgwire_proxy::config
