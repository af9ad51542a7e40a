// libFuzzer target: a real Session's client side (SSL/GSSENC negotiation, startup, cancel requests,
// refusals) fed an arbitrary byte stream over a socketpair. The upstream is unreachable, so a valid
// startup ends in 08006; everything before that is the state machine under test.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "config/server_config.h"
#include "guardrails/guardrail_set.h"
#include "observability/log.h"
#include "observability/session_observer.h"
#include "session/registry.h"
#include "session/event_loop.h"
#include "session/session.h"
#include "session/socket_io.h"

using namespace pgwire_proxy;

namespace {

struct World {
  World() {
    observability::Logger::instance().setLevel(observability::LogLevel::kOff);
    config.upstreamDsn = "host=127.0.0.1 port=1 connect_timeout=1 sslmode=disable";
    config.startupTimeout = std::chrono::milliseconds(200);
    config.connectTimeout = std::chrono::milliseconds(200);
    config.maxMessageSize = 64 * 1024;
    rails.store(std::make_shared<const guardrails::GuardrailSet>(config));
  }
  config::ServerConfig config;
  session::SessionRegistry registry{4};
  observability::SessionObserver observer;
  guardrails::GuardrailHolder rails{nullptr};
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static World world;
  // One long-lived loop thread runs every input's session, as the proxy's loops do (a thread per
  // input would grow RSS under ASan, which never frees a finished thread's context).
  static session::EventLoop& loop = *new session::EventLoop(1, -1, -1);  // never destroyed
  static session::SessionContext context{world.config, world.registry, world.observer, world.rails, nullptr, -1, -1};
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return 0;
  session::setNonBlocking(fds[0]);
  loop.adopt(std::make_unique<session::Session>(context, 1, fds[0], "fuzz"));  // owns fds[0]
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
  ::close(fds[1]);
  return 0;
}
