// The rule PostgreSQL applies to its own key file, for the proxy's secrets (the TLS key, the auth
// file): a regular file with no group or world access, except group read when root owns it.
#pragma once

#include <string>

namespace pgwire_proxy::config {

// Throws ConfigError "<option>: ..." naming the file when it cannot be stat'ed or breaks the rule;
// `what` names the file in the message ("private key file", "file").
void checkPrivateFile(const std::string& option, const std::string& path, const std::string& what);

}  // namespace pgwire_proxy::config
