// The one error type of the proxy: carries what an ErrorResponse needs (severity, SQLSTATE, texts).
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "protocol/sqlstate.h"

namespace pgwire_proxy {

enum class Severity { kError, kFatal };

class ProxyError : public std::runtime_error {
 public:
  ProxyError(Severity severity, std::string_view sqlstate, const std::string& message,
             std::string detail = {}, std::string hint = {})
      : std::runtime_error(message),
        severity_(severity),
        sqlstate_(sqlstate),
        detail_(std::move(detail)),
        hint_(std::move(hint)) {}

  [[nodiscard]] Severity severity() const noexcept { return severity_; }
  [[nodiscard]] const std::string& sqlstate() const noexcept { return sqlstate_; }
  [[nodiscard]] std::string_view message() const noexcept { return what(); }
  [[nodiscard]] const std::string& detail() const noexcept { return detail_; }
  [[nodiscard]] const std::string& hint() const noexcept { return hint_; }

 private:
  Severity severity_;
  std::string sqlstate_;
  std::string detail_;
  std::string hint_;
};

// Malformed bytes from a peer: always fatal for the connection, SQLSTATE 08P01.
class ProtocolError : public ProxyError {
 public:
  explicit ProtocolError(const std::string& message)
      : ProxyError(Severity::kFatal, sqlstate::kProtocolViolation, message) {}
};

}  // namespace pgwire_proxy
