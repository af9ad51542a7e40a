// A whole file as text, for the readers that compare or parse a file at once (SIGHUP's change
// check, the cgroup CPU quota).
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace pgwire_proxy::config {

// The file's bytes; nullopt when it cannot be opened (the caller says what that means).
[[nodiscard]] std::optional<std::string> fileText(const std::filesystem::path& path);

}  // namespace pgwire_proxy::config
