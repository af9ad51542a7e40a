// Test support: blocking loopback sockets with timeouts, message helpers, and a scripted upstream
// server that speaks just enough of the backend protocol for libpq to connect.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

// Checks inside a ScriptedUpstream script, which runs on its own thread where Boost.Test must not be
// called: a failure throws, and join() rethrows it on the test's thread.
#define SCRIPT_CHECK(condition)                                                                   \
  do {                                                                                            \
    if (!(condition)) throw std::runtime_error("scripted upstream: check failed: " #condition);  \
  } while (false)

namespace test_support {

// A connected blocking socket whose reads fail after `timeout` seconds instead of hanging a test.
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  static Socket connectTo(std::uint16_t port, double timeoutSeconds = 10);
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&&) = delete;
  ~Socket();

  [[nodiscard]] int fd() const { return fd_; }
  void send(const std::string& bytes) const;
  // Exactly n bytes; throws on timeout or EOF.
  [[nodiscard]] std::string receiveExactly(std::size_t n) const;
  // One typed message (type byte + length + body), or nullopt at a clean EOF.
  [[nodiscard]] std::optional<std::pair<char, std::string>> receiveMessage() const;
  // Reads until EOF (true) or timeout (false).
  [[nodiscard]] bool waitForEof() const;
  void close();

 private:
  int fd_;
};

std::string startupMessage(const std::vector<std::pair<std::string, std::string>>& params);
std::string untypedPacket(const std::vector<std::int32_t>& words);
std::string message(char type, const std::string& body);
inline std::string cstring(const std::string& s) { return s + '\0'; }
std::string int32(std::int32_t v);
std::string int16(std::int16_t v);
// Field 'C' of an ErrorResponse body.
std::string errorField(const std::string& body, char code);

// A one-connection backend: performs the startup handshake, records the startup parameters, then
// runs `script` with the connected socket on its own thread.
class ScriptedUpstream {
 public:
  using Script = std::function<void(Socket&)>;
  explicit ScriptedUpstream(Script script);
  ~ScriptedUpstream();

  [[nodiscard]] std::uint16_t port() const { return port_; }
  [[nodiscard]] std::string dsn() const;
  // Startup parameters libpq sent (valid after the handshake).
  [[nodiscard]] std::string parameter(const std::string& name);
  void join();
  // CancelRequests received on further connections (the proxy's PQcancel).
  [[nodiscard]] int cancelRequests() const { return cancels_.load(); }

 private:
  std::atomic<int> cancels_{0};
  std::thread cancelThread_;
  int listenFd_ = -1;
  std::uint16_t port_ = 0;
  Script script_;
  std::vector<std::pair<std::string, std::string>> params_;
  std::thread thread_;
  std::exception_ptr failure_;
};

}  // namespace test_support
