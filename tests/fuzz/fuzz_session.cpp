// libFuzzer target: a real Session's client side (SSL/GSSENC negotiation, startup, cancel requests,
// refusals) fed an arbitrary byte stream over a socketpair. The upstream is unreachable, so a valid
// startup ends in 08006; everything before that is the state machine under test.
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
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
    rails.store(std::make_shared<const guardrails::GuardrailSet>(config));
  }
  config::ServerConfig config;
  session::SessionRegistry registry{4};
  observability::SessionObserver observer;
  guardrails::GuardrailHolder rails{nullptr};
};

// One long-lived server thread runs every input's session, as the proxy's pooled threads do. A thread
// per input would grow RSS by ~190 bytes an input under ASan, which never frees a finished thread's
// context (AsanThreadContext), and hit libFuzzer's -rss_limit_mb after ~10M inputs.
class ServerThread {
 public:
  ServerThread() : thread_([this] { loop(); }) { thread_.detach(); }  // lives until the process exits
  void start(std::function<void()> job) {
    std::lock_guard lock(mutex_);
    job_ = std::move(job);
    done_ = false;
    wake_.notify_all();
  }
  void join() {
    std::unique_lock lock(mutex_);
    wake_.wait(lock, [this] { return done_; });
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return job_ != nullptr; });
        job = std::move(job_);
        job_ = nullptr;
      }
      job();
      std::lock_guard lock(mutex_);
      done_ = true;
      wake_.notify_all();
    }
  }
  std::mutex mutex_;
  std::condition_variable wake_;
  std::function<void()> job_;
  bool done_ = true;
  std::thread thread_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static World world;
  static ServerThread& server = *new ServerThread;  // never destroyed: it may be waiting at exit
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return 0;
  session::SessionContext context{world.config, world.registry, world.observer, world.rails, nullptr, -1, -1};
  server.start([&] {
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
