// The guardrail policies as pure units: result budgets, pattern lists, pattern files.
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "config/server_config.h"
#include "guardrails/query_filter.h"
#include "guardrails/result_budget.h"

using namespace pgwire_proxy::guardrails;
using pgwire_proxy::config::ConfigError;

BOOST_AUTO_TEST_SUITE(result_budget)

BOOST_AUTO_TEST_CASE(rows_at_below_and_above_the_limit) {
  ResultBudget budget(3, 0);
  BOOST_TEST(!budget.admitRow(10));
  BOOST_TEST(!budget.admitRow(10));
  BOOST_TEST(!budget.admitRow(10));  // exactly the limit passes
  const auto breach = budget.admitRow(10);
  BOOST_REQUIRE(breach);
  BOOST_TEST((breach->kind == Breach::Kind::kRows));
  BOOST_TEST(breach->limit == 3U);
  BOOST_TEST(breach->message().find("3 rows") != std::string::npos);
  BOOST_TEST(budget.rows() == 3U);
}

BOOST_AUTO_TEST_CASE(bytes_at_below_and_above_the_limit) {
  ResultBudget budget(0, 100);
  BOOST_TEST(!budget.admitRow(60));
  BOOST_TEST(!budget.admitRow(40));  // exactly 100 bytes pass
  const auto breach = budget.admitRow(1);
  BOOST_REQUIRE(breach);
  BOOST_TEST((breach->kind == Breach::Kind::kBytes));
  BOOST_TEST(breach->limitName() == "max-bytes");
}

BOOST_AUTO_TEST_CASE(each_statement_starts_over) {
  ResultBudget budget(2, 0);
  BOOST_TEST(!budget.admitRow(1));
  BOOST_TEST(!budget.admitRow(1));
  budget.endStatement();
  BOOST_TEST(!budget.admitRow(1));
  BOOST_TEST(!budget.admitRow(1));
  BOOST_TEST(budget.admitRow(1).has_value());
}

BOOST_AUTO_TEST_CASE(zero_turns_limits_off) {
  ResultBudget budget(0, 0);
  for (int i = 0; i < 100000; ++i) BOOST_REQUIRE(!budget.admitRow(1 << 20));
}

BOOST_AUTO_TEST_CASE(byte_counts_read_like_postgres_units) {
  BOOST_TEST(formatBytes(100ULL * 1024 * 1024) == "100MB");
  BOOST_TEST(formatBytes(1536) == "1536B");
  BOOST_TEST(formatBytes(3 * 1024) == "3kB");
  BOOST_TEST(formatBytes(17) == "17B");
  BOOST_TEST(formatBytes(0) == "0B");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(query_filter)

BOOST_AUTO_TEST_CASE(no_patterns_allow_everything) {
  QueryFilter filter({}, {}, false);
  BOOST_TEST(filter.empty());
  BOOST_TEST(!filter.check("drop table x"));
}

BOOST_AUTO_TEST_CASE(deny_names_the_rule) {
  QueryFilter filter({"^[[:space:]]*drop[[:space:]]", "pg_sleep"}, {}, false);
  const auto verdict = filter.check("  drop table users");
  BOOST_REQUIRE(verdict);
  BOOST_TEST(verdict->message.find("^[[:space:]]*drop[[:space:]]") != std::string::npos);
  BOOST_TEST(verdict->rule == "deny:^[[:space:]]*drop[[:space:]]");
  BOOST_TEST(filter.check("select pg_sleep(1)").has_value());
  BOOST_TEST(!filter.check("select 1 -- dropped"));
  BOOST_TEST(!filter.check("DROP TABLE users"), "case-sensitive unless asked");
}

BOOST_AUTO_TEST_CASE(case_insensitive_option) {
  QueryFilter filter({"drop table"}, {}, true);
  BOOST_TEST(filter.check("DROP TABLE users").has_value());
}

BOOST_AUTO_TEST_CASE(allow_list_requires_a_match_and_deny_wins) {
  QueryFilter filter({"secret"}, {"^select ", "^show "}, false);
  BOOST_TEST(!filter.check("select 1"));
  BOOST_TEST(!filter.check("show search_path"));
  const auto refused = filter.check("delete from t");
  BOOST_REQUIRE(refused);
  BOOST_TEST(refused->rule == "allow");
  BOOST_TEST(filter.check("select secret from t").has_value());
}

BOOST_AUTO_TEST_CASE(long_queries_do_not_blow_the_stack) {
  QueryFilter filter({"(a|b)*c"}, {}, false);
  const std::string query(4 * 1024 * 1024, 'a');
  BOOST_TEST(!filter.check(query));
}

BOOST_AUTO_TEST_CASE(bad_patterns_fail_with_the_pattern_named) {
  for (const char* bad : {"drop(", "[unclosed", "a{2,1}"}) {
    try {
      QueryFilter filter({bad}, {}, false);
      BOOST_FAIL("accepted " << bad);
    } catch (const ConfigError& error) {
      BOOST_TEST(std::string(error.what()).find(bad) != std::string::npos);
    }
  }
  BOOST_CHECK_THROW(QueryFilter({}, {""}, false), ConfigError);
}

BOOST_AUTO_TEST_CASE(pattern_files_skip_comments_and_blanks) {
  const std::string path = "/tmp/pgwire_proxy_patterns_" + std::to_string(::getpid()) + ".txt";
  {
    std::ofstream out(path);
    out << "# dangerous statements\n\n  ^drop  \n\t# indented comment\ntruncate\r\n";
  }
  const auto patterns = readPatternFile(path);
  std::remove(path.c_str());
  BOOST_REQUIRE_EQUAL(patterns.size(), 2U);
  BOOST_TEST(patterns[0] == "^drop");
  BOOST_TEST(patterns[1] == "truncate");
  BOOST_CHECK_THROW((void)readPatternFile("/nonexistent/patterns.txt"), ConfigError);
}

BOOST_AUTO_TEST_SUITE_END()
