// Per-statement row and byte budgets for results sent to a client; pure policy, no I/O.
#include "guardrails/result_budget.h"

namespace pgwire_proxy::guardrails {

std::optional<Breach> ResultBudget::admitRow(std::uint64_t frameBytes) noexcept {
  if (maxRows_ != 0 && rows_ + 1 > maxRows_) return Breach{Breach::Kind::kRows, maxRows_};
  if (maxBytes_ != 0 && bytes_ + frameBytes > maxBytes_) return Breach{Breach::Kind::kBytes, maxBytes_};
  ++rows_;
  bytes_ += frameBytes;
  return std::nullopt;
}

std::string Breach::message() const {
  if (kind == Kind::kRows) {
    return "result exceeds the proxy's row limit of " + std::to_string(limit) + " rows (max-rows)";
  }
  return "result exceeds the proxy's size limit of " + formatBytes(limit) + " (max-bytes)";
}

std::string Breach::hint() const {
  return "Add a LIMIT or narrower WHERE clause, fetch in batches with a cursor, or raise --" + limitName() +
         " (0 turns it off).";
}

std::string formatBytes(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "kB", "MB", "GB", "TB"};
  int unit = 0;
  while (unit < 4 && bytes != 0 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++unit;
  }
  return std::to_string(bytes) + kUnits[unit];
}

}  // namespace pgwire_proxy::guardrails
