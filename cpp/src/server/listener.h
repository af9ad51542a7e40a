// The front door on the event loop: every loop thread watches the listening socket and accepts what
// arrives, so a connection costs no thread hand-over before its first byte is read.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "session/loop_task.h"

namespace Poco::Net {
class ServerSocket;
}

namespace pgwire_proxy::server {

// What one accept attempt came to.
enum class AcceptOutcome : std::uint8_t {
  kAccepted,  // a session was started
  kDrained,   // nothing waiting (EAGAIN), or another loop is accepting: the socket says if more wait
  kRetry,     // this connection failed (reset before accept, a network error): try the next
  kPause,     // out of descriptors or memory: stop accepting for a while
  kClosed,    // the listening socket was shut down
};

// Accepts one connection from `listenFd` and starts its session near `here`.
class Acceptor {
 public:
  virtual ~Acceptor() = default;
  [[nodiscard]] virtual AcceptOutcome acceptOne(int listenFd, session::LoopHandle& here) noexcept = 0;
};

// One per loop thread; all share the listening socket, which closes when the last of them ends
// (they end when the server begins shutting down, or when the socket is shut down under them).
class Listener final : public session::LoopTask {
 public:
  Listener(Acceptor& acceptor, std::shared_ptr<Poco::Net::ServerSocket> socket);
  ~Listener() override;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  [[nodiscard]] std::optional<session::Interest> advance(const session::Readiness& ready) noexcept override;

 private:
  [[nodiscard]] session::Interest paused() const;

  Acceptor& acceptor_;
  std::shared_ptr<Poco::Net::ServerSocket> socket_;
  int fd_;
  std::optional<session::Clock::time_point> pausedUntil_;
};

}  // namespace pgwire_proxy::server
