// libFuzzer target: a real Session's client side (SSL/GSSENC negotiation, startup, cancel requests,
// refusals) fed an arbitrary byte stream over a socketpair. The upstream is unreachable, so a valid
// startup ends in 08006; everything before that is the state machine under test.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <thread>

#include "config/server_config.h"
#include "guardrails/guardrail_set.h"
#include "observability/log.h"
#include "observability/session_observer.h"
#include "session/registry.h"
#include "session/session.h"

using namespace pgwire_proxy;

namespace {

struct World {
  World() {
    observability::Logger::instance().setLevel(observability::LogLevel::kOff);
    config.upstreamDsn = "host=127.0.0.1 port=1 connect_timeout=1 sslmode=disable";
    config.startupTimeout = std::chrono::milliseconds(200);
    config.connectTimeout = std::chrono::milliseconds(200);
    config.maxMessageSize = 64 * 1024;
    rails = std::make_shared<const guardrails::GuardrailSet>(config);
  }
  config::ServerConfig config;
  session::SessionRegistry registry{4};
  observability::SessionObserver observer;
  std::atomic<std::shared_ptr<const guardrails::GuardrailSet>> rails;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static World world;
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return 0;
  session::SessionContext context{world.config, world.registry, world.observer, world.rails, nullptr, -1, -1};
  std::thread server([&] {
    session::Session session(context, 1, fds[0], "fuzz");
    session.run();
    ::shutdown(fds[0], SHUT_RDWR);
  });
  // Feed the input, then end the stream; drain whatever the session answers until it closes.
  std::size_t sent = 0;
  while (sent < size) {
    const ssize_t n = ::send(fds[1], data + sent, size - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<std::size_t>(n);
  }
  ::shutdown(fds[1], SHUT_WR);
  char buffer[4096];
  while (::recv(fds[1], buffer, sizeof buffer, 0) > 0) {
  }
  server.join();
  ::close(fds[0]);
  ::close(fds[1]);
  return 0;
}
