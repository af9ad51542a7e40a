// The pgwire-proxy binary: options and signals mapped onto the core library's Server.
#include <Poco/Util/HelpFormatter.h>
#include <Poco/Util/Option.h>
#include <Poco/Util/OptionSet.h>
#include <Poco/Util/ServerApplication.h>
#include <signal.h>

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "config/server_config.h"
#include "guardrails/query_filter.h"
#include "observability/log.h"
#include "server/server.h"

namespace {

using pgwire_proxy::config::ConfigError;
using pgwire_proxy::config::ServerConfig;

// Every option of the binary: name, argument name, help text (with its default).
struct OptionSpec {
  const char* name;
  const char* argument;  // nullptr: a flag without a value
  const char* help;
  bool repeatable = false;
};

const std::vector<OptionSpec>& optionSpecs() {
  static const std::vector<OptionSpec> specs = {
      {"listen-address", "host", "Address to listen on. Default: 127.0.0.1."},
      {"port", "port", "Port to listen on; 0 picks a free port. Default: 5433."},
      {"upstream-dsn", "dsn",
       "libpq connection string or URI of the upstream PostgreSQL. Default: the environment variable "
       "PGWIRE_PROXY_UPSTREAM_DSN (keeps passwords out of argv)."},
      {"max-connections", "n", "Most concurrent client sessions; the next gets FATAL 53300. Default: 100."},
      {"query-timeout", "duration",
       "Upstream statement_timeout for every session (500ms, 30s, 2min; 0 = off). Default: 30s."},
      {"idle-in-transaction-timeout", "duration",
       "Upstream idle_in_transaction_session_timeout (0 = off). Default: 0."},
      {"startup-timeout", "duration", "Time a client has for SSL negotiation and its startup packet. Default: 10s."},
      {"connect-timeout", "duration", "Time allowed to connect and authenticate upstream. Default: 10s."},
      {"max-message-size", "size", "Largest client message (a Query) accepted (kB, MB). Default: 16MB."},
      {"max-rows", "n", "Most rows per statement sent to a client; past it the statement is cancelled "
       "with 54000 (0 = off). Default: 10000."},
      {"max-bytes", "size", "Most result bytes per statement sent to a client (kB, MB, GB; 0 = off). Default: 100MB."},
      {"deny", "regex", "Refuse queries matching this POSIX extended regex with 42501 (repeatable).", true},
      {"allow", "regex", "When given, only queries matching one of these run (repeatable).", true},
      {"deny-file", "path", "Deny patterns from a file, one a line, # comments (repeatable).", true},
      {"allow-file", "path", "Allow patterns from a file, one a line, # comments (repeatable).", true},
      {"patterns-ignore-case", nullptr, "Match --deny/--allow patterns case-insensitively. Default: off."},
      {"log-level", "level", "debug, info, warning, error or off. Default: info."},
  };
  return specs;
}

class ProxyApplication final : public Poco::Util::ServerApplication {
 protected:
  void defineOptions(Poco::Util::OptionSet& options) override {
    ServerApplication::defineOptions(options);
    options.addOption(Poco::Util::Option("help", "h", "Show this help and exit.").required(false).repeatable(false));
    for (const auto& spec : optionSpecs()) {
      Poco::Util::Option option(spec.name, "", spec.help);
      option.required(false).repeatable(spec.repeatable);
      if (spec.argument != nullptr) option.argument(spec.argument, true);
      options.addOption(option);
    }
  }

  void handleOption(const std::string& name, const std::string& value) override {
    ServerApplication::handleOption(name, value);
    if (name == "help") {
      helpRequested_ = true;
      stopOptionsProcessing();
    } else {
      values_[name].push_back(value);
    }
  }

  int main(const std::vector<std::string>& arguments) override {
    if (helpRequested_) {
      Poco::Util::HelpFormatter formatter(options());
      formatter.setCommand(commandName());
      formatter.setUsage("[--option=value | --option value] ...");
      formatter.setHeader("A PostgreSQL wire-protocol proxy with guardrails.");
      formatter.setUnixStyle(true);
      formatter.setWidth(100);
      formatter.format(std::cout);
      return EXIT_OK;
    }
    if (!arguments.empty()) {
      std::cerr << "pgwire-proxy: unexpected argument \"" << arguments.front() << "\" (see --help)\n";
      return EXIT_USAGE;
    }
    ServerConfig config;
    try {
      config = buildConfig();
    } catch (const ConfigError& error) {
      std::cerr << "pgwire-proxy: invalid configuration: " << error.what() << "\n";
      return EXIT_CONFIG;
    }
    try {
      pgwire_proxy::server::Server server(config);
      server.start();
      std::cout << "listening on " << server.host() << ":" << server.port() << std::endl;
      waitForTerminationRequest();
      pgwire_proxy::observability::logInfo("event=shutdown_requested");
      server.stop();
    } catch (const ConfigError& error) {
      std::cerr << "pgwire-proxy: invalid configuration: " << error.what() << "\n";
      return EXIT_CONFIG;
    } catch (const std::exception& error) {
      std::cerr << "pgwire-proxy: " << error.what() << "\n";
      return EXIT_SOFTWARE;
    }
    return EXIT_OK;
  }

 private:
  ServerConfig buildConfig() const {
    using namespace pgwire_proxy::config;
    ServerConfig config;
    auto value = [this](const char* name) -> const std::string* {
      const auto it = values_.find(name);
      return it == values_.end() ? nullptr : &it->second.back();
    };
    auto all = [this](const char* name) {
      const auto it = values_.find(name);
      return it == values_.end() ? std::vector<std::string>{} : it->second;
    };
    if (auto* v = value("listen-address")) config.listenAddress = *v;
    if (auto* v = value("port")) config.port = static_cast<std::uint16_t>(parseInteger(*v, "port", 0, 65535));
    if (auto* v = value("upstream-dsn")) {
      config.upstreamDsn = *v;
    } else if (const char* env = std::getenv("PGWIRE_PROXY_UPSTREAM_DSN")) {
      config.upstreamDsn = env;
    }
    if (auto* v = value("max-connections")) {
      config.maxConnections = static_cast<int>(parseInteger(*v, "max-connections", 1, 100000));
    }
    if (auto* v = value("query-timeout")) config.queryTimeout = parseDuration(*v, "query-timeout");
    if (auto* v = value("idle-in-transaction-timeout")) {
      config.idleInTransactionTimeout = parseDuration(*v, "idle-in-transaction-timeout");
    }
    if (auto* v = value("startup-timeout")) config.startupTimeout = parseDuration(*v, "startup-timeout");
    if (auto* v = value("connect-timeout")) config.connectTimeout = parseDuration(*v, "connect-timeout");
    if (auto* v = value("max-message-size")) {
      const auto size = parseSize(*v, "max-message-size");
      if (size > 1024ULL * 1024 * 1024) throw ConfigError("max-message-size: must be at most 1GB");
      config.maxMessageSize = static_cast<std::uint32_t>(size);
    }
    if (auto* v = value("max-rows")) {
      config.maxRows = static_cast<std::uint64_t>(parseInteger(*v, "max-rows", 0, INT64_MAX));
    }
    if (auto* v = value("max-bytes")) config.maxBytes = parseSize(*v, "max-bytes");
    config.denyPatterns = all("deny");
    config.allowPatterns = all("allow");
    for (const auto& path : all("deny-file")) {
      for (auto& pattern : pgwire_proxy::guardrails::readPatternFile(path)) config.denyPatterns.push_back(pattern);
    }
    for (const auto& path : all("allow-file")) {
      for (auto& pattern : pgwire_proxy::guardrails::readPatternFile(path)) config.allowPatterns.push_back(pattern);
    }
    config.patternsIgnoreCase = value("patterns-ignore-case") != nullptr;
    if (auto* v = value("log-level")) {
      pgwire_proxy::observability::LogLevel level{};
      if (!pgwire_proxy::observability::parseLogLevel(*v, level)) {
        throw ConfigError("log-level: invalid value \"" + *v + "\" (debug, info, warning, error or off)");
      }
      pgwire_proxy::observability::Logger::instance().setLevel(level);
    }
    config.validate();
    return config;
  }

  bool helpRequested_ = false;
  std::map<std::string, std::vector<std::string>> values_;
};

}  // namespace

int main(int argc, char** argv) {
  // The core writes with MSG_NOSIGNAL; the binary also ignores SIGPIPE for libraries that do not.
  ::signal(SIGPIPE, SIG_IGN);
  // Block the termination signals before any thread starts, so every thread inherits the mask and
  // only waitForTerminationRequest() (sigwait) receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGQUIT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ProxyApplication application;
  return application.run(argc, argv);
}
