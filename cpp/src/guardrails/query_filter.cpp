// Allow and deny lists of regular expressions over query text; pure policy, no I/O.
#include "guardrails/query_filter.h"

#include <fstream>

#include "config/server_config.h"

namespace pgwire_proxy::guardrails {

QueryFilter::QueryFilter(const std::vector<std::string>& denyPatterns, const std::vector<std::string>& allowPatterns,
                         bool ignoreCase, const char* denyName, const char* allowName) {
  for (const auto& p : denyPatterns) compile(deny_, p, ignoreCase, denyName);
  for (const auto& p : allowPatterns) compile(allow_, p, ignoreCase, allowName);
}

QueryFilter::~QueryFilter() {
  for (auto& p : deny_) regfree(&p->compiled);
  for (auto& p : allow_) regfree(&p->compiled);
}

void QueryFilter::compile(std::vector<std::unique_ptr<Pattern>>& into, const std::string& text, bool ignoreCase,
                          const char* list) {
  if (text.empty()) throw config::ConfigError(std::string(list) + ": empty pattern");
  auto pattern = std::make_unique<Pattern>();
  pattern->text = text;
  const int flags = REG_EXTENDED | REG_NOSUB | (ignoreCase ? REG_ICASE : 0);
  if (const int rc = regcomp(&pattern->compiled, text.c_str(), flags); rc != 0) {
    char buffer[256];
    regerror(rc, &pattern->compiled, buffer, sizeof buffer);
    regfree(&pattern->compiled);
    std::string message = std::string(list) + ": invalid pattern \"" + text + "\" (a POSIX extended regular expression): " + buffer;
    if (text.starts_with("(?")) {
      message += "; inline flags such as (?i) are Perl/Python syntax, not POSIX: use the ignore-case option instead";
    }
    throw config::ConfigError(message);
  }
  into.push_back(std::move(pattern));
}

bool QueryFilter::matches(const Pattern& pattern, std::string_view sql) {
  // REG_STARTEND bounds the search by the view, so no copy is needed to add a terminator.
  regmatch_t range[1];
  range[0].rm_so = 0;
  range[0].rm_eo = static_cast<regoff_t>(sql.size());
  return regexec(&pattern.compiled, sql.data(), 1, range, REG_STARTEND) == 0;
}

std::optional<FilterVerdict> QueryFilter::check(std::string_view sql) const {
  for (const auto& p : deny_) {
    if (matches(*p, sql)) {
      return FilterVerdict{"query refused by pgwire-proxy: it matches the deny pattern \"" + p->text + "\"",
                           "deny:" + p->text};
    }
  }
  if (allow_.empty()) return std::nullopt;
  for (const auto& p : allow_) {
    if (matches(*p, sql)) return std::nullopt;
  }
  return FilterVerdict{"query refused by pgwire-proxy: it matches none of the allow patterns", "allow"};
}

std::vector<std::string> readPatternFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw config::ConfigError("cannot read pattern file \"" + path + "\"");
  std::vector<std::string> patterns;
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
    std::size_t start = 0;
    while (start < line.size() && (line[start] == ' ' || line[start] == '\t')) ++start;
    if (start == line.size() || line[start] == '#') continue;
    patterns.push_back(line.substr(start));
  }
  return patterns;
}

}  // namespace pgwire_proxy::guardrails
