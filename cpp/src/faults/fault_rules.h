// Protocol-aware fault injection: rules that match queries and make the proxy answer them wrongly on
// purpose (an error, a delay, a dropped connection, a notice). Policy and counting only; the session
// carries the faults out.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "guardrails/query_filter.h"

namespace pgwire_proxy::faults {

enum class Action {
  kError,   // answer with an ErrorResponse (FATAL severity closes the connection)
  kDelay,   // hold the query, or its results, for a while
  kDrop,    // close the client connection
  kNotice,  // send a NoticeResponse, then run the query as usual
};
// "error", "delay", "drop", "notice".
[[nodiscard]] std::string_view actionName(Action action) noexcept;

enum class When {
  kBefore,      // instead of (error, drop) or before (delay, notice) sending the query upstream
  kAfter,       // error: the query runs upstream, its results are discarded, the client gets the error
  kFirstRow,    // delay: the query runs, its results are held
  kAfterRows,   // drop: after `rows` DataRows have reached the client
  kMidMessage,  // drop: in the middle of the first result message
};
// "before", "after", "first_row", "after_rows", "mid_message".
[[nodiscard]] std::string_view whenName(When when) noexcept;

// A rule as given (Python's add_fault, a --faults file line). Empty strings match anything.
struct RuleSpec {
  std::string pattern;  // POSIX ERE searched anywhere in the query text; empty: every query
  bool ignoreCase = false;
  std::string user;
  std::string database;
  std::string applicationName;
  std::uint64_t nth = 0;    // fire on the nth match only (1-based); 0: no such restriction
  std::uint64_t every = 0;  // fire on every Nth match; 0 or 1: every match
  bool perSession = false;  // count matches within each session instead of across all sessions
  double probability = 1.0;
  std::uint64_t seed = 0;  // the probability draws: the same seed gives the same sequence
  Action action = Action::kError;
  When when = When::kBefore;
  std::string sqlstate = "XX000";  // error, notice
  std::string severity;            // error: ERROR or FATAL (default ERROR); notice: NOTICE, WARNING ...
  std::string message;
  std::string detail;
  std::string hint;
  std::chrono::milliseconds delay{0};
  std::uint64_t rows = 0;  // drop after_rows
};

// Who runs the query.
struct QueryContext {
  std::string_view user;
  std::string_view database;
  std::string_view applicationName;
};

// A live rule: its counts are shared by all sessions.
class Rule {
 public:
  // Throws config::ConfigError naming what is wrong with the spec.
  Rule(std::uint64_t id, RuleSpec spec);

  [[nodiscard]] std::uint64_t id() const noexcept { return id_; }
  [[nodiscard]] const RuleSpec& spec() const noexcept { return spec_; }
  [[nodiscard]] std::uint64_t matches() const noexcept { return matches_.load(std::memory_order_relaxed); }
  [[nodiscard]] std::uint64_t hits() const noexcept { return hits_.load(std::memory_order_relaxed); }

  // Whether the rule fires for this query; counts the match (and the hit). `sessionMatches` is the
  // calling session's own match count for this rule, used (and bumped) when the rule is per session.
  [[nodiscard]] bool fires(std::string_view sql, const QueryContext& who, std::uint64_t& sessionMatches);

 private:
  const std::uint64_t id_;
  const RuleSpec spec_;
  std::unique_ptr<guardrails::QueryFilter> pattern_;  // null: every query
  std::atomic<std::uint64_t> matches_{0};
  std::atomic<std::uint64_t> hits_{0};
  std::mutex mutex_;  // the counted decision and the draw are one step, in match order
  std::mt19937_64 random_;
};

// The rules in force, in the order they were added; the first that fires wins.
class FaultRegistry {
 public:
  // Returns the new rule's id. Throws config::ConfigError for a bad spec.
  std::uint64_t add(RuleSpec spec);
  bool remove(std::uint64_t id);
  void clear();
  // Replaces all rules at once (a --faults file, on start and SIGHUP).
  void replace(std::vector<RuleSpec> specs);
  [[nodiscard]] std::vector<std::shared_ptr<Rule>> rules() const;

  // For the sessions: bumped on every change, so a session re-reads the rules only then.
  [[nodiscard]] std::uint64_t version() const noexcept { return version_.load(std::memory_order_acquire); }

 private:
  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<Rule>> rules_;
  std::uint64_t nextId_ = 1;
  std::atomic<std::uint64_t> version_{0};
};

// A --faults file: one rule per line as `key=value` pairs separated by `;` (whitespace around them is
// ignored), `#` comments and blank lines skipped, e.g.
//   match=^COMMIT; nth=3; action=error; sqlstate=40001; message=could not serialize access
// Throws config::ConfigError naming the line.
[[nodiscard]] std::vector<RuleSpec> readFaultFile(const std::string& path);
// One `key=value` setting into `spec` (shared by the file reader and the Python module).
void applySetting(RuleSpec& spec, std::string_view key, std::string_view value);

}  // namespace pgwire_proxy::faults
