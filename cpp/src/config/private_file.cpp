// The rule PostgreSQL applies to its own key file, for the proxy's secrets.
#include "config/private_file.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "config/server_config.h"

namespace pgwire_proxy::config {

void checkPrivateFile(const std::string& option, const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw ConfigError(option + ": cannot read \"" + path + "\": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) throw ConfigError(option + ": \"" + path + "\" is not a regular file");
  const bool ownerOnly = (st.st_mode & (S_IRWXG | S_IRWXO)) == 0;
  const bool rootGroupRead = st.st_uid == 0 && (st.st_mode & (S_IWGRP | S_IXGRP | S_IRWXO)) == 0;
  if (!ownerOnly && !rootGroupRead) {
    throw ConfigError(option + ": " + (what.empty() ? std::string() : what + " ") + "\"" + path +
                      "\" has group or world access; it must be u=rw (0600) or less, or u=rw,g=r (0640) "
                      "or less if owned by root");
  }
}

}  // namespace pgwire_proxy::config
