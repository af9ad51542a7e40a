// The metrics endpoint on loopback (routing, methods, split and malformed heads, silent sockets that
// cost no thread) and the upstream check behind /readyz (its state, its prompt stop).
#include <boost/test/unit_test.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "server/metrics_endpoint.h"
#include "server/readiness_check.h"
#include "test_support.h"

using pgwire_proxy::server::MetricsEndpoint;
using pgwire_proxy::server::Readiness;
using pgwire_proxy::server::ReadinessCheck;
using test_support::Socket;

namespace {

// An endpoint whose callbacks note the thread they run on.
struct Fixture {
  Readiness readiness{true, {}};
  std::mutex mutex;
  std::set<std::thread::id> threads;
  MetricsEndpoint endpoint{"127.0.0.1:0",
                           [this] {
                             note();
                             return std::string("metric_total 1\n");
                           },
                           [this] {
                             note();
                             std::lock_guard lock(mutex);
                             return readiness;
                           }};

  void note() {
    std::lock_guard lock(mutex);
    threads.insert(std::this_thread::get_id());
  }
};

std::string readToEof(const Socket& socket) {
  std::string out;
  char buffer[4096];
  for (;;) {
    const ssize_t got = ::recv(socket.fd(), buffer, sizeof buffer, 0);
    if (got <= 0) return out;
    out.append(buffer, static_cast<std::size_t>(got));
  }
}

std::string roundTrip(std::uint16_t port, const std::string& request) {
  Socket socket = Socket::connectTo(port, 5);
  socket.send(request);
  return readToEof(socket);
}

std::string get(std::uint16_t port, const std::string& path) {
  return roundTrip(port, "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n");
}

bool startsWith(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }
bool endsWith(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(metrics_endpoint)

BOOST_AUTO_TEST_CASE(routes_methods_and_one_answer_per_connection) {
  Fixture fixture;
  const std::uint16_t port = fixture.endpoint.port();
  const std::string health = get(port, "/healthz");
  BOOST_TEST(startsWith(health, "HTTP/1.1 200 OK\r\n"));
  BOOST_TEST(health.find("Connection: Close\r\n") != std::string::npos);
  BOOST_TEST(endsWith(health, "\r\n\r\nok\n"));
  BOOST_TEST(endsWith(get(port, "/metrics?x=1"), "\r\n\r\nmetric_total 1\n"));
  BOOST_TEST(startsWith(get(port, "/nope"), "HTTP/1.1 404"));
  BOOST_TEST(startsWith(roundTrip(port, "GET /healthz HTTP/1.0\r\n\r\n"), "HTTP/1.0 200"));
  const std::string post = roundTrip(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  BOOST_TEST(startsWith(post, "HTTP/1.1 405"));
  BOOST_TEST(post.find("Allow: GET, HEAD\r\n") != std::string::npos);
  const std::string head = roundTrip(port, "HEAD /healthz HTTP/1.1\r\n\r\n");
  BOOST_TEST(head.find("Content-Length: 3\r\n") != std::string::npos);
  BOOST_TEST(endsWith(head, "\r\n\r\n"));
  {
    std::lock_guard lock(fixture.mutex);
    fixture.readiness = {false, "draining"};
  }
  const std::string ready = get(port, "/readyz");
  BOOST_TEST(startsWith(ready, "HTTP/1.1 503"));
  BOOST_TEST(endsWith(ready, "\r\n\r\nnot ready: draining\n"));
}

BOOST_AUTO_TEST_CASE(a_head_split_at_every_byte_is_answered_once_whole) {
  Fixture fixture;
  Socket socket = Socket::connectTo(fixture.endpoint.port(), 5);
  for (const char byte : std::string("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) socket.send(std::string(1, byte));
  BOOST_TEST(endsWith(readToEof(socket), "\r\n\r\nok\n"));
}

BOOST_AUTO_TEST_CASE(malformed_and_oversized_heads_get_an_error_and_a_close) {
  Fixture fixture;
  const std::uint16_t port = fixture.endpoint.port();
  BOOST_TEST(startsWith(roundTrip(port, "GET\r\n\r\n"), "HTTP/1.0 400"));
  const std::string huge = "GET /healthz HTTP/1.1\r\nX: " + std::string(MetricsEndpoint::kMaxRequestHead, 'a');
  BOOST_TEST(startsWith(roundTrip(port, huge), "HTTP/1.0 431"));
}

BOOST_AUTO_TEST_CASE(silent_sockets_past_the_limit_cost_no_thread_and_never_shut_out_a_probe) {
  Fixture fixture;
  const std::uint16_t port = fixture.endpoint.port();
  std::vector<Socket> silent;
  for (std::size_t i = 0; i < 3 * MetricsEndpoint::kMaxConnections; ++i) silent.push_back(Socket::connectTo(port, 10));
  silent.back().send("GET /heal");  // half a request line
  BOOST_TEST(endsWith(get(port, "/healthz"), "\r\n\r\nok\n"));
  BOOST_TEST(endsWith(get(port, "/readyz"), "\r\n\r\nok\n"));
  BOOST_TEST(endsWith(get(port, "/metrics"), "\r\n\r\nmetric_total 1\n"));
  // The oldest were closed to make room, the rest at their request deadline: none waits forever.
  for (const Socket& socket : silent) BOOST_TEST(socket.waitForEof());
  std::lock_guard lock(fixture.mutex);
  BOOST_TEST(fixture.threads.size() == 1U);  // every callback on the endpoint's one thread
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(readiness_check)

BOOST_AUTO_TEST_CASE(known_from_construction_and_stopped_at_once_between_pings) {
  test_support::ScriptedUpstream upstream([](Socket&) {});
  const auto started = std::chrono::steady_clock::now();
  {
    ReadinessCheck check(upstream.dsn(), std::chrono::minutes(10));
    BOOST_TEST((check.state() == ReadinessCheck::State::kReachable));
  }  // the destructor wakes the waiting thread rather than sleeping out the 10 minutes
  BOOST_TEST((std::chrono::steady_clock::now() - started < std::chrono::seconds(5)));
  upstream.join();
}

BOOST_AUTO_TEST_CASE(unreachable_when_the_port_refuses) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  BOOST_REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  BOOST_REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0);
  ::close(fd);  // bound, never listening: connections to it are refused
  ReadinessCheck check("host=127.0.0.1 port=" + std::to_string(ntohs(address.sin_port)) + " user=x dbname=x");
  BOOST_TEST((check.state() == ReadinessCheck::State::kUnreachable));
}

BOOST_AUTO_TEST_SUITE_END()
