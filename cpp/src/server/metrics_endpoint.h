// The HTTP side door: GET /metrics (Prometheus), /healthz (the process is up) and /readyz (ready
// for new clients), served by one thread that polls every socket: an idle or slow client costs a
// descriptor until its deadline, never a thread.
#pragma once

#include <Poco/Net/ServerSocket.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace pgwire_proxy::server {

// Whether the proxy should get new clients; `reason` says why not.
struct Readiness {
  bool ready = true;
  std::string reason;
};

class MetricsEndpoint {
 public:
  // Connections open at once. One more closes the oldest that has not finished its request (then
  // the new one if all are answering), so a flood of silent sockets cannot shut a probe out.
  static constexpr std::size_t kMaxConnections = 64;
  static constexpr std::size_t kMaxRequestHead = 8192;                   // request line and headers
  static constexpr std::chrono::milliseconds kRequestTimeout{2000};   // from accept to the whole request head
  static constexpr std::chrono::milliseconds kResponseTimeout{5000};  // for the client to take the answer

  // Listens on `hostPort` ("127.0.0.1:9187"; port 0 picks one) and serves `render()` at /metrics and
  // `readiness()` at /readyz (200 or 503), both called on the endpoint's thread, so they must not
  // block. Throws config::ConfigError for a malformed address, std::runtime_error when it cannot listen.
  MetricsEndpoint(const std::string& hostPort, std::function<std::string()> render,
                  std::function<Readiness()> readiness);
  // Stops and joins the thread, closing every connection.
  ~MetricsEndpoint();
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }

 private:
  using Clock = std::chrono::steady_clock;
  enum class Phase { kReading, kWriting, kDone };
  struct Connection {
    int fd = -1;
    Phase phase = Phase::kReading;
    Clock::time_point deadline;
    std::string in;   // the request head so far
    std::string out;  // the whole response once the head is in
    std::size_t sent = 0;
  };

  void run();
  void acceptConnections(Clock::time_point now);
  void readRequest(Connection& connection, Clock::time_point now);
  void writeResponse(Connection& connection);
  [[nodiscard]] std::string respond(const std::string& head);

  std::function<std::string()> render_;
  std::function<Readiness()> readiness_;
  Poco::Net::ServerSocket listener_;
  std::uint16_t port_ = 0;
  int wakeFd_ = -1;  // written once by the destructor: the thread returns
  Clock::time_point acceptPausedUntil_{};  // after EMFILE, so a full descriptor table does not spin the loop
  std::vector<Connection> connections_;  // in accept order; the endpoint's thread alone touches them
  std::thread thread_;
};

}  // namespace pgwire_proxy::server
