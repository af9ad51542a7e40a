// The ParameterStatus values a client of an upstream connection is told at startup.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace pgwire_proxy::upstream {

// What the upstream reported (at connect, or since: the reset between clients of --reuse-upstream),
// in a stable order. The messages are encoded once and again only after a value other than
// application_name changed: that one is each client's own, and a reused connection's next client
// then costs a copy, not a look-up and an encoding per parameter.
class ReportedParameters {
 public:
  // The parameters PostgreSQL reports with ParameterStatus (GUC_REPORT), in the order PostgreSQL 15
  // sends them; newer servers' additions are asked for too and skipped when absent.
  static constexpr std::array<std::string_view, 15> kNames = {
      "application_name", "client_encoding",     "DateStyle",
      "default_transaction_read_only", "in_hot_standby", "integer_datetimes",
      "IntervalStyle",    "is_superuser",        "scram_iterations",
      "search_path",      "server_encoding",     "server_version",
      "session_authorization", "standard_conforming_strings", "TimeZone",
  };

  static constexpr std::size_t kInHotStandby = 4;
  static_assert(kNames[kInHotStandby] == "in_hot_standby");

  // `lookup(name)` gives the value reported for a name of kNames (a NUL-terminated string), or null.
  template <typename Lookup>
  explicit ReportedParameters(Lookup&& lookup) {
    for (std::size_t i = 0; i < kNames.size(); ++i) {
      if (const char* value = lookup(kNames[i].data())) values_[i] = value;
    }
  }

  // A ParameterStatus read after startup; names the client is not told of are ignored.
  void note(std::string_view name, std::string_view value);
  [[nodiscard]] const std::optional<std::string>& applicationName() const noexcept { return values_.front(); }
  // A hot standby's backend reports its promotion only before its next ReadyForQuery.
  [[nodiscard]] bool inHotStandby() const noexcept { return values_[kInHotStandby] == "on"; }
  // Appends the ParameterStatus messages, application_name's with the client's own name.
  void appendTo(std::string& out, std::string_view applicationName) const;

 private:
  std::array<std::optional<std::string>, kNames.size()> values_;
  mutable std::string encoded_;  // the messages after application_name's; empty: not encoded yet
};

}  // namespace pgwire_proxy::upstream
