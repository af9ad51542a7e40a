// The relay's decision core without sockets: recorded psql-, psycopg 3-, asyncpg- and JDBC-shaped
// conversations fed whole, split at every byte and in random chunks must give the same output.
#include <boost/test/unit_test.hpp>

#include <random>

#include "config/server_config.h"
#include "guardrails/guardrail_set.h"
#include "observability/session_observer.h"
#include "protocol/frame.h"
#include "session/relay.h"
#include "test_support.h"

using namespace pgwire_proxy;
using test_support::cstring;
using test_support::int16;
using test_support::int32;
using test_support::message;

namespace {

// Collects what the relay sends where.
struct Recorder final : session::RelayHost {
  std::string client;
  std::string upstream;
  int cancels = 0;
  bool cancellable = false;
  void toClient(std::span<const char> bytes) override { client.append(bytes.data(), bytes.size()); }
  void toUpstream(std::span<const char> bytes) override { upstream.append(bytes.data(), bytes.size()); }
  void cancelUpstream() override { ++cancels; }
  void setCancellable(bool value) override { cancellable = value; }
  void upstreamParameter(std::string_view name, std::string_view value) override {
    parameters.append(name).append("=").append(value).append(";");
  }
  std::string parameters;  // each ParameterStatus the relay reported, "name=value;"
};

// One exchange: the client's bytes, then the upstream's answer to them.
struct Exchange {
  std::string client;
  std::string upstream;
};

// The query records, one line each: text, tag, SQLSTATE, rows.
struct RecordLog final : observability::SessionObserver {
  std::vector<std::string> lines;
  void queryFinished(const observability::QueryRecord& record) override {
    lines.push_back(record.sql + "|" + record.commandTag + "|" + record.sqlstate + "|" + std::to_string(record.rows));
  }
};

struct Outcome {
  std::string client;
  std::string upstream;
  int cancels = 0;
  std::vector<std::string> records;
  std::string parameters;
  bool operator==(const Outcome&) const = default;
};

std::ostream& operator<<(std::ostream& out, const Outcome& o) {
  return out << "client " << o.client.size() << " bytes, upstream " << o.upstream.size() << " bytes, cancels "
             << o.cancels << ", records " << o.records.size();
}

// What a shell's relay is configured with beyond the defaults.
struct Limits {
  std::uint64_t maxRows = 0;
  bool fullProtocol = false;  // COPY relayed both ways
  std::uint64_t maxCopyInBytes = 0;
};

constexpr std::uint32_t kMaxClientMessage = 1 << 24;

// A minimal shell around the relay, as the session is: client bytes are framed and offered while the
// relay takes them (a COPY FROM STDIN's CopyData as runs first); upstream bytes are buffered and
// offered, the unconsumed rest kept.
class Shell {
 public:
  explicit Shell(std::uint64_t maxRows = 0, bool extended = true, std::vector<std::string> deny = {})
      : Shell(Limits{.maxRows = maxRows}, extended, std::move(deny)) {}
  explicit Shell(const Limits& limits, bool extended = true, std::vector<std::string> deny = {})
      : config_(makeConfig(limits.maxRows, std::move(deny))),
        rails_(std::make_shared<const guardrails::GuardrailSet>(config_)),
        relay_(session::RelayContext{1, observer_, rails_, nullptr, extended, config::Milliseconds(0), "u", "d", "a",
                                     limits.fullProtocol, limits.maxCopyInBytes},
               recorder_) {}

  void fromClient(std::string_view bytes) {
    clientIn_.append(bytes);
    for (;;) {
      if (!relay_.acceptingClient()) return;
      if (const std::size_t run = relay_.admitCopyInRun(std::span<const char>(clientIn_), kMaxClientMessage)) {
        clientIn_.erase(0, run);
        continue;
      }
      const auto frame = protocol::decodeFrame(std::span<const char>(clientIn_), kMaxClientMessage);
      if (!frame) return;
      if (!relay_.onClientFrame(*frame)) return;
      clientIn_.erase(0, frame->bytes.size());
    }
  }

  void fromUpstream(std::string_view bytes) {
    upstreamIn_.append(bytes);
    const std::size_t consumed = relay_.onUpstreamBytes(std::span<const char>(upstreamIn_));
    upstreamIn_.erase(0, consumed);
    fromClient({});  // a batch that ended lets the next buffered messages in
  }

  [[nodiscard]] Outcome outcome() const {
    return {recorder_.client, recorder_.upstream, recorder_.cancels, observer_.lines, recorder_.parameters};
  }
  [[nodiscard]] const session::Relay& relay() const { return relay_; }

 private:
  static config::ServerConfig makeConfig(std::uint64_t maxRows, std::vector<std::string> deny) {
    config::ServerConfig config;
    config.maxRows = maxRows;
    config.maxBytes = 0;
    config.denyPatterns = std::move(deny);
    return config;
  }
  config::ServerConfig config_;
  RecordLog observer_;
  guardrails::GuardrailHolder rails_;
  Recorder recorder_;
  session::Relay relay_;
  std::string clientIn_;
  std::string upstreamIn_;
};

// Feeds the exchanges, each side cut by `cut` into pieces (a piece list of sizes, repeated).
Outcome run(const std::vector<Exchange>& exchanges, const std::function<std::vector<std::size_t>(std::size_t)>& cut,
            const Limits& limits = {}) {
  Shell shell(limits);
  auto feed = [&cut](const std::string& bytes, const std::function<void(std::string_view)>& into) {
    std::size_t at = 0;
    for (const std::size_t piece : cut(bytes.size())) {
      into(std::string_view(bytes).substr(at, piece));
      at += piece;
    }
    if (at < bytes.size()) into(std::string_view(bytes).substr(at));
  };
  for (const auto& exchange : exchanges) {
    feed(exchange.client, [&shell](std::string_view b) { shell.fromClient(b); });
    feed(exchange.upstream, [&shell](std::string_view b) { shell.fromUpstream(b); });
  }
  BOOST_TEST(!shell.relay().busy());
  return shell.outcome();
}

std::vector<std::size_t> whole(std::size_t size) { return {size}; }

// Every split point of every exchange, one at a time, and random chunkings, all equal the whole run.
void checkSplits(const std::vector<Exchange>& exchanges, const Limits& limits = {}) {
  const Outcome expected = run(exchanges, whole, limits);
  std::size_t longest = 0;
  for (const auto& e : exchanges) longest = std::max({longest, e.client.size(), e.upstream.size()});
  for (std::size_t split = 1; split < longest; ++split) {
    const Outcome got = run(exchanges, [split](std::size_t size) {
      return split < size ? std::vector<std::size_t>{split} : std::vector<std::size_t>{size};
    }, limits);
    BOOST_TEST_REQUIRE(got == expected, "split at byte " << split);
  }
  std::mt19937 random(20261202);
  for (int round = 0; round < 200; ++round) {
    const Outcome got = run(exchanges, [&random](std::size_t size) {
      std::vector<std::size_t> pieces;
      std::size_t total = 0;
      while (total < size) {
        const std::size_t piece = std::min<std::size_t>(size - total, 1 + random() % 7);
        pieces.push_back(piece);
        total += piece;
      }
      return pieces;
    }, limits);
    BOOST_TEST_REQUIRE(got == expected, "random chunking, round " << round);
  }
  // Byte by byte.
  BOOST_TEST(run(exchanges, [](std::size_t size) { return std::vector<std::size_t>(size, 1); }, limits) == expected);
}

// ---- messages ------------------------------------------------------------------------------------

std::string query(const std::string& sql) { return message('Q', cstring(sql)); }
std::string parse(const std::string& name, const std::string& sql) { return message('P', cstring(name) + cstring(sql) + int16(0)); }
std::string bind(const std::string& portal, const std::string& statement, const std::vector<std::string>& params) {
  std::string body = cstring(portal) + cstring(statement) + int16(0) + int16(static_cast<std::int16_t>(params.size()));
  for (const auto& p : params) body += int32(static_cast<std::int32_t>(p.size())) + p;
  return message('B', body + int16(0));
}
std::string describe(char kind, const std::string& name) { return message('D', std::string(1, kind) + cstring(name)); }
std::string execute(const std::string& portal, std::int32_t rows = 0) { return message('E', cstring(portal) + int32(rows)); }
std::string closeMessage(char kind, const std::string& name) { return message('C', std::string(1, kind) + cstring(name)); }
std::string syncMessage() { return message('S', ""); }
std::string flush() { return message('H', ""); }

std::string rowDescription(const std::string& column) {
  return message('T', int16(1) + cstring(column) + int32(0) + int16(0) + int32(25) + int16(-1) + int32(-1) + int16(0));
}
std::string dataRow(const std::string& value) { return message('D', int16(1) + int32(static_cast<std::int32_t>(value.size())) + value); }
std::string commandComplete(const std::string& tag) { return message('C', cstring(tag)); }
std::string ready(char status = 'I') { return message('Z', std::string(1, status)); }
std::string parseComplete() { return message('1', ""); }
std::string bindComplete() { return message('2', ""); }
std::string closeComplete() { return message('3', ""); }
std::string parameterDescription() { return message('t', int16(1) + int32(25)); }
std::string error(const std::string& code, const std::string& text) {
  return message('E', "SERROR" + std::string(1, '\0') + "VERROR" + std::string(1, '\0') + "C" + code + '\0' + "M" +
                          text + '\0' + '\0');
}
std::string parameterStatus(const std::string& name, const std::string& value) {
  return message('S', cstring(name) + cstring(value));
}
std::string notification() { return message('A', int32(4242) + cstring("channel") + cstring("payload")); }
std::string notice(const std::string& text) {
  return message('N', "SNOTICE" + std::string(1, '\0') + "C00000" + std::string(1, '\0') + "M" + text + '\0' + '\0');
}

std::string rows(int count, const std::string& prefix = "row") {
  std::string out;
  for (int i = 0; i < count; ++i) out += dataRow(prefix + std::to_string(i));
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(relay)

BOOST_AUTO_TEST_CASE(psql_shaped_simple_queries_pass_through_in_every_split) {
  const std::vector<Exchange> psql = {
      {query("select 1"), rowDescription("?column?") + dataRow("1") + commandComplete("SELECT 1") + ready()},
      {query("begin"), commandComplete("BEGIN") + ready('T')},
      {query("select 1/0"), error("22012", "division by zero") + ready('E')},
      {query("rollback"), commandComplete("ROLLBACK") + ready()},
      {query("select a; select b"), rowDescription("a") + rows(3) + commandComplete("SELECT 3") + notice("hi") +
                                        rowDescription("b") + rows(2, "b") + commandComplete("SELECT 2") + ready()},
      {query(""), message('I', "") + ready()},
  };
  const Outcome outcome = run(psql, whole);
  std::string allQueries;
  std::string allReplies;
  for (const auto& e : psql) {
    allQueries += e.client;
    allReplies += e.upstream;
  }
  BOOST_TEST(outcome.upstream == allQueries);  // the same bytes up
  BOOST_TEST(outcome.client == allReplies);    // and down
  checkSplits(psql);
}

BOOST_AUTO_TEST_CASE(psycopg_shaped_pipelines_pass_through_in_every_split) {
  // psycopg 3's defaults: Parse/Bind/Describe/Execute/Sync per statement, BEGIN through it too, and
  // a pipeline with an error in the middle (the rest up to the Sync is ignored upstream).
  const std::string statement = parse("", "select $1::int") + bind("", "", {"41"}) + describe('P', "") + execute("") + syncMessage();
  const std::vector<Exchange> psycopg = {
      {parse("", "BEGIN") + bind("", "", {}) + describe('P', "") + execute("") + syncMessage(),
       parseComplete() + bindComplete() + message('n', "") + commandComplete("BEGIN") + ready('T')},
      {statement, parseComplete() + bindComplete() + rowDescription("int4") + dataRow("41") + commandComplete("SELECT 1") +
                      ready('T')},
      {parse("", "select 1/0") + bind("", "", {}) + execute("") + parse("", "select 2") + bind("", "", {}) + execute("") +
           syncMessage(),
       parseComplete() + error("22012", "division by zero") + ready('E')},
      {query("ROLLBACK"), commandComplete("ROLLBACK") + ready()},
  };
  const Outcome outcome = run(psycopg, whole);
  std::string allReplies;
  for (const auto& e : psycopg) allReplies += e.upstream;
  BOOST_TEST(outcome.client == allReplies);
  checkSplits(psycopg);
}

BOOST_AUTO_TEST_CASE(asyncpg_and_jdbc_shaped_named_statements_in_every_split) {
  // asyncpg: a named statement described first, then bound and executed; JDBC: named statements
  // reused, a portal read in pieces (PortalSuspended), and a Close of the statement.
  const std::vector<Exchange> exchanges = {
      {parse("__asyncpg_stmt_1__", "select $1::text") + describe('S', "__asyncpg_stmt_1__") + syncMessage(),
       parseComplete() + parameterDescription() + rowDescription("text") + ready()},
      {bind("", "__asyncpg_stmt_1__", {std::string(3000, 'x')}) + execute("") + syncMessage(),
       bindComplete() + dataRow(std::string(3000, 'x')) + commandComplete("SELECT 1") + ready()},
      {parse("S_1", "select generate_series(1, 5)") + bind("C_1", "S_1", {}) + describe('P', "C_1") + execute("C_1", 2) +
           flush(),
       parseComplete() + bindComplete() + rowDescription("g") + rows(2) + message('s', "")},
      {execute("C_1", 0) + closeMessage('P', "C_1") + closeMessage('S', "S_1") + syncMessage(),
       rows(3, "r") + commandComplete("SELECT 3") + closeComplete() + closeComplete() + ready()},
  };
  checkSplits(exchanges);
}

BOOST_AUTO_TEST_CASE(a_close_then_a_query_without_sync_is_served_in_every_split) {
  // pg-cursor after an error: Close of its portal with a Flush, then a simple Query (no Sync). The
  // proxy ends the batch with its own Sync, whose ReadyForQuery the client never sees.
  const std::vector<Exchange> exchanges = {
      {closeMessage('P', "cursor") + flush(), closeComplete()},
      {query("select 'after'"), ready() /* the proxy's Sync */},
      {"", rowDescription("?column?") + dataRow("after") + commandComplete("SELECT 1") + ready()},
  };
  const Outcome outcome = run(exchanges, whole);
  BOOST_TEST(outcome.upstream == closeMessage('P', "cursor") + flush() + syncMessage() + query("select 'after'"));
  BOOST_TEST(outcome.client == closeComplete() + rowDescription("?column?") + dataRow("after") +
                                   commandComplete("SELECT 1") + ready());
  checkSplits(exchanges);
}

BOOST_AUTO_TEST_CASE(a_row_limit_breach_stops_rows_cancels_and_reports_once_in_every_split) {
  const std::vector<Exchange> exchanges = {
      {query("select generate_series(1, 5)"),
       rowDescription("g") + rows(5) + commandComplete("SELECT 5") + ready()},
      {parse("", "select generate_series(1, 5)") + bind("", "", {}) + execute("") + syncMessage(),
       parseComplete() + bindComplete() + rows(5) + error("57014", "canceling statement due to user request") +
           ready()},
      {query("select 1"), rowDescription("?column?") + dataRow("1") + commandComplete("SELECT 1") + ready()},
  };
  const Outcome outcome = run(exchanges, whole, {.maxRows = 2});
  BOOST_TEST(outcome.cancels == 2);  // one per breached statement
  // Two rows of each, the proxy's 54000 where the third was, and the upstream's ReadyForQuery.
  const std::string breach = "C54000";
  std::size_t errors = 0;
  for (std::size_t at = outcome.client.find(breach); at != std::string::npos; at = outcome.client.find(breach, at + 1)) {
    ++errors;
  }
  BOOST_TEST(errors == 2U);
  BOOST_TEST(outcome.client.find("57014") == std::string::npos);  // the cancel's own error is the proxy's business
  BOOST_TEST(outcome.client.ends_with(rowDescription("?column?") + dataRow("1") + commandComplete("SELECT 1") + ready()));
  BOOST_TEST(outcome.client.find(dataRow("row2")) == std::string::npos);
  checkSplits(exchanges, {.maxRows = 2});
}

BOOST_AUTO_TEST_CASE(each_parameter_status_is_relayed_and_reported_once_wherever_it_comes_in_every_split) {
  // A SET's report before its CommandComplete, a reload's before a ReadyForQuery, a promotion's
  // between batches, and one inside a statement whose rows the relay is already swallowing (with a
  // notification: both reach the client though the rows around them do not).
  const std::vector<Exchange> exchanges = {
      {query("set timezone = 'Asia/Tokyo'"),
       parameterStatus("TimeZone", "Asia/Tokyo") + commandComplete("SET") + ready()},
      {query("select 1"), rowDescription("?column?") + dataRow("1") + commandComplete("SELECT 1") +
                              parameterStatus("DateStyle", "SQL, DMY") + ready() +
                              parameterStatus("in_hot_standby", "off")},
      {query("select generate_series(1, 5)"),
       rowDescription("g") + rows(3) + parameterStatus("TimeZone", "UTC") + rows(1, "late") + notification() +
           rows(1, "later") +
           error("57014", "canceling statement due to user request") + ready()},
  };
  const Outcome whole_run = run(exchanges, whole, {.maxRows = 2});
  BOOST_TEST(whole_run.parameters == "TimeZone=Asia/Tokyo;DateStyle=SQL, DMY;in_hot_standby=off;TimeZone=UTC;");
  for (const auto& status : {parameterStatus("TimeZone", "Asia/Tokyo"), parameterStatus("DateStyle", "SQL, DMY"),
                             parameterStatus("in_hot_standby", "off"), parameterStatus("TimeZone", "UTC"),
                             notification()}) {
    BOOST_TEST(whole_run.client.find(status) != std::string::npos, "not relayed: " << status.substr(5));  // the client is told as well
  }
  BOOST_TEST(whole_run.client.find(dataRow("late0")) == std::string::npos);
  BOOST_TEST(whole_run.client.find(dataRow("later0")) == std::string::npos);
  checkSplits(exchanges, {.maxRows = 2});
}

BOOST_AUTO_TEST_CASE(a_parameter_status_of_megabytes_streams_on_unread) {
  // Newer servers report search_path; a client may set one of megabytes. Relayed as it came, in
  // pieces, without the session failing and without holding it whole.
  const std::string huge = parameterStatus("search_path", std::string(3 << 20, 's'));
  const std::string replies = huge + commandComplete("SET") + parameterStatus("TimeZone", "UTC") + ready();
  for (const std::size_t piece : {std::size_t{1000}, std::size_t{65536}, replies.size()}) {
    Shell shell;
    shell.fromClient(query("set search_path = '...'"));
    for (std::size_t at = 0; at < replies.size(); at += piece) shell.fromUpstream(replies.substr(at, piece));
    BOOST_TEST(shell.outcome().client == replies);
    BOOST_TEST(shell.outcome().parameters == "TimeZone=UTC;");  // the small one read, the huge one not
    BOOST_TEST(!shell.relay().busy());
  }
}

BOOST_AUTO_TEST_CASE(a_breach_inside_a_block_after_the_statement_ended_fails_the_block) {
  // The cancel came too late: the statement completed inside a block ('T'). The proxy fails the
  // block with a statement of its own and relays the 'E' that follows, never the 'T'.
  const std::vector<Exchange> exchanges = {
      {query("begin"), commandComplete("BEGIN") + ready('T')},
      {query("select generate_series(1, 3)"),
       rowDescription("g") + rows(3) + commandComplete("SELECT 3") + ready('T') +
           error("54000", "pgwire-proxy failed the previous statement") + ready('E')},
  };
  const Outcome outcome = run(exchanges, whole, {.maxRows = 2});
  BOOST_TEST(outcome.client.ends_with(ready('E')));
  BOOST_TEST(outcome.client.find(ready('T') + rowDescription("g")) != std::string::npos);  // the BEGIN's
  BOOST_TEST(outcome.upstream.find("RAISE EXCEPTION") != std::string::npos);
  checkSplits(exchanges, {.maxRows = 2});
}

BOOST_AUTO_TEST_CASE(copy_is_refused_and_the_upstream_left_idle) {
  Shell shell;
  shell.fromClient(query("copy t from stdin"));
  shell.fromUpstream(message('G', std::string(1, '\0') + int16(0)));
  BOOST_TEST(shell.outcome().upstream.ends_with(message('f', cstring("COPY FROM STDIN is not supported by pgwire-proxy"))));
  shell.fromUpstream(error("57014", "COPY from stdin failed") + ready());
  const Outcome outcome = shell.outcome();
  BOOST_TEST(outcome.client.find("C0A000") != std::string::npos);
  BOOST_TEST(outcome.client.ends_with(ready()));
  BOOST_TEST(outcome.client.find("COPY from stdin failed") == std::string::npos);
  BOOST_TEST(!shell.relay().busy());
}

// The CopyData of line `i`, one per row as DBD::Pg, ruby-pg and pg-copy-streams send them.
std::string copyLine(int i) { return message('d', std::to_string(i) + "\tline " + std::to_string(i) + "\n"); }

// A COPY FROM STDIN of `lines` CopyData, then CopyDone, then a query.
std::vector<Exchange> copyFromStdin(int lines) {
  std::string data;
  for (int i = 0; i < lines; ++i) data += copyLine(i);
  return {
      {query("copy t from stdin"), message('G', std::string(1, '\0') + int16(2) + int16(0) + int16(0))},
      {data + message('c', ""), commandComplete("COPY " + std::to_string(lines)) + ready()},
      {query("select 1"), rowDescription("?column?") + dataRow("1") + commandComplete("SELECT 1") + ready()},
  };
}

BOOST_AUTO_TEST_CASE(copy_from_stdin_goes_up_as_sent_in_every_split) {
  const auto exchanges = copyFromStdin(40);
  const Outcome outcome = run(exchanges, whole, {.fullProtocol = true});
  BOOST_TEST(outcome.upstream == exchanges[0].client + exchanges[1].client + exchanges[2].client);
  BOOST_TEST(outcome.client == exchanges[0].upstream + exchanges[1].upstream + exchanges[2].upstream);
  BOOST_TEST(outcome.records.front() == "copy t from stdin|COPY 40||0");
  checkSplits(exchanges, {.fullProtocol = true});
}

BOOST_AUTO_TEST_CASE(copy_from_stdin_over_max_copy_in_bytes_stops_at_the_frame_that_passes_it_in_every_split) {
  auto exchanges = copyFromStdin(40);
  // The limit falls inside the 21st CopyData: twenty go up, then the CopyFail, nothing after it.
  std::size_t twenty = 0;
  for (int i = 0; i < 20; ++i) twenty += copyLine(i).size();
  const std::string copyFail = message('f', cstring("COPY FROM STDIN exceeded the proxy's --max-copy-in-bytes"));
  exchanges[1].upstream = error("57014", "COPY from stdin failed: the proxy's limit") + ready();
  const Limits limits{.fullProtocol = true, .maxCopyInBytes = twenty + 3};
  const Outcome outcome = run(exchanges, whole, limits);
  BOOST_TEST(outcome.upstream == exchanges[0].client + exchanges[1].client.substr(0, twenty) + copyFail + exchanges[2].client);
  BOOST_TEST(outcome.client.find("C54000") != std::string::npos);
  BOOST_TEST(outcome.client.find("57014") == std::string::npos);
  BOOST_TEST(outcome.client.ends_with(ready() + rowDescription("?column?") + dataRow("1") + commandComplete("SELECT 1") + ready()));
  checkSplits(exchanges, limits);
  // Exactly at the limit: all forty go up.
  const auto fits = copyFromStdin(40);
  const std::size_t all = fits[1].client.size() - message('c', "").size();
  BOOST_TEST(run(fits, whole, {.fullProtocol = true, .maxCopyInBytes = all}).upstream ==
             fits[0].client + fits[1].client + fits[2].client);
}

BOOST_AUTO_TEST_CASE(random_upstream_bytes_never_crash_the_relay) {
  std::mt19937 random(7);
  for (int round = 0; round < 2000; ++round) {
    Shell shell(3);
    shell.fromClient(round % 2 == 0 ? query("select 1") : parse("", "select 1") + bind("", "", {}) + execute("") + syncMessage());
    std::string noise;
    const int length = 1 + static_cast<int>(random() % 64);
    for (int i = 0; i < length; ++i) noise.push_back(static_cast<char>(random()));
    try {
      shell.fromUpstream(noise);
    } catch (const session::UpstreamFailure&) {
    } catch (const ProtocolError&) {
    } catch (const ProxyError&) {
    }
  }
}

BOOST_AUTO_TEST_CASE(each_execute_is_recorded_with_the_text_its_statement_and_portal_name) {
  // The unnamed statement re-parsed with the same and with another text; a named one bound to a named
  // and to the unnamed portal; a failed re-Parse leaves the name meaning what it meant; a closed
  // statement and a portal past its transaction's end mean nothing.
  const std::string run1 = bind("", "", {}) + execute("") + syncMessage();
  const std::string answered = bindComplete() + dataRow("x") + commandComplete("SELECT 1");
  const std::vector<Exchange> exchanges = {
      {parse("", "select 1") + run1, parseComplete() + answered + ready()},
      {parse("", "select 1") + run1, parseComplete() + answered + ready()},
      {parse("", "select 2") + run1, parseComplete() + answered + ready()},
      {parse("s1", "select 's1'") + syncMessage(), parseComplete() + ready()},
      {query("begin"), commandComplete("BEGIN") + ready('T')},
      {bind("p", "s1", {}) + execute("p") + bind("", "s1", {}) + execute("") + syncMessage(),
       answered + answered + ready('T')},
      {parse("s1", "selec broken") + syncMessage(), error("42601", "syntax error") + ready('E')},
      {query("rollback"), commandComplete("ROLLBACK") + ready()},
      {bind("", "s1", {}) + execute("") + syncMessage(), answered + ready()},
      {execute("p") + syncMessage(), error("34000", "portal \"p\" does not exist") + ready()},
      {closeMessage('S', "s1") + syncMessage(), closeComplete() + ready()},
      {bind("", "s1", {}) + execute("") + syncMessage(), error("26000", "prepared statement \"s1\" does not exist") + ready()},
  };
  const Outcome outcome = run(exchanges, whole);
  const std::vector<std::string> expected = {
      "select 1|SELECT 1||1", "select 1|SELECT 1||1", "select 2|SELECT 1||1",
      "begin|BEGIN||0",
      "select 's1'|SELECT 1||1", "select 's1'|SELECT 1||1",
      "selec broken||42601|0",
      "rollback|ROLLBACK||0",
      "select 's1'|SELECT 1||1",
      "||34000|0",  // the portal ended with its transaction
      "||26000|0",  // the statement was closed
  };
  BOOST_TEST(outcome.records == expected, boost::test_tools::per_element());
  checkSplits(exchanges);
}

BOOST_AUTO_TEST_CASE(a_long_pipeline_answered_while_it_is_sent_keeps_its_order) {
  // More messages than the pending queue keeps before it drops its answered front.
  Shell shell;
  shell.fromClient(parse("s", "select $1::int"));
  std::vector<std::string> expected;
  std::string replies = parseComplete();
  for (int i = 0; i < 300; ++i) {
    shell.fromClient(bind("", "s", {std::to_string(i)}) + execute(""));
    if (i % 3 == 2) {  // the upstream answers a few behind
      shell.fromUpstream(replies);
      replies.clear();
    }
    replies += bindComplete() + dataRow(std::to_string(i)) + commandComplete("SELECT " + std::to_string(i));
    expected.push_back("select $1::int|SELECT " + std::to_string(i) + "||1");
  }
  shell.fromClient(syncMessage());
  shell.fromUpstream(replies + ready());
  BOOST_TEST(!shell.relay().busy());
  BOOST_TEST(shell.outcome().records == expected, boost::test_tools::per_element());
}

// What went upstream without the relay's own Flushes, and how many of those there were.
std::pair<std::string, int> withoutFlushes(const std::string& upstream) {
  const std::string flushBytes = flush();
  std::string out;
  int flushes = 0;
  for (std::size_t at = 0; at < upstream.size();) {
    const auto frame = protocol::decodeFrame(std::span<const char>(upstream).subspan(at), kMaxClientMessage);
    BOOST_TEST_REQUIRE(frame.has_value());
    const std::string bytes(frame->bytes.data(), frame->bytes.size());
    if (bytes == flushBytes) {
      ++flushes;
    } else {
      out += bytes;
    }
    at += bytes.size();
  }
  return {out, flushes};
}

BOOST_AUTO_TEST_CASE(a_pipeline_sent_faster_than_answered_is_read_only_while_its_backlog_is_bounded) {
  // A client that pipelines tiny messages much faster than the upstream answers must not have each of
  // them waiting in the relay: past kMaxPendingMessages the rest stays in the client's buffer (the
  // kernel's, in the session) until replies come back, and nothing is lost or reordered. Each time the
  // backlog fills, a Flush of the relay's own follows, so the upstream sends what it holds back.
  constexpr std::size_t kCap = session::Relay::kMaxPendingMessages;
  constexpr int kPairs = static_cast<int>(kCap);  // twice the cap in messages
  Shell shell;
  const std::string first = parse("s", "select 1");
  const std::string pair = bind("", "s", {}) + execute("");
  std::string pipeline = first;
  for (int i = 0; i < kPairs; ++i) pipeline += pair;
  shell.fromClient(pipeline + syncMessage());
  BOOST_TEST(!shell.relay().acceptingClient());
  // The Parse and the messages after it up to the bound went up, then a Flush; not one more.
  BOOST_TEST(shell.outcome().upstream ==
             first + pipeline.substr(first.size(), (kCap - 1) / 2 * pair.size()) + bind("", "s", {}) + flush());

  std::vector<std::string> expected;
  std::size_t answered = 0;  // pairs the upstream has answered
  std::size_t mostUnanswered = 0;
  shell.fromUpstream(parseComplete());
  while (answered < static_cast<std::size_t>(kPairs)) {
    const std::size_t forwarded = (withoutFlushes(shell.outcome().upstream).first.size() - first.size()) / pair.size();
    BOOST_TEST_REQUIRE(forwarded > answered, "the relay stalled after " << answered << " pairs");
    mostUnanswered = std::max(mostUnanswered, forwarded - answered);
    std::string replies;
    for (; answered < forwarded; ++answered) {
      replies += bindComplete() + dataRow("1") + commandComplete("SELECT 1");
      expected.push_back("select 1|SELECT 1||1");
    }
    shell.fromUpstream(replies);
  }
  BOOST_TEST(mostUnanswered <= kCap / 2);
  const auto [sent, flushes] = withoutFlushes(shell.outcome().upstream);
  BOOST_TEST(sent == pipeline + syncMessage());
  BOOST_TEST(flushes >= 2);  // the first fill and at least one after replies made room
  shell.fromUpstream(ready());
  BOOST_TEST(!shell.relay().busy());
  BOOST_TEST(shell.outcome().records == expected, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(parses_of_large_texts_are_read_only_while_the_texts_they_keep_are_bounded) {
  // PostgreSQL is done with an unnamed statement's text once the next Parse replaces it; the relay
  // keeps each until its ParseComplete (a record if it fails, the old meaning if it does). Large
  // texts pipelined faster than answered stop at kMaxPendingText, and a Flush asks for the answers.
  constexpr std::size_t kText = 1024 * 1024;
  constexpr std::size_t kMostInFlight = session::Relay::kMaxPendingText / kText;
  constexpr int kParses = static_cast<int>(3 * kMostInFlight);
  Shell shell;
  std::vector<std::string> parses;
  std::string pipeline;
  for (int i = 0; i < kParses; ++i) {
    parses.push_back(parse("", "select " + std::to_string(i) + " -- " + std::string(kText, 'x')));
    pipeline += parses.back();
  }
  shell.fromClient(pipeline + syncMessage());
  BOOST_TEST(!shell.relay().acceptingClient());
  std::size_t answered = 0;
  std::size_t mostUnanswered = 0;
  for (;;) {
    const std::string sent = withoutFlushes(shell.outcome().upstream).first;
    std::size_t forwarded = 0;
    for (std::size_t at = 0; forwarded < parses.size() && at + parses[forwarded].size() <= sent.size(); ++forwarded) {
      at += parses[forwarded].size();
    }
    if (forwarded == answered) break;
    mostUnanswered = std::max(mostUnanswered, forwarded - answered);
    std::string replies;
    for (; answered < forwarded; ++answered) replies += parseComplete();
    shell.fromUpstream(replies);
  }
  BOOST_TEST(answered == parses.size());
  BOOST_TEST(mostUnanswered <= kMostInFlight);
  BOOST_TEST(withoutFlushes(shell.outcome().upstream).first == pipeline + syncMessage());
  BOOST_TEST(withoutFlushes(shell.outcome().upstream).second >= 3);
  shell.fromUpstream(ready());
  BOOST_TEST(!shell.relay().busy());
}

BOOST_AUTO_TEST_CASE(a_denied_parse_behind_pending_messages_fails_the_batch_in_order_in_every_split) {
  // The refusal waits for the replies before it, then the rest of the batch is dropped to its Sync.
  const std::vector<Exchange> exchanges = {
      {parse("", "select 1") + bind("", "", {}) + execute("") + parse("", "select secret") + bind("", "", {}) +
           execute("") + syncMessage(),
       // the first statement's replies, then those of the proxy's failing statement in place of the rest
       parseComplete() + bindComplete() + dataRow("1") + commandComplete("SELECT 1") + parseComplete() +
           bindComplete() + error("54000", "pgwire-proxy failed the previous statement") + ready()},
      {query("select 2"), rowDescription("?column?") + dataRow("2") + commandComplete("SELECT 1") + ready()},
  };
  auto runDenied = [&exchanges](const std::function<std::vector<std::size_t>(std::size_t)>& cut) {
    Shell shell(0, true, {"secret"});
    for (const auto& exchange : exchanges) {
      std::size_t at = 0;
      for (const std::size_t piece : cut(exchange.client.size())) {
        shell.fromClient(std::string_view(exchange.client).substr(at, piece));
        at += piece;
      }
      at = 0;
      for (const std::size_t piece : cut(exchange.upstream.size())) {
        shell.fromUpstream(std::string_view(exchange.upstream).substr(at, piece));
        at += piece;
      }
    }
    BOOST_TEST(!shell.relay().busy());
    return shell.outcome();
  };
  const Outcome outcome = runDenied(whole);
  // Up: the first statement, then the proxy's failing statement and Sync in place of the denied one.
  BOOST_TEST(outcome.upstream.starts_with(parse("", "select 1") + bind("", "", {}) + execute("") + std::string(1, 'P')));
  BOOST_TEST(outcome.upstream.find("RAISE EXCEPTION") != std::string::npos);
  BOOST_TEST(outcome.upstream.find("secret") == std::string::npos);
  BOOST_TEST(outcome.client.find("54000") == std::string::npos);  // the proxy's own statement's error is dropped
  const std::size_t refusal = outcome.client.find("C42501");
  BOOST_TEST(refusal != std::string::npos);
  BOOST_TEST(outcome.client.find(commandComplete("SELECT 1")) < refusal);  // after the replies before it
  BOOST_TEST(outcome.client.ends_with(dataRow("2") + commandComplete("SELECT 1") + ready()));
  for (std::size_t split = 1; split < 80; ++split) {
    const Outcome got = runDenied([split](std::size_t size) {
      std::vector<std::size_t> pieces(size / split, split);
      if (size % split != 0) pieces.push_back(size % split);
      return pieces;
    });
    BOOST_TEST_REQUIRE(got == outcome, "split at byte " << split);
  }
}

BOOST_AUTO_TEST_SUITE_END()
