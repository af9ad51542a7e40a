// sslmode=prefer's answer, remembered.
#include "upstream/tls_declines.h"

namespace pgwire_proxy::upstream {

bool TlsDeclines::declinedRecently(const std::string& dsn, Clock::time_point now) const {
  std::lock_guard lock(mutex_);
  const auto it = declined_.find(dsn);
  return it != declined_.end() && now - it->second < kRemembered;
}

void TlsDeclines::noteDeclined(const std::string& dsn, Clock::time_point now) {
  std::lock_guard lock(mutex_);
  declined_[dsn] = now;
}

void TlsDeclines::forget(const std::string& dsn) {
  std::lock_guard lock(mutex_);
  declined_.erase(dsn);
}

void TlsDeclines::clear() {
  std::lock_guard lock(mutex_);
  declined_.clear();
}

}  // namespace pgwire_proxy::upstream
