// Non-blocking socket reads and writes, and waits on several sockets at once with a deadline.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>

namespace pgwire_proxy::session {

using Clock = std::chrono::steady_clock;

// A socket failed (reset, broken pipe ...): the connection on that side is gone.
class IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Reads what is available: the byte count, 0 at end of stream, nullopt when it would block.
[[nodiscard]] std::optional<std::size_t> readSome(int fd, std::span<char> into);

// Writes what the socket takes now (never raises SIGPIPE): the byte count, 0 when it would block.
[[nodiscard]] std::size_t writeSome(int fd, std::span<const char> data);

// What to wait for on one socket, and what happened.
struct Wait {
  int fd = -1;
  short events = 0;   // POLLIN, POLLOUT, POLLRDHUP ...
  short revents = 0;  // filled in by waitAny
};

// Waits until one of `waits` is ready, the deadline passes (returns false) or `wakeFd` (may be -1)
// becomes readable (sets *woken). Retries on EINTR.
[[nodiscard]] bool waitAny(std::span<Wait> waits, int wakeFd, std::optional<Clock::time_point> deadline,
                           bool* woken);

void setNonBlocking(int fd);

}  // namespace pgwire_proxy::session
