// Test support: blocking loopback sockets with timeouts, message helpers, and a scripted upstream.
#include "test_support.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace test_support {
namespace {

void setTimeout(int fd, double seconds) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(seconds);
  tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

std::uint32_t be32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return (std::uint32_t{u[0]} << 24) | (std::uint32_t{u[1]} << 16) | (std::uint32_t{u[2]} << 8) | u[3];
}

}  // namespace

Socket Socket::connectTo(std::uint16_t port, double timeoutSeconds) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    ::close(fd);
    throw std::runtime_error(std::string("connect: ") + std::strerror(errno));
  }
  setTimeout(fd, timeoutSeconds);
  return Socket(fd);
}

Socket::~Socket() { close(); }

void Socket::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void Socket::send(const std::string& bytes) const {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n <= 0) throw std::runtime_error(std::string("send: ") + std::strerror(errno));
    done += static_cast<std::size_t>(n);
  }
}

std::string Socket::receiveExactly(std::size_t n) const {
  std::string out(n, '\0');
  std::size_t done = 0;
  while (done < n) {
    const ssize_t got = ::recv(fd_, out.data() + done, n - done, 0);
    if (got == 0) throw std::runtime_error("unexpected EOF after " + std::to_string(done) + " bytes");
    if (got < 0) throw std::runtime_error(std::string("recv: ") + std::strerror(errno));
    done += static_cast<std::size_t>(got);
  }
  return out;
}

std::optional<std::pair<char, std::string>> Socket::receiveMessage() const {
  char type = 0;
  const ssize_t got = ::recv(fd_, &type, 1, 0);
  if (got == 0) return std::nullopt;
  if (got < 0) throw std::runtime_error(std::string("recv: ") + std::strerror(errno));
  const std::string length = receiveExactly(4);
  const std::uint32_t n = be32(length.data());
  if (n < 4) throw std::runtime_error("bad length");
  return std::make_pair(type, receiveExactly(n - 4));
}

bool Socket::waitForEof() const {
  char buffer[4096];
  for (;;) {
    const ssize_t got = ::recv(fd_, buffer, sizeof buffer, 0);
    if (got == 0) return true;
    if (got < 0) return errno == ECONNRESET;
  }
}

std::string int32(std::int32_t v) {
  const auto u = static_cast<std::uint32_t>(v);
  return {static_cast<char>(u >> 24), static_cast<char>(u >> 16), static_cast<char>(u >> 8), static_cast<char>(u)};
}

std::string int16(std::int16_t v) {
  const auto u = static_cast<std::uint16_t>(v);
  return {static_cast<char>(u >> 8), static_cast<char>(u)};
}

std::string message(char type, const std::string& body) {
  // Appended in order into one buffer: `std::string(1, type) + int32(...) + body` prepends into a
  // temporary (operator+(string&&, string&&) is an insert at 0), where GCC 12 at -O3 reports a bogus
  // -Wrestrict overlap.
  std::string out;
  out.reserve(body.size() + 5);
  out += type;
  out += int32(static_cast<std::int32_t>(body.size() + 4));
  out += body;
  return out;
}

std::string untypedPacket(const std::vector<std::int32_t>& words) {
  std::string body;
  for (auto w : words) body += int32(w);
  return int32(static_cast<std::int32_t>(body.size() + 4)) + body;
}

std::string startupMessage(const std::vector<std::pair<std::string, std::string>>& params) {
  std::string body = int32(196608);
  for (const auto& [k, v] : params) body += cstring(k) + cstring(v);
  body += '\0';
  return int32(static_cast<std::int32_t>(body.size() + 4)) + body;
}

std::string errorField(const std::string& body, char code) {
  std::size_t pos = 0;
  while (pos < body.size() && body[pos] != '\0') {
    const char field = body[pos++];
    const std::size_t end = body.find('\0', pos);
    if (field == code) return body.substr(pos, end - pos);
    pos = end + 1;
  }
  return {};
}

ScriptedUpstream::ScriptedUpstream(Script script) : script_(std::move(script)) {
  listenFd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (::bind(listenFd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 || ::listen(listenFd_, 4) != 0 ||
      ::getsockname(listenFd_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    throw std::runtime_error("scripted upstream: cannot listen");
  }
  port_ = ntohs(address.sin_port);
  thread_ = std::thread([this] {
    try {
      const int fd = ::accept(listenFd_, nullptr, nullptr);
      if (fd < 0) return;
      Socket socket(fd);
      setTimeout(fd, 10);
      // Further connections are cancel requests: count them, close them (as the postmaster does).
      cancelThread_ = std::thread([this] {
        for (;;) {
          const int cancelFd = ::accept(listenFd_, nullptr, nullptr);
          if (cancelFd < 0) return;
          Socket cancel(cancelFd);
          setTimeout(cancelFd, 5);
          try {
            if (cancel.receiveExactly(16).substr(4, 4) == int32(80877102)) ++cancels_;
          } catch (...) {
          }
        }
      });
      const std::uint32_t packetLength = be32(socket.receiveExactly(4).data());
      const std::string body = socket.receiveExactly(packetLength - 4);
      std::size_t pos = 4;
      while (pos < body.size() && body[pos] != '\0') {
        const std::size_t keyEnd = body.find('\0', pos);
        const std::size_t valueEnd = body.find('\0', keyEnd + 1);
        params_.emplace_back(body.substr(pos, keyEnd - pos), body.substr(keyEnd + 1, valueEnd - keyEnd - 1));
        pos = valueEnd + 1;
      }
      std::string hello = message('R', int32(0));
      for (const auto& [k, v] : std::vector<std::pair<std::string, std::string>>{
               {"server_version", "15.0"}, {"client_encoding", "UTF8"}, {"application_name", "ignored"},
               {"DateStyle", "ISO, MDY"}, {"integer_datetimes", "on"}, {"standard_conforming_strings", "on"}}) {
        hello += message('S', cstring(k) + cstring(v));
      }
      hello += message('K', int32(4242) + int32(99));
      hello += message('Z', "I");
      socket.send(hello);
      script_(socket);
    } catch (...) {
      failure_ = std::current_exception();
    }
  });
}

ScriptedUpstream::~ScriptedUpstream() {
  ::shutdown(listenFd_, SHUT_RDWR);
  if (thread_.joinable()) thread_.join();
  if (cancelThread_.joinable()) cancelThread_.join();
  ::close(listenFd_);
}

void ScriptedUpstream::join() {
  if (thread_.joinable()) thread_.join();
  if (failure_) std::rethrow_exception(failure_);
}

std::string ScriptedUpstream::dsn() const {
  return "host=127.0.0.1 port=" + std::to_string(port_) + " user=tester dbname=testdb sslmode=disable gssencmode=disable";
}

std::string ScriptedUpstream::parameter(const std::string& name) {
  for (const auto& [k, v] : params_) {
    if (k == name) return v;
  }
  return {};
}

}  // namespace test_support
