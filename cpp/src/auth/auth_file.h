// The users the proxy authenticates itself (--auth=scram-sha-256): PgBouncer's userlist.txt format,
// `"user" "secret"` a line, the secret a SCRAM-SHA-256 verifier or a plain-text password.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "auth/scram.h"
#include "config/snapshot.h"

namespace pgwire_proxy::auth {

class Credentials {
 public:
  // Reads and checks `path`: no group or world access (as the TLS key), one `"user" "secret"` a line,
  // blank lines and lines starting with ';' or '#' skipped, what follows the two fields ignored (as
  // PgBouncer does). Plain-text passwords become verifiers here, with a fresh salt. Throws
  // config::ConfigError "auth-file: FILE:LINE: ..." naming the first bad line.
  [[nodiscard]] static Credentials read(const std::string& path);

  // The user's secret; nullopt for a user the file does not name.
  [[nodiscard]] std::optional<ScramSecret> find(const std::string& user) const;
  [[nodiscard]] std::size_t size() const noexcept { return users_.size(); }

 private:
  std::unordered_map<std::string, ScramSecret> users_;
};

// The file in force, replaced as a whole on reload; and the key mock exchanges derive their salts
// from (one per process, so an unknown user's salt is the same at every attempt).
class CredentialsHolder : public config::Snapshot<Credentials> {
 public:
  explicit CredentialsHolder(std::shared_ptr<const Credentials> credentials);
  [[nodiscard]] const std::string& mockKey() const noexcept { return mockKey_; }

 private:
  const std::string mockKey_;
};

}  // namespace pgwire_proxy::auth
