// The session against scripted byte streams: a real Server on port 0, a raw client socket, and a
// scripted upstream that speaks just enough of the backend protocol.
#include <boost/test/unit_test.hpp>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config/server_config.h"
#include "observability/log.h"
#include "server/server.h"
#include "session/byte_buffer.h"
#include "session/cpu_quota.h"
#include "session/event_loop.h"
#include "session/query_canceller.h"
#include "session/registry.h"
#include "test_support.h"

using namespace test_support;
using pgwire_proxy::server::Server;

namespace {

struct QuietLogs {
  QuietLogs() { pgwire_proxy::observability::Logger::instance().setLevel(pgwire_proxy::observability::LogLevel::kOff); }
};

pgwire_proxy::config::ServerConfig configFor(const std::string& dsn) {
  pgwire_proxy::config::ServerConfig config;
  config.port = 0;
  config.upstreamDsn = dsn;
  config.startupTimeout = std::chrono::milliseconds(300);
  config.connectTimeout = std::chrono::seconds(5);
  return config;
}

// Reads messages until ReadyForQuery; returns them in order (ReadyForQuery included).
std::vector<std::pair<char, std::string>> untilReady(const Socket& client) {
  std::vector<std::pair<char, std::string>> messages;
  for (;;) {
    auto m = client.receiveMessage();
    BOOST_REQUIRE_MESSAGE(m, "EOF before ReadyForQuery");
    messages.push_back(*m);
    if (m->first == 'Z') return messages;
  }
}

Socket startSession(const Server& server, const std::vector<std::pair<std::string, std::string>>& extra = {}) {
  Socket client = Socket::connectTo(server.port());
  std::vector<std::pair<std::string, std::string>> params = {{"user", "alice"}, {"database", "ignored"},
                                                             {"application_name", "unit"}};
  params.insert(params.end(), extra.begin(), extra.end());
  client.send(startupMessage(params));
  return client;
}

// The first message a rejected startup gets, and that the connection then closes.
std::string fatalSqlstate(const Socket& client) {
  const auto m = client.receiveMessage();
  BOOST_REQUIRE(m);
  BOOST_REQUIRE_EQUAL(m->first, 'E');
  BOOST_TEST(errorField(m->second, 'S') == "FATAL");
  BOOST_TEST(client.waitForEof());
  return errorField(m->second, 'C');
}

// A query's text as the upstream reads it (called on the scripted upstream's thread).
std::string expectQuery(Socket& upstream) {
  const auto m = upstream.receiveMessage();
  SCRIPT_CHECK(m && m->first == 'Q');
  return m->second.substr(0, m->second.size() - 1);
}

void expectMessage(Socket& upstream, char type) {
  const auto m = upstream.receiveMessage();
  SCRIPT_CHECK(m && m->first == type);
}

// The events every epoll set of this process registers `fd` with, read from /proc (fdinfo's "tfd:"
// lines): what the loops asked the kernel for, not what they think they asked.
std::vector<unsigned> epollRegistrations(int fd) {
  std::vector<unsigned> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code error;
    if (std::filesystem::read_symlink(entry.path(), error).string() != "anon_inode:[eventpoll]") continue;
    std::ifstream info("/proc/self/fdinfo/" + entry.path().filename().string());
    for (std::string line; std::getline(info, line);) {
      std::istringstream words(line);
      std::string tag, eventsTag;
      int target = -1;
      unsigned events = 0;
      if (words >> tag >> target >> eventsTag >> std::hex >> events && tag == "tfd:" && target == fd) found.push_back(events);
    }
  }
  return found;
}

// The first of this process's sockets `matches` accepts, or -1.
template <typename Matches>
int findOwnSocket(Matches matches) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code error;
    if (!std::filesystem::read_symlink(entry.path(), error).string().starts_with("socket:")) continue;
    const int fd = std::stoi(entry.path().filename().string());
    if (matches(fd)) return fd;
  }
  return -1;
}

std::uint16_t localPort(int fd) {
  sockaddr_in address{};
  socklen_t length = sizeof address;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0 || address.sin_family != AF_INET) return 0;
  return ntohs(address.sin_port);
}

std::uint16_t peerPort(int fd) {
  sockaddr_in address{};
  socklen_t length = sizeof address;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0 || address.sin_family != AF_INET) return 0;
  return ntohs(address.sin_port);
}

int intOption(int fd, int level, int name) {
  int value = -1;
  socklen_t length = sizeof value;
  return ::getsockopt(fd, level, name, &value, &length) == 0 ? value : -1;
}

}  // namespace

BOOST_FIXTURE_TEST_SUITE(session, QuietLogs)

BOOST_AUTO_TEST_CASE(startup_relays_parameters_and_issues_its_own_key) {
  ScriptedUpstream upstream([](Socket& s) { expectMessage(s, 'X'); });
  Server server(configFor(upstream.dsn()));
  server.start();
  {
    Socket client = startSession(server, {{"DateStyle", "German"}, {"search_path", "a b"}, {"client_encoding", "LATIN1"}});
    const auto messages = untilReady(client);
    BOOST_TEST(messages.front().first == 'R');
    bool sawApplicationName = false;
    for (const auto& [type, body] : messages) {
      if (type == 'S' && body.starts_with(cstring("application_name"))) {
        BOOST_TEST(body == cstring("application_name") + cstring("unit"));
        sawApplicationName = true;
      }
      if (type == 'K') BOOST_TEST(body != int32(4242) + int32(99), "the upstream's key must not reach the client");
    }
    BOOST_TEST(sawApplicationName);
    BOOST_TEST(messages.back().second == "I");
    client.send(message('X', ""));
    BOOST_TEST(client.waitForEof());
  }
  upstream.join();
  BOOST_TEST(upstream.parameter("application_name") == "pgwire-proxy/unit@127.0.0.1");
  BOOST_TEST(upstream.parameter("user") == "tester");
  BOOST_TEST(upstream.parameter("database") == "testdb");
  BOOST_TEST(upstream.parameter("client_encoding") == "LATIN1");
  const std::string options = upstream.parameter("options");
  BOOST_TEST(options.find("-c DateStyle=German") != std::string::npos, options);
  BOOST_TEST(options.find("-c search_path=a\\ b") != std::string::npos, options);
  BOOST_TEST(options.ends_with("-c statement_timeout=30000"), options);
}

BOOST_AUTO_TEST_CASE(large_rows_stream_through_split_deliveries) {
  const std::string bigValue(3 * 1024 * 1024 + 7, 'x');
  const std::string row = message('D', int16(1) + int32(static_cast<std::int32_t>(bigValue.size())) + bigValue);
  ScriptedUpstream upstream([&](Socket& s) {
    SCRIPT_CHECK(expectQuery(s) == "select big");
    std::string reply = message('T', int16(0)) + row + message('D', int16(0)) + message('C', cstring("SELECT 2")) +
                        message('Z', "I");
    // Deliver in uneven pieces, some splitting headers.
    for (std::size_t pos = 0, step = 1; pos < reply.size(); pos += step, step = step * 3 % 65521 + 1) {
      s.send(reply.substr(pos, step));
    }
    expectMessage(s, 'X');
  });
  Server server(configFor(upstream.dsn()));
  server.start();
  Socket client = startSession(server);
  (void)untilReady(client);
  client.send(message('Q', cstring("select big")));
  const auto messages = untilReady(client);
  BOOST_REQUIRE_EQUAL(messages.size(), 5U);
  BOOST_TEST(messages[1].first == 'D');
  BOOST_TEST((messages[1].second == row.substr(5)));
  BOOST_TEST(messages[3].second == cstring("SELECT 2"));
  client.send(message('X', ""));
  upstream.join();
}

BOOST_AUTO_TEST_CASE(extended_protocol_is_refused_until_sync_and_the_session_stays_usable) {
  ScriptedUpstream upstream([](Socket& s) {
    // Nothing of the extended sequence reaches the upstream: the first message is the simple query.
    SCRIPT_CHECK(expectQuery(s) == "select 1");
    s.send(message('C', cstring("SELECT 0")) + message('Z', "I"));
    expectMessage(s, 'X');
  });
  Server server(configFor(upstream.dsn()));
  server.start();
  Socket client = startSession(server);
  (void)untilReady(client);
  client.send(message('P', cstring("") + cstring("select 1") + int16(0)) + message('B', std::string(6, '\0')) +
              message('E', cstring("") + int32(0)) + message('H', "") + message('S', ""));
  const auto refused = untilReady(client);
  BOOST_REQUIRE_EQUAL(refused.size(), 2U);
  BOOST_TEST(refused[0].first == 'E');
  BOOST_TEST(errorField(refused[0].second, 'C') == "0A000");
  BOOST_TEST(errorField(refused[0].second, 'S') == "ERROR");
  client.send(message('Q', cstring("select 1")));
  const auto after = untilReady(client);
  BOOST_TEST(after[0].first == 'C');
  client.send(message('X', ""));
  upstream.join();
}

BOOST_AUTO_TEST_CASE(upstream_lost_mid_query_is_fatal_08006) {
  ScriptedUpstream upstream([](Socket& s) {
    (void)expectQuery(s);
    s.send(message('T', int16(0)));
    s.close();
  });
  Server server(configFor(upstream.dsn()));
  server.start();
  Socket client = startSession(server);
  (void)untilReady(client);
  client.send(message('Q', cstring("select 1")));
  BOOST_TEST(client.receiveMessage()->first == 'T');
  BOOST_TEST(fatalSqlstate(client) == "08006");
  upstream.join();
}

BOOST_AUTO_TEST_CASE(copy_from_stdin_is_failed_upstream_and_refused) {
  ScriptedUpstream upstream([](Socket& s) {
    (void)expectQuery(s);
    s.send(message('G', std::string(1, '\0') + int16(0)));
    const auto copyFail = s.receiveMessage();
    SCRIPT_CHECK(copyFail && copyFail->first == 'f');
    s.send(message('E', "SERROR" + std::string(1, '\0') + "C57014" + std::string(2, '\0')) + message('Z', "E"));
    expectMessage(s, 'X');
  });
  Server server(configFor(upstream.dsn()));
  server.start();
  Socket client = startSession(server);
  (void)untilReady(client);
  client.send(message('Q', cstring("copy t from stdin")));
  const auto messages = untilReady(client);
  BOOST_REQUIRE_EQUAL(messages.size(), 2U);
  BOOST_TEST(errorField(messages[0].second, 'C') == "0A000");
  BOOST_TEST(messages[1].second == "E");  // the upstream's real transaction status
  client.send(message('X', ""));
  upstream.join();
}

BOOST_AUTO_TEST_CASE(ssl_and_gssenc_requests_are_declined) {
  Server server(configFor("host=127.0.0.1 port=1"));
  server.start();
  Socket client = Socket::connectTo(server.port());
  client.send(untypedPacket({80877104}));
  BOOST_TEST(client.receiveExactly(1) == "N");
  client.send(untypedPacket({80877103}));
  BOOST_TEST(client.receiveExactly(1) == "N");
  // Bytes pipelined behind an SSLRequest would be read as plaintext: refused.
  Socket eager = Socket::connectTo(server.port());
  eager.send(untypedPacket({80877103}) + startupMessage({{"user", "u"}}));
  BOOST_TEST(fatalSqlstate(eager) == "08P01");
}

BOOST_AUTO_TEST_CASE(malformed_startups_are_rejected_and_the_server_goes_on) {
  Server server(configFor("host=127.0.0.1 port=1"));
  server.start();
  {
    Socket client = Socket::connectTo(server.port());
    client.send(int32(10001) + std::string(10000, 'a'));
    BOOST_TEST(fatalSqlstate(client) == "08P01");
  }
  {
    Socket client = Socket::connectTo(server.port());
    client.send(int32(3));
    BOOST_TEST(fatalSqlstate(client) == "08P01");
  }
  {
    Socket client = Socket::connectTo(server.port());
    client.send(untypedPacket({2 << 16}));
    BOOST_TEST(fatalSqlstate(client) == "0A000");
  }
  {
    Socket client = Socket::connectTo(server.port());
    client.send(int32(12) + int32(196608) + "user");  // no terminators
    BOOST_TEST(fatalSqlstate(client) == "08P01");
  }
  {
    Socket client = Socket::connectTo(server.port());  // says nothing: the startup timeout ends it
    BOOST_TEST(fatalSqlstate(client) == "08P01");
  }
  {
    Socket client = Socket::connectTo(server.port());
    client.send(startupMessage({{"database", "x"}}));  // no user
    BOOST_TEST(fatalSqlstate(client) == "28000");
  }
  {
    // Still serving: an unreachable upstream is reported as 08006.
    Socket client = Socket::connectTo(server.port());
    client.send(startupMessage({{"user", "u"}}));
    BOOST_TEST(fatalSqlstate(client) == "08006");
  }
}

BOOST_AUTO_TEST_CASE(connection_limit_refuses_with_53300_and_readmits) {
  ScriptedUpstream upstream([](Socket& s) { expectMessage(s, 'X'); });
  auto config = configFor(upstream.dsn());
  config.maxConnections = 1;
  Server server(config);
  server.start();
  Socket first = startSession(server);
  (void)untilReady(first);
  {
    Socket second = startSession(server);
    BOOST_TEST(fatalSqlstate(second) == "53300");
  }
  // A cancel request is not a session: it is never refused for the limit (and here matches nothing).
  {
    Socket cancel = Socket::connectTo(server.port());
    cancel.send(untypedPacket({80877102, 1, 2}));
    BOOST_TEST(cancel.waitForEof());
  }
  first.send(message('X', ""));
  BOOST_TEST(first.waitForEof());
  upstream.join();
  // The slot is free again: the next client passes admission (and then fails upstream, which is gone).
  Socket third = startSession(server);
  BOOST_TEST(fatalSqlstate(third) == "08006");
}

BOOST_AUTO_TEST_CASE(unknown_message_type_is_a_protocol_violation) {
  ScriptedUpstream upstream([](Socket& s) { expectMessage(s, 'X'); });
  Server server(configFor(upstream.dsn()));
  server.start();
  Socket client = startSession(server);
  (void)untilReady(client);
  client.send(message('?', "junk"));
  BOOST_TEST(fatalSqlstate(client) == "08P01");
  upstream.join();
}

BOOST_AUTO_TEST_CASE(oversized_query_is_refused_before_it_is_buffered) {
  ScriptedUpstream upstream([](Socket& s) { expectMessage(s, 'X'); });
  auto config = configFor(upstream.dsn());
  config.maxMessageSize = 4096;
  Server server(config);
  server.start();
  Socket client = startSession(server);
  (void)untilReady(client);
  client.send(std::string(1, 'Q') + int32(1 << 30));  // announces 1GB, sends nothing more
  BOOST_TEST(fatalSqlstate(client) == "08P01");
  upstream.join();
}

BOOST_AUTO_TEST_CASE(row_limit_breach_stops_rows_cancels_and_reports_54000) {
  ScriptedUpstream* self = nullptr;
  ScriptedUpstream upstream([&](Socket& s) {
    (void)expectQuery(s);
    std::string reply = message('T', int16(0));
    for (int i = 0; i < 5; ++i) reply += message('D', int16(1) + int32(1) + std::to_string(i));
    s.send(reply);
    // The proxy cancels; the server answers the cancelled statement with 57014, then ReadyForQuery.
    while (self->cancelRequests() == 0) std::this_thread::yield();
    s.send(message('E', "SERROR" + std::string(1, '\0') + "C57014" + std::string(2, '\0')) + message('Z', "I"));
    SCRIPT_CHECK(expectQuery(s) == "select 1");
    s.send(message('C', cstring("SELECT 1")) + message('Z', "I"));
    expectMessage(s, 'X');
  });
  self = &upstream;
  auto config = configFor(upstream.dsn());
  config.maxRows = 3;
  Server server(config);
  server.start();
  Socket client = startSession(server);
  (void)untilReady(client);
  client.send(message('Q', cstring("select * from big")));
  const auto messages = untilReady(client);
  BOOST_REQUIRE_EQUAL(messages.size(), 6U);  // T, D, D, D, E, Z
  BOOST_TEST(messages[3].first == 'D');
  BOOST_TEST(messages[3].second.back() == '2');
  BOOST_TEST(messages[4].first == 'E');
  BOOST_TEST(errorField(messages[4].second, 'C') == "54000");
  BOOST_TEST(errorField(messages[4].second, 'M').find("3 rows") != std::string::npos);
  BOOST_TEST(!errorField(messages[4].second, 'H').empty());
  BOOST_TEST(messages[5].second == "I");
  client.send(message('Q', cstring("select 1")));  // the same session goes on
  BOOST_TEST(untilReady(client).size() == 2U);
  client.send(message('X', ""));
  upstream.join();
  BOOST_TEST(upstream.cancelRequests() == 1);
}

BOOST_AUTO_TEST_CASE(breach_after_the_statement_finished_still_fails_the_transaction) {
  ScriptedUpstream upstream([](Socket& s) {
    (void)expectQuery(s);
    // The whole result and ReadyForQuery(T) are already on the wire when the cancel is sent.
    s.send(message('T', int16(0)) + message('D', int16(0)) + message('D', int16(0)) +
           message('C', cstring("SELECT 2")) + message('Z', "T"));
    const std::string abort = expectQuery(s);
    SCRIPT_CHECK(abort.find("RAISE EXCEPTION") != std::string::npos);
    s.send(message('E', "SERROR" + std::string(1, '\0') + "C54000" + std::string(2, '\0')) + message('Z', "E"));
    expectMessage(s, 'X');
  });
  auto config = configFor(upstream.dsn());
  config.maxRows = 1;
  Server server(config);
  server.start();
  Socket client = startSession(server);
  (void)untilReady(client);
  client.send(message('Q', cstring("select 1 union all select 2")));
  const auto messages = untilReady(client);
  BOOST_REQUIRE_EQUAL(messages.size(), 4U);  // T, D, E, Z
  BOOST_TEST(errorField(messages[2].second, 'C') == "54000");
  BOOST_TEST(messages[3].second == "E");
  client.send(message('X', ""));
  upstream.join();
}

BOOST_AUTO_TEST_CASE(denied_queries_never_reach_the_upstream) {
  ScriptedUpstream upstream([](Socket& s) {
    SCRIPT_CHECK(expectQuery(s) == "select 1");
    s.send(message('C', cstring("SELECT 1")) + message('Z', "I"));
    expectMessage(s, 'X');
  });
  auto config = configFor(upstream.dsn());
  config.denyPatterns = {"^drop"};
  Server server(config);
  server.start();
  Socket client = startSession(server);
  (void)untilReady(client);
  client.send(message('Q', cstring("drop table t")));
  const auto refused = untilReady(client);
  BOOST_REQUIRE_EQUAL(refused.size(), 2U);
  BOOST_TEST(errorField(refused[0].second, 'C') == "42501");
  BOOST_TEST(errorField(refused[0].second, 'M').find("^drop") != std::string::npos);
  client.send(message('Q', cstring("select 1")));
  BOOST_TEST(untilReady(client).size() == 2U);
  client.send(message('X', ""));
  upstream.join();
}

// Every loop watches the listening socket, with EPOLLEXCLUSIVE: a connection wakes one loop, not
// each (the flag was once dropped at the first registration, and every connection woke both loops).
BOOST_AUTO_TEST_CASE(every_loop_watches_the_listening_socket_exclusively) {
  Server server(configFor("host=127.0.0.1 port=1 user=tester dbname=testdb"));
  server.start();
  const int listening = findOwnSocket([&](int fd) {
    return localPort(fd) == server.port() && intOption(fd, SOL_SOCKET, SO_ACCEPTCONN) == 1;
  });
  BOOST_TEST_REQUIRE(listening >= 0);
  // The loops register it on their first step: wait for that, not for a time.
  std::vector<unsigned> registrations;
  const std::size_t loops = pgwire_proxy::session::allowedCpus().size();
  for (int i = 0; i < 1000 && registrations.size() < loops; ++i) {
    registrations = epollRegistrations(listening);
    if (registrations.size() < loops) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  BOOST_TEST(registrations.size() == loops);
  for (const unsigned events : registrations) {
    BOOST_TEST((events & EPOLLEXCLUSIVE) != 0U, "events " << std::hex << events);
    BOOST_TEST((events & EPOLLIN) != 0U);
  }
}

// The accepted socket has TCP_NODELAY (the listener's, inherited, instead of a syscall per connection).
BOOST_AUTO_TEST_CASE(accepted_connections_have_tcp_nodelay) {
  auto config = configFor("host=127.0.0.1 port=1 user=tester dbname=testdb");
  config.startupTimeout = std::chrono::seconds(30);  // the silent client's socket stays open meanwhile
  Server server(config);
  server.start();
  Socket client = Socket::connectTo(server.port());
  const std::uint16_t clientPort = localPort(client.fd());
  int accepted = -1;
  for (int i = 0; i < 1000 && accepted < 0; ++i) {  // until a loop has accepted it
    accepted = findOwnSocket([&](int fd) { return fd != client.fd() && peerPort(fd) == clientPort; });
    if (accepted < 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  BOOST_TEST_REQUIRE(accepted >= 0);
  BOOST_TEST(intOption(accepted, IPPROTO_TCP, TCP_NODELAY) == 1);
  BOOST_TEST(intOption(client.fd(), IPPROTO_TCP, TCP_NODELAY) == 0);  // the option is per socket: the check can fail
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(session_registry)

struct NoQuery final : pgwire_proxy::session::CancelTarget {
  bool cancelRunningQuery() override { return false; }
};

// The secrets are random (OpenSSL's CSPRNG): 64 keys from two threads, no two alike. A repeat among
// 64 random 32-bit values has odds of about 5e-7; a constant, or a generator that threads share
// unsafely, repeats at once.
BOOST_AUTO_TEST_CASE(cancel_secrets_are_random_and_distinct_across_threads) {
  pgwire_proxy::session::SessionRegistry registry(100);
  std::vector<std::int32_t> secrets;
  std::mutex mutex;
  auto issue = [&] {
    for (int i = 0; i < 200; ++i) {  // past a thread's batch of 64 secrets, three times
      const auto key = registry.add(std::make_shared<NoQuery>());
      registry.remove(key.processId);
      std::lock_guard lock(mutex);
      secrets.push_back(key.secretKey);
    }
  };
  std::thread other(issue);
  issue();
  other.join();
  std::sort(secrets.begin(), secrets.end());
  BOOST_TEST(secrets.size() == 400U);
  BOOST_TEST((std::adjacent_find(secrets.begin(), secrets.end()) == secrets.end()));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(cpu_quota)

using pgwire_proxy::session::cpuQuota;
using pgwire_proxy::session::loopsFor;

// A directory tree standing for / : /proc/self/{cgroup,mountinfo} and the cgroup files under it.
struct FakeRoot {
  FakeRoot() {
    path = std::filesystem::temp_directory_path() / ("pgwire-cpu-quota-" + std::to_string(::getpid()) + "-" + std::to_string(++count));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~FakeRoot() { std::filesystem::remove_all(path); }
  void write(const std::string& file, const std::string& text) const {
    const auto target = path / std::filesystem::path(file).relative_path();
    std::filesystem::create_directories(target.parent_path());
    std::ofstream(target) << text;
  }
  std::filesystem::path path;
  static inline int count = 0;
};

constexpr const char* kV1Mounts =
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "33 31 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n";

BOOST_AUTO_TEST_CASE(cgroup_v1_quota_is_the_smallest_from_the_process_cgroup_up) {
  FakeRoot root;
  root.write("/proc/self/mountinfo", kV1Mounts);
  root.write("/proc/self/cgroup", "4:cpuset:/\n3:cpu,cpuacct:/ci/job\n0::/\n");
  root.write("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  root.write("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  root.write("/sys/fs/cgroup/cpu,cpuacct/ci/cpu.cfs_quota_us", "150000\n");
  root.write("/sys/fs/cgroup/cpu,cpuacct/ci/cpu.cfs_period_us", "100000\n");
  root.write("/sys/fs/cgroup/cpu,cpuacct/ci/job/cpu.cfs_quota_us", "-1\n");  // none of its own
  root.write("/sys/fs/cgroup/cpu,cpuacct/ci/job/cpu.cfs_period_us", "100000\n");
  BOOST_TEST(cpuQuota(root.path).value_or(-1) == 1.5);
  root.write("/sys/fs/cgroup/cpu,cpuacct/ci/job/cpu.cfs_quota_us", "50000\n");
  BOOST_TEST(cpuQuota(root.path).value_or(-1) == 0.5);
  root.write("/sys/fs/cgroup/cpu,cpuacct/ci/job/cpu.cfs_quota_us", "-1\n");
  root.write("/sys/fs/cgroup/cpu,cpuacct/ci/cpu.cfs_quota_us", "-1\n");
  BOOST_TEST(!cpuQuota(root.path).has_value());
}

BOOST_AUTO_TEST_CASE(cgroup_v2_quota_and_a_namespaced_mount) {
  FakeRoot root;
  root.write("/proc/self/mountinfo", "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n");
  root.write("/proc/self/cgroup", "0::/system.slice/proxy.service\n");
  root.write("/sys/fs/cgroup/cpu.max", "max 100000\n");
  root.write("/sys/fs/cgroup/system.slice/cpu.max", "max 100000\n");
  root.write("/sys/fs/cgroup/system.slice/proxy.service/cpu.max", "200000 100000\n");
  BOOST_TEST(cpuQuota(root.path).value_or(-1) == 2.0);
  root.write("/sys/fs/cgroup/system.slice/cpu.max", "100000 100000\n");  // the parent's is smaller
  BOOST_TEST(cpuQuota(root.path).value_or(-1) == 1.0);
  root.write("/sys/fs/cgroup/system.slice/cpu.max", "max 100000\n");
  root.write("/sys/fs/cgroup/system.slice/proxy.service/cpu.max", "max 100000\n");
  BOOST_TEST(!cpuQuota(root.path).has_value());
  // A container's view (a cgroup namespace): the mount's root is the process's own cgroup.
  FakeRoot container;
  container.write("/proc/self/mountinfo", "30 23 0:26 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n");
  container.write("/proc/self/cgroup", "0::/docker/abc\n");
  container.write("/sys/fs/cgroup/cpu.max", "100000 100000\n");
  BOOST_TEST(cpuQuota(container.path).value_or(-1) == 1.0);
  container.write("/proc/self/cgroup", "0::/\n");  // namespaced: its cgroup is the mount's root
  container.write("/proc/self/mountinfo", "30 23 0:26 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n");
  BOOST_TEST(cpuQuota(container.path).value_or(-1) == 1.0);
}

BOOST_AUTO_TEST_CASE(nothing_to_read_is_no_quota) {
  FakeRoot root;
  BOOST_TEST(!cpuQuota(root.path).has_value());
  root.write("/proc/self/mountinfo", kV1Mounts);
  root.write("/proc/self/cgroup", "3:cpu,cpuacct:/gone\n");  // no files there
  BOOST_TEST(!cpuQuota(root.path).has_value());
}

BOOST_AUTO_TEST_CASE(loops_follow_the_quota_rounded_up_within_the_allowed_cpus) {
  BOOST_TEST(loopsFor(8, std::nullopt) == 8U);
  BOOST_TEST(loopsFor(8, 1.0) == 1U);
  BOOST_TEST(loopsFor(8, 1.5) == 2U);
  BOOST_TEST(loopsFor(8, 0.25) == 1U);
  BOOST_TEST(loopsFor(2, 4.0) == 2U);
  BOOST_TEST(loopsFor(0, std::nullopt) == 1U);
  BOOST_TEST(loopsFor(4, 200000.0 / 100000.0) == 2U);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(byte_buffer)

using pgwire_proxy::session::ByteBuffer;

BOOST_AUTO_TEST_CASE(takes_memory_at_the_first_write_and_compacts_before_growing) {
  ByteBuffer buffer(16);
  BOOST_TEST(buffer.capacity() == 0U);  // an idle session's buffer costs nothing
  BOOST_TEST(buffer.readable().empty());
  auto room = buffer.prepareWrite(4);
  BOOST_TEST(buffer.capacity() == 16U);
  std::memcpy(room.data(), "abcdefghijkl", 12);
  buffer.commitWrite(12);
  buffer.consume(10);  // "kl" left at offset 10
  room = buffer.prepareWrite(12);  // fits after moving "kl" to the front: no growth
  BOOST_TEST(buffer.capacity() == 16U);
  BOOST_TEST(std::string(buffer.readable().data(), buffer.size()) == "kl");
  room = buffer.prepareWrite(100);  // grows, keeping the unread bytes
  BOOST_TEST(buffer.capacity() >= 102U);
  std::memcpy(room.data(), "mn", 2);
  buffer.commitWrite(2);
  BOOST_TEST(std::string(buffer.readable().data(), buffer.size()) == "klmn");
  buffer.shrinkTo(16);
  BOOST_TEST(buffer.capacity() == 16U);
  BOOST_TEST(std::string(buffer.readable().data(), buffer.size()) == "klmn");
  buffer.consume(4);
  BOOST_TEST(buffer.empty());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(query_canceller)

using pgwire_proxy::session::QueryCanceller;

// Counts wake-ups; the canceller's only use of its loop.
struct CountingLoop final : pgwire_proxy::session::LoopHandle {
  void spawn(std::unique_ptr<pgwire_proxy::session::LoopTask>) override {}
  void wake(std::uint64_t) override { wakes.fetch_add(1, std::memory_order_relaxed); }
  std::atomic<int> wakes{0};
};

BOOST_AUTO_TEST_CASE(a_request_reaches_only_the_query_it_was_made_for) {
  CountingLoop loop;
  QueryCanceller canceller(loop, 7);
  BOOST_TEST(!canceller.cancelRunningQuery());  // idle: nothing to cancel
  BOOST_TEST(!canceller.takeRequest());
  canceller.setInQuery(true);
  BOOST_TEST(canceller.cancelRunningQuery());
  BOOST_TEST(loop.wakes.load() == 1);
  BOOST_TEST(canceller.takeRequest());
  BOOST_TEST(!canceller.takeRequest());  // taken once
  BOOST_TEST(canceller.cancelRunningQuery());
  canceller.setInQuery(false);  // the query ended before the session looked
  canceller.setInQuery(true);
  BOOST_TEST(!canceller.takeRequest());  // a late request never hits the next query
  canceller.detach();
  BOOST_TEST(!canceller.cancelRunningQuery());  // the session is going: no wake-up
  BOOST_TEST(loop.wakes.load() == 2);
}

BOOST_AUTO_TEST_CASE(requests_from_another_thread_race_with_queries_safely) {
  CountingLoop loop;
  QueryCanceller canceller(loop, 7);
  std::atomic<bool> done{false};
  std::thread requester([&] {
    while (!done.load(std::memory_order_relaxed)) (void)canceller.cancelRunningQuery();
  });
  int taken = 0;
  for (int i = 0; i < 20000; ++i) {
    canceller.setInQuery(true);
    if (canceller.takeRequest()) ++taken;
    canceller.setInQuery(false);
    BOOST_TEST_REQUIRE(!canceller.takeRequest());  // between queries nothing is ever taken
  }
  done = true;
  requester.join();
  canceller.detach();
  BOOST_TEST(taken <= loop.wakes.load());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(event_loop)

using pgwire_proxy::session::EventLoop;
using pgwire_proxy::session::Interest;
using pgwire_proxy::session::LoopHandle;
using pgwire_proxy::session::LoopTask;
using pgwire_proxy::session::Readiness;

// Which loop each placed task started on.
struct Placements {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<const LoopHandle*> loops;
  std::thread::id placer;  // set while the placer is placing (under the mutex)
  int startedInPlace = 0;  // tasks whose first step ran inside the placer's own step: no hand-over
};

// Notes its loop at its first step, then waits for nothing until the loop ends.
class Placed final : public LoopTask {
 public:
  explicit Placed(Placements& placements) : placements_(placements) {}
  std::optional<Interest> advance(const Readiness&) noexcept override {
    if (!noted_) {
      noted_ = true;
      std::lock_guard lock(placements_.mutex);
      placements_.loops.push_back(&loop());
      if (placements_.placer == std::this_thread::get_id()) ++placements_.startedInPlace;
      placements_.changed.notify_all();
    }
    return Interest{};
  }

 private:
  Placements& placements_;
  bool noted_ = false;
};

// Places `count` tasks with adoptNear from its own loop (as a listener does), noting that loop.
class Placer final : public LoopTask {
 public:
  Placer(EventLoop& events, Placements& placements, int count, const LoopHandle*& home)
      : events_(events), placements_(placements), count_(count), home_(home) {}
  std::optional<Interest> advance(const Readiness&) noexcept override {
    if (count_ == 0) return Interest{};
    home_ = &loop();
    setPlacer(std::this_thread::get_id());
    for (; count_ > 0; --count_) events_.adoptNear(loop(), std::make_unique<Placed>(placements_));
    setPlacer({});
    return Interest{};
  }

 private:
  void setPlacer(std::thread::id id) {
    std::lock_guard lock(placements_.mutex);
    placements_.placer = id;
  }

  EventLoop& events_;
  Placements& placements_;
  int count_;
  const LoopHandle*& home_;
};

BOOST_AUTO_TEST_CASE(adopt_near_keeps_tasks_on_the_calling_loop_while_the_loops_stay_balanced) {
  EventLoop events(2, -1, -1);
  Placements placements;
  const LoopHandle* home = nullptr;
  constexpr int kTasks = 41;
  events.adopt(std::make_unique<Placer>(events, placements, kTasks, home));
  std::unique_lock lock(placements.mutex);
  BOOST_TEST_REQUIRE(placements.changed.wait_for(lock, std::chrono::seconds(10),
                                                 [&] { return placements.loops.size() == kTasks; }));
  // The placer is one of its loop's tasks: the first task goes to the other loop, which then has
  // as many; from there they alternate, the calling loop's share started without a hand-over.
  const auto local = std::count(placements.loops.begin(), placements.loops.end(), home);
  BOOST_TEST(local == kTasks / 2);
  BOOST_TEST(placements.startedInPlace == kTasks / 2);
  BOOST_TEST(events.tasks() == kTasks + 1);
}

// What a socket's watcher saw, for the test's thread.
struct Seen {
  std::mutex mutex;
  std::condition_variable changed;
  std::string bytes;        // read by the task that took the descriptor over
  bool firstEnded = false;  // the first task's destructor ran
  std::size_t registeredInDestructor = 99;  // the epoll sets that still had the descriptor then
};

// Watches `fd` for input and, when there is some, takes it (leaving it readable for the next).
class Reader final : public LoopTask {
 public:
  Reader(int fd, Seen& seen) : fd_(fd), seen_(seen) {}
  std::optional<Interest> advance(const Readiness& ready) noexcept override {
    if ((ready.client & POLLIN) != 0) {
      char buffer[64];
      const ssize_t got = ::read(fd_, buffer, sizeof buffer);
      std::lock_guard lock(seen_.mutex);
      if (got > 0) seen_.bytes.append(buffer, static_cast<std::size_t>(got));
      seen_.changed.notify_all();
    }
    Interest interest;
    interest.clientFd = fd_;
    interest.client = POLLIN;
    return interest;
  }

 private:
  int fd_;
  Seen& seen_;
};

// Ends at its first step, without watching `fd`; its destructor notes which epoll sets still have
// the descriptor, then closes it (as a reset whose first write fails closes its connection).
class EndsAtOnceAndCloses final : public LoopTask {
 public:
  EndsAtOnceAndCloses(int fd, Seen& seen) : fd_(fd), seen_(seen) {}
  ~EndsAtOnceAndCloses() override {
    const std::size_t registered = epollRegistrations(fd_).size();
    ::close(fd_);
    std::lock_guard lock(seen_.mutex);
    seen_.registeredInDestructor = registered;
    seen_.changed.notify_all();
  }
  std::optional<Interest> advance(const Readiness&) noexcept override { return std::nullopt; }

 private:
  int fd_;
  Seen& seen_;
};

// Watches `fd` and ends when it is readable, without reading; its destructor may spawn a Reader of
// the same descriptor (as a session's hands its upstream to the reset), or close it.
class EndsWhenReadable final : public LoopTask {
 public:
  enum class Then { kHandOn, kHandOnToOneThatEndsAtOnce, kLeaveOpen, kClose };
  EndsWhenReadable(int fd, Seen& seen, Then then) : fd_(fd), seen_(seen), then_(then) {}
  ~EndsWhenReadable() override {
    if (then_ == Then::kHandOn) loop().spawn(std::make_unique<Reader>(fd_, seen_));
    if (then_ == Then::kHandOnToOneThatEndsAtOnce) loop().spawn(std::make_unique<EndsAtOnceAndCloses>(fd_, seen_));
    if (then_ == Then::kClose) ::close(fd_);
    const std::size_t registered = then_ == Then::kLeaveOpen ? epollRegistrations(fd_).size() : 0;
    std::lock_guard lock(seen_.mutex);
    if (then_ == Then::kLeaveOpen) seen_.registeredInDestructor = registered;
    seen_.firstEnded = true;
    seen_.changed.notify_all();
  }
  std::optional<Interest> advance(const Readiness& ready) noexcept override {
    if ((ready.client & POLLIN) != 0) return std::nullopt;
    Interest interest;
    interest.clientFd = fd_;
    interest.client = POLLIN;
    return interest;
  }
  bool handsOn(int fd) const noexcept override {
    return fd == fd_ && (then_ == Then::kHandOn || then_ == Then::kHandOnToOneThatEndsAtOnce);
  }

 private:
  int fd_;
  Seen& seen_;
  Then then_;
};

struct SocketPair {
  SocketPair() { BOOST_REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0); }
  ~SocketPair() {
    for (const int fd : fds) {
      if (fd >= 0) ::close(fd);
    }
  }
  int fds[2] = {-1, -1};
};

// A descriptor an ending task hands to a task it spawns keeps one registration, now the new task's:
// its events reach the new task (an event naming the ended one would be a use after free).
BOOST_AUTO_TEST_CASE(a_descriptor_handed_to_a_spawned_task_brings_its_events_to_it) {
  SocketPair pair;
  Seen seen;
  EventLoop events(1, -1, -1);
  events.adopt(std::make_unique<EndsWhenReadable>(pair.fds[0], seen, EndsWhenReadable::Then::kHandOn));
  BOOST_REQUIRE(::write(pair.fds[1], "a", 1) == 1);  // ends the first task; the Reader reads it
  std::unique_lock lock(seen.mutex);
  BOOST_TEST_REQUIRE(seen.changed.wait_for(lock, std::chrono::seconds(10), [&] { return seen.bytes == "a"; }));
  lock.unlock();
  BOOST_REQUIRE(::write(pair.fds[1], "b", 1) == 1);
  lock.lock();
  BOOST_TEST_REQUIRE(seen.changed.wait_for(lock, std::chrono::seconds(10), [&] { return seen.bytes == "ab"; }));
  const auto registrations = epollRegistrations(pair.fds[0]);
  BOOST_TEST(registrations.size() == 1U);
  BOOST_TEST(events.tasks() == 1);
}

// A descriptor handed to a task that ends at once, without watching it, and closes it: the loop
// removes the registration before that task's destructor, not after the close (when another
// thread may already have the number).
BOOST_AUTO_TEST_CASE(a_descriptor_handed_to_a_task_that_ends_at_once_leaves_the_set_before_its_close) {
  SocketPair pair;
  Seen seen;
  EventLoop events(1, -1, -1);
  const int watched = pair.fds[0];
  events.adopt(std::make_unique<EndsWhenReadable>(watched, seen, EndsWhenReadable::Then::kHandOnToOneThatEndsAtOnce));
  for (int i = 0; i < 1000 && epollRegistrations(watched).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  BOOST_TEST_REQUIRE(epollRegistrations(watched).size() == 1U);
  pair.fds[0] = -1;  // closed by the second task
  BOOST_REQUIRE(::write(pair.fds[1], "x", 1) == 1);
  std::unique_lock lock(seen.mutex);
  BOOST_TEST_REQUIRE(seen.changed.wait_for(lock, std::chrono::seconds(10), [&] { return seen.registeredInDestructor != 99U && seen.firstEnded; }));
  BOOST_TEST(seen.registeredInDestructor == 0U);
}

// A descriptor that outlives its ended task (open elsewhere) leaves the loop's set before the
// destructor runs, which may give it to another thread (the pool does): touching it after would
// race with that thread's close (TSan saw it). One the task closes leaves the set too, also when
// another descriptor of the same socket stays open (`held`: as a child forked by the in-process
// proxy's test process holds every descriptor until it execs): the kernel drops a registration
// only with the socket's last descriptor and reports its events meanwhile, which named the ended
// task's freed slot (a segfault in the in-process benchmark).
BOOST_AUTO_TEST_CASE(an_ended_tasks_descriptors_leave_the_set_whether_closed_or_not) {
  using Then = EndsWhenReadable::Then;
  for (const auto& [then, held] : {std::pair{Then::kLeaveOpen, false}, std::pair{Then::kLeaveOpen, true},
                                   std::pair{Then::kClose, false}, std::pair{Then::kClose, true}}) {
    SocketPair pair;
    Seen seen;
    EventLoop events(1, -1, -1);
    const int watched = pair.fds[0];
    const int copy = held ? ::dup(watched) : -1;
    if (held) BOOST_REQUIRE(copy >= 0);
    events.adopt(std::make_unique<EndsWhenReadable>(watched, seen, then));
    for (int i = 0; i < 1000 && epollRegistrations(watched).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    BOOST_TEST_REQUIRE(epollRegistrations(watched).size() == 1U);  // watched before it ends: the check can fail
    BOOST_REQUIRE(::write(pair.fds[1], "x", 1) == 1);
    {
      std::unique_lock lock(seen.mutex);
      BOOST_TEST_REQUIRE(seen.changed.wait_for(lock, std::chrono::seconds(10), [&] { return seen.firstEnded; }));
    }
    // The loop counts the task out after its destructor and the removal of what it left.
    for (int i = 0; i < 1000 && events.tasks() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (then == Then::kClose) {
      pair.fds[0] = -1;  // closed by the task
      // No set lists the number any more (a registration kept alive by `copy` still would, as fdinfo
      // names it by the number it was added with); reopened, it is in no set either.
      BOOST_TEST(epollRegistrations(watched).empty());
      SocketPair again;
      const int reopened = again.fds[0] == watched ? again.fds[0] : again.fds[1] == watched ? again.fds[1] : -1;
      BOOST_TEST_REQUIRE(reopened == watched);
      BOOST_TEST(epollRegistrations(reopened).empty());
    } else {
      BOOST_TEST(seen.registeredInDestructor == 0U);
      BOOST_TEST(epollRegistrations(watched).empty());
    }
    if (then == Then::kLeaveOpen || held) {
      BOOST_REQUIRE(::write(pair.fds[1], "y", 1) == 1);  // an event now would name the ended task
    }
    BOOST_TEST(events.tasks() == 0);
    if (copy >= 0) ::close(copy);
  }
}

// The loops are sized by the CPUs the process may run on (taskset, a cpuset), not by the machine's.
BOOST_AUTO_TEST_CASE(allowed_cpus_are_the_affinity_mask_of_the_calling_thread) {
  cpu_set_t before;
  BOOST_REQUIRE(::sched_getaffinity(0, sizeof before, &before) == 0);
  std::vector<int> expected;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &before)) expected.push_back(cpu);
  }
  BOOST_TEST(pgwire_proxy::session::allowedCpus() == expected, boost::test_tools::per_element());
  // Restricted to its last CPU (a thread's mask is its own; restored before the check can fail).
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(expected.back(), &one);
  BOOST_REQUIRE(::sched_setaffinity(0, sizeof one, &one) == 0);
  const std::vector<int> restricted = pgwire_proxy::session::allowedCpus();
  BOOST_REQUIRE(::sched_setaffinity(0, sizeof before, &before) == 0);
  BOOST_TEST(restricted == std::vector<int>{expected.back()}, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_SUITE_END()
