// Per-statement row and byte budgets for results sent to a client; pure policy, no I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace pgwire_proxy::guardrails {

struct Breach {
  enum class Kind { kRows, kBytes } kind;
  std::uint64_t limit;

  [[nodiscard]] std::string limitName() const { return kind == Kind::kRows ? "max-rows" : "max-bytes"; }
  // "row limit of 10000 rows exceeded" style text for the client's ErrorResponse.
  [[nodiscard]] std::string message() const;
  [[nodiscard]] std::string hint() const;
};

class ResultBudget {
 public:
  // 0 turns a limit off.
  ResultBudget(std::uint64_t maxRows, std::uint64_t maxBytes) noexcept : maxRows_(maxRows), maxBytes_(maxBytes) {}

  // Accounts for one DataRow of `frameBytes` bytes; returns the breach when it would go over a limit
  // (the row is then not to be sent: exactly maxRows rows pass, the next one breaches).
  [[nodiscard]] std::optional<Breach> admitRow(std::uint64_t frameBytes) noexcept;
  // How many rows, and how many bytes of them, may still pass before a breach (the maximum when off):
  // a run of rows within it is admitted at once (admitRows), the row that would pass it one by one.
  struct Room {
    std::uint64_t rows;
    std::uint64_t bytes;
  };
  [[nodiscard]] Room room() const noexcept {
    constexpr std::uint64_t kUnlimited = ~std::uint64_t{0};
    return {maxRows_ == 0 ? kUnlimited : maxRows_ - rows_, maxBytes_ == 0 ? kUnlimited : maxBytes_ - bytes_};
  }
  void admitRows(std::uint64_t rows, std::uint64_t bytes) noexcept {
    rows_ += rows;
    bytes_ += bytes;
  }
  // A statement ended (CommandComplete, EmptyQueryResponse, ErrorResponse): budgets start over.
  void endStatement() noexcept {
    rows_ = 0;
    bytes_ = 0;
  }

  [[nodiscard]] std::uint64_t rows() const noexcept { return rows_; }
  [[nodiscard]] std::uint64_t bytes() const noexcept { return bytes_; }

 private:
  std::uint64_t maxRows_;
  std::uint64_t maxBytes_;
  std::uint64_t rows_ = 0;
  std::uint64_t bytes_ = 0;
};

// Human-readable byte count in PostgreSQL's units ("100MB", "1536kB", "17B").
[[nodiscard]] std::string formatBytes(std::uint64_t bytes);

}  // namespace pgwire_proxy::guardrails
