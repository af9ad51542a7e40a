// A whole file as text.
#include "config/file_text.h"

#include <fstream>
#include <sstream>

namespace pgwire_proxy::config {

std::optional<std::string> fileText(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return std::move(text).str();
}

}  // namespace pgwire_proxy::config
