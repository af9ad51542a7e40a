// A CancelRequest sent on a fresh non-blocking socket, driven by the event loop with a deadline.
#include "session/cancel_sender.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "observability/log.h"
#include "protocol/constants.h"

namespace pgwire_proxy::session {
namespace {

void putInt32(char* at, std::uint32_t value) {
  at[0] = static_cast<char>(value >> 24);
  at[1] = static_cast<char>(value >> 16);
  at[2] = static_cast<char>(value >> 8);
  at[3] = static_cast<char>(value);
}

}  // namespace

CancelSender::CancelSender(CancelDestination destination, std::chrono::milliseconds timeout, std::uint64_t sessionId,
                           std::function<void(bool)> done)
    : destination_(std::move(destination)), sessionId_(sessionId), done_(std::move(done)),
      deadline_(Clock::now() + timeout) {
  putInt32(packet_, 16);
  putInt32(packet_ + 4, static_cast<std::uint32_t>(destination_.forwarded ? protocol::kForwardedCancelCode
                                                                            : protocol::kCancelRequestCode));
  putInt32(packet_ + 8, static_cast<std::uint32_t>(destination_.processId));
  putInt32(packet_ + 12, static_cast<std::uint32_t>(destination_.secretKey));
}

CancelSender::~CancelSender() {
  if (fd_ >= 0) ::close(fd_);
  if (done_) end(false, "abandoned");
}

void CancelSender::end(bool delivered, const std::string& error) {
  if (!delivered) {
    observability::logEvent(observability::LogLevel::kWarning, "cancel_failed",
                            {{"session", sessionId_}, {"to", destination_.label}, {"error", error}});
  }
  if (auto done = std::exchange(done_, {})) done(delivered);
}

Interest CancelSender::wait(short events) const {
  Interest interest;
  interest.clientFd = fd_;
  interest.client = events;
  interest.deadline = deadline_;
  return interest;
}

std::optional<Interest> CancelSender::advance(const Readiness& ready) noexcept {
  try {
    if (ready.timedOut && Clock::now() >= deadline_) {
      end(false, "timeout expired");
      return std::nullopt;
    }
    if (state_ == State::kStart) {
      fd_ = ::socket(destination_.address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd_ < 0) {
        end(false, std::string("socket: ") + std::strerror(errno));
        return std::nullopt;
      }
      if (::connect(fd_, reinterpret_cast<const sockaddr*>(&destination_.address), destination_.addressLength) != 0 &&
          errno != EINPROGRESS && errno != EAGAIN) {
        end(false, std::string("connect: ") + std::strerror(errno));
        return std::nullopt;
      }
      state_ = State::kConnecting;
    }
    if (state_ == State::kConnecting) {
      if ((ready.client & (POLLOUT | POLLERR | POLLHUP)) == 0) {
        return wait(POLLOUT);
      }
      int error = 0;
      socklen_t length = sizeof error;
      if (::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
      if (error != 0) {
        end(false, std::string("connect: ") + std::strerror(error));
        return std::nullopt;
      }
      state_ = State::kSending;
    }
    if (state_ == State::kSending) {
      while (sent_ < sizeof packet_) {
        const ssize_t n = ::send(fd_, packet_ + sent_, sizeof packet_ - sent_, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return wait(POLLOUT);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          end(false, std::string("send: ") + std::strerror(errno));
          return std::nullopt;
        }
        sent_ += static_cast<std::size_t>(n);
      }
      (void)::shutdown(fd_, SHUT_WR);
      state_ = State::kAwaitingClose;
      return wait(static_cast<short>(POLLIN | POLLRDHUP));
    }
    // The receiver reads the request, acts on it, and closes: then the cancel has taken effect.
    char byte = 0;
    const ssize_t n = ::recv(fd_, &byte, 1, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      return wait(static_cast<short>(POLLIN | POLLRDHUP));
    }
    end(true, {});
    return std::nullopt;
  } catch (...) {
    end(false, "internal error");
    return std::nullopt;
  }
}

}  // namespace pgwire_proxy::session
