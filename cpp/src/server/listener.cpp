// The front door on the event loop.
#include "server/listener.h"

#include <Poco/Net/ServerSocket.h>
#include <poll.h>

namespace pgwire_proxy::server {
namespace {

// How long accepting stops when the process is out of descriptors or memory: a level-triggered
// listening socket would otherwise wake the loop again at once.
constexpr auto kPause = std::chrono::milliseconds(100);

}  // namespace

Listener::Listener(Acceptor& acceptor, std::shared_ptr<Poco::Net::ServerSocket> socket)
    : acceptor_(acceptor), socket_(std::move(socket)), fd_(socket_->impl()->sockfd()) {}

// The last listener's copy closes the socket, after every loop took it out of its epoll set.
Listener::~Listener() = default;

// Not watching the socket (it stays readable) until the pause ends.
session::Interest Listener::paused() const {
  session::Interest interest;
  interest.clientFd = fd_;
  interest.deadline = pausedUntil_;
  return interest;
}

std::optional<session::Interest> Listener::advance(const session::Readiness& ready) noexcept {
  if (ready.shutdown) return std::nullopt;
  if (pausedUntil_) {
    if (!ready.timedOut) return paused();
    pausedUntil_.reset();
  }
  // One connection per step. The socket stays readable while more wait, so the loop comes back for
  // the next at its next turn (a burst does not keep it from its sessions); accepting until EAGAIN
  // cost a failed accept per connection when they arrive one at a time, as a connection storm's do.
  if (ready.client != 0) {
    switch (acceptor_.acceptOne(fd_, loop())) {
      case AcceptOutcome::kAccepted:
      case AcceptOutcome::kRetry:
      case AcceptOutcome::kDrained:
        break;
      case AcceptOutcome::kPause:
        pausedUntil_ = session::Clock::now() + kPause;
        return paused();
      case AcceptOutcome::kClosed:
        return std::nullopt;
    }
  }
  session::Interest interest;
  interest.clientFd = fd_;
  interest.client = POLLIN;
  interest.exclusive = true;  // every loop watches the socket: a connection wakes one of them
  return interest;
}

}  // namespace pgwire_proxy::server
