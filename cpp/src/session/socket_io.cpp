// Non-blocking socket reads and writes, and waits on several sockets at once with a deadline.
#include "session/socket_io.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace pgwire_proxy::session {

std::optional<std::size_t> readSome(int fd, std::span<char> into) {
  for (;;) {
    const ssize_t n = ::recv(fd, into.data(), into.size(), 0);
    if (n >= 0) return static_cast<std::size_t>(n);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return std::nullopt;
    throw IoError(std::string("read failed: ") + std::strerror(errno));
  }
}

std::size_t writeSome(int fd, std::span<const char> data) {
  for (;;) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n >= 0) return static_cast<std::size_t>(n);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    throw IoError(std::string("write failed: ") + std::strerror(errno));
  }
}

bool waitAny(std::span<Wait> waits, int wakeFd, std::optional<Clock::time_point> deadline, bool* woken) {
  std::array<pollfd, 4> fds{};
  std::size_t count = 0;
  for (const auto& w : waits) fds[count++] = pollfd{w.fd, w.events, 0};
  const std::size_t wakeIndex = count;
  if (wakeFd >= 0) fds[count++] = pollfd{wakeFd, POLLIN, 0};
  for (;;) {
    int timeout = -1;
    if (deadline) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - Clock::now()).count();
      if (left <= 0) return false;
      timeout = static_cast<int>(std::min<long long>(left, 60'000));
    }
    const int ready = ::poll(fds.data(), count, timeout);
    if (ready < 0) {
      if (errno == EINTR) continue;
      throw IoError(std::string("poll failed: ") + std::strerror(errno));
    }
    if (ready == 0) continue;  // re-check the deadline
    for (std::size_t i = 0; i < waits.size(); ++i) waits[i].revents = fds[i].revents;
    if (woken != nullptr) *woken = wakeFd >= 0 && fds[wakeIndex].revents != 0;
    return true;
  }
}

void setNonBlocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    throw IoError(std::string("fcntl failed: ") + std::strerror(errno));
  }
}

}  // namespace pgwire_proxy::session
