// A CancelRequest sent on a fresh non-blocking socket, driven by the event loop with a deadline:
// the proxy's own cancels of upstream statements (libpq 15's PQcancel blocks with no connect
// timeout), and cancel requests forwarded to the instance that issued the key.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "session/loop_task.h"

namespace pgwire_proxy::session {

// Where a CancelRequest goes and what it says.
struct CancelDestination {
  sockaddr_storage address{};
  socklen_t addressLength = 0;
  std::int32_t processId = 0;
  std::int32_t secretKey = 0;
  bool forwarded = false;  // the peer-forwarding code: the receiver must not forward it again
  std::string label;       // for logs: "upstream" or the peer's host:port
};

class CancelSender final : public LoopTask {
 public:
  // `done` (may be empty) runs on the loop thread once the request was delivered (the receiver
  // closed the connection after reading it: PostgreSQL has signalled the backend) or has failed.
  CancelSender(CancelDestination destination, std::chrono::milliseconds timeout, std::uint64_t sessionId,
               std::function<void(bool delivered)> done = {});
  ~CancelSender() override;
  CancelSender(const CancelSender&) = delete;
  CancelSender& operator=(const CancelSender&) = delete;

  [[nodiscard]] std::optional<Interest> advance(const Readiness& ready) noexcept override;

 private:
  enum class State { kStart, kConnecting, kSending, kAwaitingClose };
  void end(bool delivered, const std::string& error);
  [[nodiscard]] Interest wait(short events) const;

  CancelDestination destination_;
  const std::uint64_t sessionId_;
  std::function<void(bool)> done_;
  Clock::time_point deadline_;
  State state_ = State::kStart;
  int fd_ = -1;
  char packet_[16] = {};
  std::size_t sent_ = 0;
};

}  // namespace pgwire_proxy::session
