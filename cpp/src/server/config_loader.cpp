// The configuration a server starts (or reloads) with: options parsed, the files they name read.
#include "server/config_loader.h"

#include "auth/auth_file.h"
#include "faults/fault_rules.h"
#include "guardrails/query_filter.h"
#include "observability/log.h"
#include "session/tls_context.h"

namespace pgwire_proxy::server {
namespace {

void readPatterns(const char* option, const std::vector<std::string>& paths, std::vector<std::string>& into) {
  for (const auto& path : paths) {
    try {
      for (auto& pattern : guardrails::readPatternFile(path)) into.push_back(std::move(pattern));
    } catch (const config::ConfigError& error) {
      throw config::ConfigError(std::string(option) + ": " + error.what());
    }
  }
}

}  // namespace

config::ServerConfig loadConfig(const config::OptionValues& values) {
  config::ServerConfig config = config::configFromOptions(values);
  observability::LogLevel level{};
  if (!observability::parseLogLevel(config.logLevel, level)) {
    throw config::ConfigError("log-level: invalid value \"" + config.logLevel + "\" (debug, info, warning, error or off)");
  }
  observability::LogFormat format{};
  if (!observability::parseLogFormat(config.logFormat, format)) {
    throw config::ConfigError("log-format: invalid value \"" + config.logFormat + "\" (text or json)");
  }
  readPatterns("deny-file", config.denyFiles, config.denyPatterns);
  readPatterns("allow-file", config.allowFiles, config.allowPatterns);
  if (!config.faultsFile.empty()) (void)faults::readFaultFile(config.faultsFile);  // a bad rule names its line
  // Patterns compiled and TLS files loaded once, so a bad one fails before anything listens.
  const guardrails::QueryFilter check(config.denyPatterns, config.allowPatterns, config.patternsIgnoreCase);
  if (config.tlsEnabled) {
    const session::TlsContext tls({config.tlsCertFile, config.tlsKeyFile, config.tlsCaFile});
  }
  if (!config.authFile.empty()) (void)auth::Credentials::read(config.authFile);  // names a bad file:line
  return config;
}

}  // namespace pgwire_proxy::server
