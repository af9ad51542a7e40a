// Options from a file: Poco's properties format (`key = value`) or ini (with an optional
// [pgwire-proxy] section), keys named as the command-line options.
#pragma once

#include <string>

#include "config/options.h"

namespace pgwire_proxy::config {

// Reads `path` (.ini files as ini, anything else as properties). A repeatable option is given once as
// `deny = ...` or several times as `deny.1 = ...`, `deny.2 = ...`. Flags take true/false.
// Throws ConfigError naming the file and the key for unknown keys or an unreadable file.
[[nodiscard]] OptionValues readConfigFile(const std::string& path);

// `file` overlaid with `commandLine`: an option given on the command line replaces the file's values.
[[nodiscard]] OptionValues mergeOptions(const OptionValues& file, const OptionValues& commandLine);

}  // namespace pgwire_proxy::config
