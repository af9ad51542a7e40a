// The pgwire-proxy binary: options and signals mapped onto the core library's Server.
#include <Poco/Util/HelpFormatter.h>
#include <Poco/Util/Option.h>
#include <Poco/Util/OptionSet.h>
#include <Poco/Util/ServerApplication.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "config/config_file.h"
#include "config/options.h"
#include "observability/log.h"
#include "server/config_loader.h"
#include "server/server.h"

#ifndef PGWIRE_PROXY_VERSION
#error "PGWIRE_PROXY_VERSION comes from CMake's project(VERSION) (see CMakeLists.txt)"
#endif

namespace {

using pgwire_proxy::config::ConfigError;

class ProxyApplication final : public Poco::Util::ServerApplication {
 protected:
  void defineOptions(Poco::Util::OptionSet& options) override {
    ServerApplication::defineOptions(options);
    options.addOption(Poco::Util::Option("help", "h", "Show this help and exit.").required(false).repeatable(false));
    options.addOption(
        Poco::Util::Option("version", "", "Print the version and exit.").required(false).repeatable(false));
    for (const auto& spec : pgwire_proxy::config::optionSpecs()) {
      Poco::Util::Option option(spec.name, "", spec.help);
      option.required(false).repeatable(spec.repeatable);
      if (spec.argument != nullptr) option.argument(spec.argument, true);
      options.addOption(option);
    }
  }

  // SIGHUP reloads what can change at runtime; SIGINT, SIGTERM or SIGQUIT end the wait. (Poco's
  // waitForTerminationRequest() knows no SIGHUP.) The signals are blocked in every thread, see main().
  // Graceful shutdown: running queries get `timeout` to finish; a second SIGINT/SIGTERM/SIGQUIT makes
  // it immediate.
  static void drain(pgwire_proxy::server::Server& server, std::chrono::milliseconds timeout) {
    using Clock = std::chrono::steady_clock;
    server.beginShutdown();
    const auto deadline = Clock::now() + timeout;
    bool forced = false;
    while (!forced && Clock::now() < deadline && !server.waitForConnections(std::chrono::milliseconds(50))) {
      const timespec poll{0, 0};
      const int signal = sigtimedwait(&handledSignals(), nullptr, &poll);
      if (signal > 0 && signal != SIGHUP) {
        pgwire_proxy::observability::logEvent(pgwire_proxy::observability::LogLevel::kWarning, "shutdown_immediate",
                                              {{"signal", strsignal(signal)}});
        forced = true;
      }
    }
    server.stop(forced ? std::chrono::milliseconds(0) : std::chrono::duration_cast<std::chrono::milliseconds>(
                                                             std::max(Clock::duration::zero(), deadline - Clock::now())));
  }

  static void waitForSignals(pgwire_proxy::server::Server& server,
                             const std::function<pgwire_proxy::config::ServerConfig()>& reloadConfig) {
    for (;;) {
      int signal = 0;
      if (sigwait(&handledSignals(), &signal) != 0) continue;
      if (signal != SIGHUP) {
        pgwire_proxy::observability::logEvent(pgwire_proxy::observability::LogLevel::kInfo, "shutdown_requested",
                                              {{"signal", strsignal(signal)}});
        return;
      }
      try {
        server.reload(reloadConfig());
      } catch (const std::exception& error) {
        pgwire_proxy::observability::logEvent(pgwire_proxy::observability::LogLevel::kError, "reload_failed",
                                              {{"error", error.what()}, {"note", "the previous settings stay in force"}});
      }
    }
  }

 public:
  static sigset_t& handledSignals() {
    static sigset_t signals = [] {
      sigset_t s;
      sigemptyset(&s);
      sigaddset(&s, SIGINT);
      sigaddset(&s, SIGTERM);
      sigaddset(&s, SIGQUIT);
      sigaddset(&s, SIGHUP);
      return s;
    }();
    return signals;
  }

 protected:
  void handleOption(const std::string& name, const std::string& value) override {
    ServerApplication::handleOption(name, value);
    if (name == "help") {
      helpRequested_ = true;
      stopOptionsProcessing();
    } else if (name == "version") {
      versionRequested_ = true;
      stopOptionsProcessing();
    } else if (name != "daemon" && name != "umask" && name != "pidfile") {
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
    if (versionRequested_) {
      std::cout << "pgwire-proxy " << PGWIRE_PROXY_VERSION << "\n";
      return EXIT_OK;
    }
    if (!arguments.empty()) {
      std::cerr << "pgwire-proxy: unexpected argument \"" << arguments.front() << "\" (see --help)\n";
      return EXIT_USAGE;
    }
    try {
      pgwire_proxy::server::Server server(pgwire_proxy::server::loadConfig(effectiveOptions()));
      server.start();
      std::cout << "listening on " << server.host() << ":" << server.port() << std::endl;
      waitForSignals(server, [this] { return pgwire_proxy::server::loadConfig(effectiveOptions()); });
      drain(server, server.config().shutdownTimeout);
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
  // The config file's options (re-read on every call) overlaid with the command line's.
  pgwire_proxy::config::OptionValues effectiveOptions() const {
    const auto it = values_.find("config");
    if (it == values_.end()) return values_;
    return pgwire_proxy::config::mergeOptions(pgwire_proxy::config::readConfigFile(it->second.back()), values_);
  }

  bool helpRequested_ = false;
  bool versionRequested_ = false;
  pgwire_proxy::config::OptionValues values_;
};

}  // namespace

int main(int argc, char** argv) {
  // The core writes with MSG_NOSIGNAL; the binary also ignores SIGPIPE for libraries that do not.
  ::signal(SIGPIPE, SIG_IGN);
  // Block the handled signals before any thread starts, so every thread inherits the mask and only
  // the main thread's sigwait receives them.
  pthread_sigmask(SIG_BLOCK, &ProxyApplication::handledSignals(), nullptr);
  ProxyApplication application;
  return application.run(argc, argv);
}
