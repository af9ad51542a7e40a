// The users the proxy authenticates itself: PgBouncer's userlist.txt format.
#include "auth/auth_file.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "config/private_file.h"

#include "config/server_config.h"

namespace pgwire_proxy::auth {
namespace {

using config::ConfigError;

// A double-quoted field ("" inside is one quote); advances `at` past it. nullopt: not a field.
std::optional<std::string> quoted(const std::string& line, std::size_t& at) {
  if (at >= line.size() || line[at] != '"') return std::nullopt;
  std::string value;
  for (std::size_t i = at + 1; i < line.size(); ++i) {
    if (line[i] != '"') {
      value.push_back(line[i]);
    } else if (i + 1 < line.size() && line[i + 1] == '"') {
      value.push_back('"');
      ++i;
    } else {
      at = i + 1;
      return value;
    }
  }
  return std::nullopt;  // no closing quote
}

bool isMd5Secret(const std::string& secret) {
  if (secret.size() != 35 || !secret.starts_with("md5")) return false;
  return secret.find_first_not_of("0123456789abcdef", 3) == std::string::npos;
}

}  // namespace

Credentials Credentials::read(const std::string& path) {
  config::checkPrivateFile("auth-file", path, "");
  std::ifstream in(path);
  if (!in) throw ConfigError("auth-file: cannot read \"" + path + "\"");
  Credentials credentials;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    const auto bad = [&](const std::string& why) {
      return ConfigError("auth-file: " + path + ":" + std::to_string(number) + ": " + why);
    };
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::size_t at = line.find_first_not_of(" \t");
    if (at == std::string::npos || line[at] == ';' || line[at] == '#') continue;
    const auto user = quoted(line, at);
    if (!user) throw bad("expected \"user\" \"secret\" (double-quoted, \"\" for a quote inside)");
    if (user->empty()) throw bad("empty user name");
    at = line.find_first_not_of(" \t", at);
    const auto secret = at == std::string::npos ? std::nullopt : quoted(line, at);
    if (!secret) throw bad("expected a second double-quoted field, the secret, after the user \"" + *user + "\"");
    if (secret->empty()) throw bad("empty secret for user \"" + *user + "\"");
    if (credentials.users_.contains(*user)) throw bad("user \"" + *user + "\" is listed twice");
    if (secret->starts_with("SCRAM-SHA-256$")) {
      auto verifier = parseScramVerifier(*secret);
      if (!verifier) throw bad("malformed SCRAM-SHA-256 verifier for user \"" + *user + "\"");
      credentials.users_.emplace(*user, std::move(*verifier));
    } else if (isMd5Secret(*secret)) {
      throw bad("an md5 secret cannot be used for SCRAM-SHA-256 (user \"" + *user +
                "\"): give a SCRAM-SHA-256 verifier or the plain-text password");
    } else {
      credentials.users_.emplace(*user, makeScramSecret(*secret));
    }
  }
  return credentials;
}

std::optional<ScramSecret> Credentials::find(const std::string& user) const {
  const auto it = users_.find(user);
  if (it == users_.end()) return std::nullopt;
  return it->second;
}

CredentialsHolder::CredentialsHolder(std::shared_ptr<const Credentials> credentials)
    : Snapshot(std::move(credentials)), mockKey_(randomBytes(32)) {}

}  // namespace pgwire_proxy::auth
