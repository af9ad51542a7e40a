// The configuration a server starts (or reloads) with: the options parsed by config/, then the files
// they name read and checked here (pattern files, the faults file, the TLS files, the auth file), so a
// bad one fails before anything listens or changes. config/ stays the bottom layer: it reads no file.
#pragma once

#include "config/options.h"
#include "config/server_config.h"

namespace pgwire_proxy::server {

// Throws config::ConfigError naming the option (and file:line) that is wrong.
[[nodiscard]] config::ServerConfig loadConfig(const config::OptionValues& values);

}  // namespace pgwire_proxy::server
