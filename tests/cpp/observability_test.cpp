// The in-process query capture (StatsCollector): a ring bounded in records and in the bytes its
// texts hold, oldest first, the newest always kept.
#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

#include "observability/stats.h"

using pgwire_proxy::observability::QueryRecord;
using pgwire_proxy::observability::StatsCollector;

namespace {

QueryRecord record(std::string sql) {
  QueryRecord r;
  r.sql = std::move(sql);
  return r;
}

std::vector<std::string> texts(const std::vector<QueryRecord>& records) {
  std::vector<std::string> out;
  for (const auto& r : records) out.push_back(r.sql);
  return out;
}

std::string big(char c, std::size_t n) { return std::string(n, c); }

}  // namespace

BOOST_AUTO_TEST_SUITE(query_capture)

BOOST_AUTO_TEST_CASE(count_bound_keeps_the_newest_in_order_across_wraps) {
  StatsCollector stats(3, 0);
  for (int i = 0; i < 10; ++i) stats.queryFinished(record("select " + std::to_string(i)));
  BOOST_TEST(texts(stats.queries()) == (std::vector<std::string>{"select 7", "select 8", "select 9"}),
             boost::test_tools::per_element());
  BOOST_TEST(stats.captureSequence() == 10u);
  const auto since = stats.queriesSince(8);  // what captureSequence() said after "select 7"
  BOOST_TEST(texts(since) == (std::vector<std::string>{"select 8", "select 9"}), boost::test_tools::per_element());
  BOOST_TEST(stats.queriesSince(2).size() == 3u);  // older than the ring holds: what is kept
}

BOOST_AUTO_TEST_CASE(zero_capacity_keeps_nothing_and_counts_nothing) {
  StatsCollector stats(0, 0);
  stats.queryFinished(record(big('a', 1000)));
  BOOST_TEST(stats.queries().empty());
  BOOST_TEST(stats.capturedBytes() == 0u);
}

BOOST_AUTO_TEST_CASE(byte_bound_drops_the_oldest_and_keeps_the_newest_whole) {
  StatsCollector stats(100, 10'000);
  for (char c = 'a'; c < 'a' + 10; ++c) stats.queryFinished(record(big(c, 3000)));
  const auto kept = stats.queries();
  BOOST_TEST_REQUIRE(kept.size() == 3u);  // 3 x 3000 bytes fit in 10'000, 4 do not
  BOOST_TEST(kept[0].sql == big('h', 3000));
  BOOST_TEST(kept[2].sql == big('j', 3000));
  BOOST_TEST(stats.capturedBytes() >= 9000u);
  BOOST_TEST(stats.capturedBytes() <= 10'000u);

  stats.queryFinished(record(big('z', 50'000)));  // larger than the bound: kept alone
  BOOST_TEST(texts(stats.queries()) == (std::vector<std::string>{big('z', 50'000)}), boost::test_tools::per_element());
  BOOST_TEST(stats.capturedBytes() >= 50'000u);
  BOOST_TEST(stats.queriesSince(stats.captureSequence() - 5).size() == 1u);

  stats.queryFinished(record("select 1"));  // short: no storage of its own, and the big one goes
  BOOST_TEST(texts(stats.queries()) == (std::vector<std::string>{"select 1"}), boost::test_tools::per_element());
  BOOST_TEST(stats.capturedBytes() == 0u);
}

BOOST_AUTO_TEST_CASE(byte_drops_before_the_ring_fills_then_wraps_in_order) {
  StatsCollector stats(4, 5000);
  std::vector<std::string> sent;
  for (int i = 0; i < 12; ++i) {
    // Alternating long and short texts: some records go by bytes, others by count.
    sent.push_back(i % 3 == 0 ? std::string(2000, static_cast<char>('a' + i)) : "select " + std::to_string(i));
    stats.queryFinished(record(sent.back()));
    const auto kept = texts(stats.queries());
    BOOST_TEST_REQUIRE(!kept.empty());
    BOOST_TEST_REQUIRE(kept.size() <= 4u);
    BOOST_TEST(kept == std::vector<std::string>(sent.end() - static_cast<std::ptrdiff_t>(kept.size()), sent.end()),
               boost::test_tools::per_element());
    BOOST_TEST(stats.capturedBytes() <= 5000u);
  }
}

BOOST_AUTO_TEST_CASE(clear_forgets_records_and_bytes_and_the_ring_refills) {
  StatsCollector stats(3, 0);
  for (int i = 0; i < 5; ++i) stats.queryFinished(record(big('q', 1000)));
  stats.clearQueries();
  BOOST_TEST(stats.queries().empty());
  BOOST_TEST(stats.capturedBytes() == 0u);
  BOOST_TEST(stats.queriesSince(0).empty());
  stats.queryFinished(record("after"));
  BOOST_TEST(texts(stats.queries()) == (std::vector<std::string>{"after"}), boost::test_tools::per_element());
  BOOST_TEST(stats.captureSequence() == 6u);
}

BOOST_AUTO_TEST_SUITE_END()
