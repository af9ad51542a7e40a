// Fault rules: matching, nth/every counting (global and per session), seeded draws, the rules file.
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>

#include "config/server_config.h"
#include "faults/fault_rules.h"

using namespace pgwire_proxy::faults;
using pgwire_proxy::config::ConfigError;

namespace {

RuleSpec errorRule(std::string pattern = {}) {
  RuleSpec spec;
  spec.pattern = std::move(pattern);
  spec.sqlstate = "40001";
  spec.message = "could not serialize access";
  return spec;
}

// '.' for a query the rule lets through, 'F' for one it fires on.
std::string run(Rule& rule, std::string_view sql, int times, std::uint64_t& sessionMatches,
                const QueryContext& who = {}) {
  std::string out;
  for (int i = 0; i < times; ++i) out += rule.fires(sql, who, sessionMatches) ? 'F' : '.';
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(fault_rules)

BOOST_AUTO_TEST_CASE(pattern_and_session_filters) {
  RuleSpec spec = errorRule("^commit");
  spec.ignoreCase = true;
  spec.applicationName = "victim";
  Rule rule(1, spec);
  std::uint64_t mine = 0;
  BOOST_TEST(!rule.fires("COMMIT", {"u", "d", "bystander"}, mine));
  BOOST_TEST(!rule.fires("select 1", {"u", "d", "victim"}, mine));
  BOOST_TEST(rule.fires("COMMIT", {"u", "d", "victim"}, mine));
  BOOST_TEST(rule.matches() == 1U);  // only queries that passed every filter count
  BOOST_TEST(rule.hits() == 1U);
}

BOOST_AUTO_TEST_CASE(nth_and_every_count_globally_or_per_session) {
  RuleSpec nth = errorRule();
  nth.nth = 3;
  Rule global(1, nth);
  std::uint64_t a = 0;
  std::uint64_t b = 0;
  const std::string first = run(global, "x", 2, a);  // session a, then session b
  BOOST_TEST(first + run(global, "x", 3, b) == "..F..");
  nth.perSession = true;
  Rule perSession(2, nth);
  a = b = 0;
  BOOST_TEST(run(perSession, "x", 4, a) == "..F.");
  BOOST_TEST(run(perSession, "x", 4, b) == "..F.");
  RuleSpec every = errorRule();
  every.every = 2;
  Rule everySecond(3, every);
  BOOST_TEST(run(everySecond, "x", 6, a) == ".F.F.F");
}

BOOST_AUTO_TEST_CASE(seeded_probability_repeats_its_sequence) {
  RuleSpec spec = errorRule();
  spec.probability = 0.5;
  spec.seed = 42;
  std::uint64_t s = 0;
  Rule first(1, spec);
  Rule again(2, spec);
  const std::string a = run(first, "x", 64, s);
  BOOST_TEST(a == run(again, "x", 64, s));
  BOOST_TEST(a.find('F') != std::string::npos);
  BOOST_TEST(a.find('.') != std::string::npos);
  spec.seed = 43;
  Rule other(3, spec);
  BOOST_TEST(a != run(other, "x", 64, s));
  BOOST_TEST(first.matches() == 64U);
  BOOST_TEST(first.hits() == static_cast<std::uint64_t>(std::count(a.begin(), a.end(), 'F')));
}

BOOST_AUTO_TEST_CASE(bad_rules_are_refused) {
  auto refused = [](RuleSpec spec) {
    try {
      Rule rule(1, std::move(spec));
    } catch (const ConfigError&) {
      return true;
    }
    return false;
  };
  RuleSpec spec = errorRule("(");
  BOOST_TEST(refused(spec));
  spec = errorRule();
  spec.sqlstate = "4000";
  BOOST_TEST(refused(spec));
  spec = errorRule();
  spec.message.clear();
  BOOST_TEST(refused(spec));
  spec = errorRule();
  spec.nth = 2;
  spec.every = 3;
  BOOST_TEST(refused(spec));
  spec = errorRule();
  spec.action = Action::kDelay;
  BOOST_TEST(refused(spec));  // no duration
  spec.delay = std::chrono::milliseconds(10);
  BOOST_TEST(!refused(spec));
  spec = errorRule();
  spec.action = Action::kDrop;
  spec.when = When::kAfter;
  BOOST_TEST(refused(spec));
}

BOOST_AUTO_TEST_CASE(rules_file_lines_and_errors) {
  const std::string path = "/tmp/pgwire-proxy-faults-test-" + std::to_string(::getpid()) + ".rules";
  {
    std::ofstream out(path);
    out << "# a comment\n\n"
           "  match=^commit ; every=3; action=error; sqlstate=40001; message=could not serialize access  \n"
           "match=from reports; action=delay; when=first_row; delay=5s\n";
  }
  const auto specs = readFaultFile(path);
  BOOST_REQUIRE_EQUAL(specs.size(), 2U);
  BOOST_TEST(specs[0].pattern == "^commit");
  BOOST_TEST(specs[0].every == 3U);
  BOOST_TEST(specs[0].message == "could not serialize access");
  BOOST_TEST(specs[1].delay.count() == 5000);
  BOOST_TEST(whenName(specs[1].when) == "first_row");
  {
    std::ofstream out(path);
    out << "match=x; action=error; message=ok\nmatch=y; action=explode\n";
  }
  BOOST_CHECK_EXCEPTION(readFaultFile(path), ConfigError, [&](const ConfigError& error) {
    return std::string(error.what()).find(path + ":2: action: invalid value \"explode\"") != std::string::npos;
  });
  std::remove(path.c_str());
  BOOST_CHECK_THROW(readFaultFile(path), ConfigError);  // missing
}

BOOST_AUTO_TEST_CASE(registry_versions_and_replace) {
  FaultRegistry registry;
  const auto v0 = registry.version();
  const auto id = registry.add(errorRule("a"));
  BOOST_TEST(registry.version() > v0);
  BOOST_TEST(registry.rules().size() == 1U);
  BOOST_TEST(registry.remove(id));
  BOOST_TEST(!registry.remove(id));
  RuleSpec bad = errorRule();
  bad.message.clear();
  registry.add(errorRule("b"));
  BOOST_CHECK_THROW(registry.replace({errorRule("c"), bad}), ConfigError);
  BOOST_TEST(registry.rules().size() == 1U);  // a bad set changes nothing
  BOOST_TEST(registry.rules()[0]->spec().pattern == "b");
  registry.replace({errorRule("c"), errorRule("d")});
  BOOST_TEST(registry.rules().size() == 2U);
  registry.clear();
  BOOST_TEST(registry.rules().empty());
}

BOOST_AUTO_TEST_SUITE_END()
