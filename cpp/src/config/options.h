// The proxy's options by name: one table for the command line, the Python module and config files.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "config/server_config.h"

namespace pgwire_proxy::config {

struct OptionSpec {
  const char* name;      // kebab-case: --name on the command line, snake_case in Python
  const char* argument;  // nullptr: a flag without a value
  const char* help;      // ends with the default
  bool repeatable = false;
};

// Every option, in --help order.
[[nodiscard]] const std::vector<OptionSpec>& optionSpecs();

// Option values by kebab-case name; repeatable options hold several, others their last value.
using OptionValues = std::map<std::string, std::vector<std::string>>;

// Builds and validates a config from the option values alone (the files it names are read by
// server::loadConfig). PGWIRE_PROXY_UPSTREAM_DSN stands in for a missing upstream-dsn.
// Throws ConfigError naming the option for an unknown name or an invalid value.
[[nodiscard]] ServerConfig configFromOptions(const OptionValues& values);

}  // namespace pgwire_proxy::config
