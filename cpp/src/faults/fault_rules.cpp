// Fault rules: matching, counting, the seeded draws, the registry and the rules file.
#include "faults/fault_rules.h"

#include <algorithm>
#include <cctype>
#include <fstream>

#include "config/server_config.h"

namespace pgwire_proxy::faults {
namespace {

std::string_view trim(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
  return text;
}

std::string upper(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

bool parseBool(std::string_view key, std::string_view value) {
  if (value == "true" || value == "1" || value == "on" || value == "yes") return true;
  if (value == "false" || value == "0" || value == "off" || value == "no") return false;
  throw config::ConfigError(std::string(key) + ": invalid boolean \"" + std::string(value) + "\"");
}

void validate(const RuleSpec& spec) {
  auto fail = [](const std::string& why) { throw config::ConfigError("fault: " + why); };
  if (spec.probability < 0.0 || spec.probability > 1.0 || spec.probability != spec.probability) {
    fail("probability must be between 0 and 1");
  }
  if (spec.nth > 0 && spec.every > 1) fail("nth and every cannot be combined");
  const bool sqlstateOk = spec.sqlstate.size() == 5 && std::all_of(spec.sqlstate.begin(), spec.sqlstate.end(), [](char c) {
                            return std::isdigit(static_cast<unsigned char>(c)) || std::isupper(static_cast<unsigned char>(c));
                          });
  switch (spec.action) {
    case Action::kError:
      if (!sqlstateOk) fail("sqlstate must be 5 digits or upper-case letters, got \"" + spec.sqlstate + "\"");
      if (spec.message.empty()) fail("an error needs a message");
      if (!spec.severity.empty() && spec.severity != "ERROR" && spec.severity != "FATAL") {
        fail("an error's severity is ERROR or FATAL, got \"" + spec.severity + "\"");
      }
      if (spec.when != When::kBefore && spec.when != When::kAfter) fail("an error happens before or after the query");
      break;
    case Action::kNotice:
      if (!sqlstateOk) fail("sqlstate must be 5 digits or upper-case letters, got \"" + spec.sqlstate + "\"");
      if (spec.message.empty()) fail("a notice needs a message");
      if (!spec.severity.empty() && spec.severity != "NOTICE" && spec.severity != "WARNING" &&
          spec.severity != "INFO" && spec.severity != "LOG" && spec.severity != "DEBUG") {
        fail("a notice's severity is NOTICE, WARNING, INFO, LOG or DEBUG, got \"" + spec.severity + "\"");
      }
      if (spec.when != When::kBefore) fail("a notice is sent before the query");
      break;
    case Action::kDelay:
      if (spec.delay.count() <= 0) fail("a delay needs a duration");
      if (spec.when != When::kBefore && spec.when != When::kFirstRow) fail("a delay holds the query (before) or its results (first_row)");
      break;
    case Action::kDrop:
      if (spec.when != When::kBefore && spec.when != When::kAfterRows && spec.when != When::kMidMessage) {
        fail("a drop happens before the query, after_rows or mid_message");
      }
      break;
  }
}

}  // namespace

std::string_view actionName(Action action) noexcept {
  switch (action) {
    case Action::kError: return "error";
    case Action::kDelay: return "delay";
    case Action::kDrop: return "drop";
    case Action::kNotice: return "notice";
  }
  return "error";
}

std::string_view whenName(When when) noexcept {
  switch (when) {
    case When::kBefore: return "before";
    case When::kAfter: return "after";
    case When::kFirstRow: return "first_row";
    case When::kAfterRows: return "after_rows";
    case When::kMidMessage: return "mid_message";
  }
  return "before";
}

void applySetting(RuleSpec& spec, std::string_view key, std::string_view value) {
  const std::string name(key);
  auto count = [&] { return static_cast<std::uint64_t>(config::parseInteger(value, name, 0, INT64_MAX)); };
  if (key == "match") {
    spec.pattern.assign(value);
  } else if (key == "ignore_case") {
    spec.ignoreCase = parseBool(key, value);
  } else if (key == "user") {
    spec.user.assign(value);
  } else if (key == "database") {
    spec.database.assign(value);
  } else if (key == "application_name") {
    spec.applicationName.assign(value);
  } else if (key == "nth") {
    spec.nth = count();
  } else if (key == "every") {
    spec.every = count();
  } else if (key == "per_session") {
    spec.perSession = parseBool(key, value);
  } else if (key == "probability") {
    try {
      std::size_t used = 0;
      spec.probability = std::stod(std::string(value), &used);
      if (used != value.size()) throw std::invalid_argument("trailing characters");
    } catch (const std::exception&) {
      throw config::ConfigError("probability: invalid number \"" + std::string(value) + "\"");
    }
  } else if (key == "seed") {
    spec.seed = count();
  } else if (key == "action") {
    if (value == "error") spec.action = Action::kError;
    else if (value == "delay") spec.action = Action::kDelay;
    else if (value == "drop") spec.action = Action::kDrop;
    else if (value == "notice") spec.action = Action::kNotice;
    else throw config::ConfigError("action: invalid value \"" + std::string(value) + "\" (error, delay, drop or notice)");
  } else if (key == "when") {
    if (value == "before") spec.when = When::kBefore;
    else if (value == "after") spec.when = When::kAfter;
    else if (value == "first_row") spec.when = When::kFirstRow;
    else if (value == "after_rows") spec.when = When::kAfterRows;
    else if (value == "mid_message") spec.when = When::kMidMessage;
    else throw config::ConfigError("when: invalid value \"" + std::string(value) +
                                   "\" (before, after, first_row, after_rows or mid_message)");
  } else if (key == "sqlstate") {
    spec.sqlstate.assign(value);
  } else if (key == "severity") {
    spec.severity = upper(value);
  } else if (key == "message") {
    spec.message.assign(value);
  } else if (key == "detail") {
    spec.detail.assign(value);
  } else if (key == "hint") {
    spec.hint.assign(value);
  } else if (key == "delay") {
    spec.delay = config::parseDuration(value, "delay");
  } else if (key == "rows") {
    spec.rows = count();
  } else {
    throw config::ConfigError("unknown fault setting \"" + name + "\"");
  }
}

Rule::Rule(std::uint64_t id, RuleSpec spec) : id_(id), spec_(std::move(spec)), random_(spec_.seed) {
  validate(spec_);
  if (!spec_.pattern.empty()) {
    // The error names this option ("fault match: invalid pattern ..."), not the deny list it reuses.
    pattern_ = std::make_unique<guardrails::QueryFilter>(std::vector<std::string>{spec_.pattern},
                                                         std::vector<std::string>{}, spec_.ignoreCase, "fault match");
  }
}

bool Rule::fires(std::string_view sql, const QueryContext& who, std::uint64_t& sessionMatches) {
  if (!spec_.user.empty() && spec_.user != who.user) return false;
  if (!spec_.database.empty() && spec_.database != who.database) return false;
  if (!spec_.applicationName.empty() && spec_.applicationName != who.applicationName) return false;
  if (pattern_ && !pattern_->check(sql)) return false;  // the pattern is a one-entry deny list
  std::lock_guard lock(mutex_);
  const std::uint64_t global = matches_.fetch_add(1, std::memory_order_relaxed) + 1;
  const std::uint64_t count = spec_.perSession ? ++sessionMatches : global;
  if (spec_.nth > 0 && count != spec_.nth) return false;
  if (spec_.every > 1 && count % spec_.every != 0) return false;
  if (spec_.probability < 1.0) {
    std::uniform_real_distribution<double> draw(0.0, 1.0);
    if (!(draw(random_) < spec_.probability)) return false;
  }
  hits_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

std::uint64_t FaultRegistry::add(RuleSpec spec) {
  std::lock_guard lock(mutex_);
  auto rule = std::make_shared<Rule>(nextId_, std::move(spec));
  rules_.push_back(std::move(rule));
  version_.fetch_add(1, std::memory_order_release);
  return nextId_++;
}

bool FaultRegistry::remove(std::uint64_t id) {
  std::lock_guard lock(mutex_);
  const auto it = std::find_if(rules_.begin(), rules_.end(), [id](const auto& r) { return r->id() == id; });
  if (it == rules_.end()) return false;
  rules_.erase(it);
  version_.fetch_add(1, std::memory_order_release);
  return true;
}

void FaultRegistry::clear() {
  std::lock_guard lock(mutex_);
  rules_.clear();
  version_.fetch_add(1, std::memory_order_release);
}

void FaultRegistry::replace(std::vector<RuleSpec> specs) {
  std::vector<std::shared_ptr<Rule>> next;
  std::lock_guard lock(mutex_);
  for (auto& spec : specs) next.push_back(std::make_shared<Rule>(nextId_++, std::move(spec)));  // throws first
  rules_.swap(next);
  version_.fetch_add(1, std::memory_order_release);
}

std::vector<std::shared_ptr<Rule>> FaultRegistry::rules() const {
  std::lock_guard lock(mutex_);
  return rules_;
}

std::vector<RuleSpec> readFaultFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw config::ConfigError("faults: cannot read \"" + path + "\"");
  std::vector<RuleSpec> specs;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    const std::string_view text = trim(line);
    if (text.empty() || text.front() == '#') continue;
    try {
      RuleSpec spec;
      std::string_view rest = text;
      while (!rest.empty()) {
        const std::size_t end = rest.find(';');
        const std::string_view item = trim(rest.substr(0, end));
        rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
        if (item.empty()) continue;
        const std::size_t equals = item.find('=');
        if (equals == std::string_view::npos) throw config::ConfigError("expected key=value, got \"" + std::string(item) + "\"");
        applySetting(spec, trim(item.substr(0, equals)), trim(item.substr(equals + 1)));
      }
      Rule check(0, spec);  // validates now, with the line number
      specs.push_back(std::move(spec));
    } catch (const config::ConfigError& error) {
      throw config::ConfigError("faults: " + path + ":" + std::to_string(number) + ": " + error.what());
    }
  }
  return specs;
}

}  // namespace pgwire_proxy::faults
