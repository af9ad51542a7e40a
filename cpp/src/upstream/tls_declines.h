// sslmode=prefer's answer, remembered. libpq asks the server for TLS (an SSLRequest) before every
// connection and, when the server declines ('N'), starts again in plaintext: a round trip per fresh
// upstream connection that tells the proxy nothing new. A DSN whose server declined is connected to
// with sslmode=disable for a while (kRemembered) instead, then asked again; a reload forgets all.
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <unordered_map>

namespace pgwire_proxy::upstream {

class TlsDeclines {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr Clock::duration kRemembered = std::chrono::seconds(60);

  // Whether the server of `dsn` declined TLS less than kRemembered before `now`.
  [[nodiscard]] bool declinedRecently(const std::string& dsn, Clock::time_point now) const;
  void noteDeclined(const std::string& dsn, Clock::time_point now);
  // The server spoke TLS, or a plaintext connect on the strength of a decline failed: ask again.
  void forget(const std::string& dsn);
  void clear();

 private:
  mutable std::mutex mutex_;
  // One entry per DSN of the configuration (routes and --upstream-dsn): not a client's to grow.
  std::unordered_map<std::string, Clock::time_point> declined_;
};

}  // namespace pgwire_proxy::upstream
