// Allow and deny lists of regular expressions over query text; pure policy, no I/O.
#pragma once

#include <regex.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgwire_proxy::guardrails {

// Why a query was refused: which list and which pattern.
struct FilterVerdict {
  std::string message;  // for the client's ErrorResponse
  std::string rule;     // "deny:<pattern>" or "allow" for logs
};

// POSIX extended regular expressions (regcomp/regexec: no backtracking blow-up, no recursion on long
// queries), searched anywhere in the query text.
class QueryFilter {
 public:
  // Throws config::ConfigError naming the option and the pattern when one does not compile; the
  // options are named `denyName` and `allowName` (a fault rule's pattern is "fault match").
  QueryFilter(const std::vector<std::string>& denyPatterns, const std::vector<std::string>& allowPatterns,
              bool ignoreCase, const char* denyName = "deny", const char* allowName = "allow");
  ~QueryFilter();
  QueryFilter(const QueryFilter&) = delete;
  QueryFilter& operator=(const QueryFilter&) = delete;

  // nullopt when the query may run: it matches no deny pattern and, when allow patterns exist, one of them.
  [[nodiscard]] std::optional<FilterVerdict> check(std::string_view sql) const;
  [[nodiscard]] bool empty() const noexcept { return deny_.empty() && allow_.empty(); }
  // Whether something with no query text to match (a function call) may run: only without allow
  // patterns (an allow list admits nothing it cannot check).
  [[nodiscard]] bool allowsUnmatchable() const noexcept { return allow_.empty(); }

 private:
  struct Pattern {
    std::string text;
    regex_t compiled;
  };
  static void compile(std::vector<std::unique_ptr<Pattern>>& into, const std::string& text, bool ignoreCase,
                      const char* list);
  static bool matches(const Pattern& pattern, std::string_view sql);

  std::vector<std::unique_ptr<Pattern>> deny_;
  std::vector<std::unique_ptr<Pattern>> allow_;
};

// Patterns from a file: one a line; blank lines and lines starting with # are skipped.
// Throws config::ConfigError when the file cannot be read.
[[nodiscard]] std::vector<std::string> readPatternFile(const std::string& path);

}  // namespace pgwire_proxy::guardrails
