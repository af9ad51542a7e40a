// The HTTP side door: GET /metrics (Prometheus), /healthz (the process is up) and /readyz (ready
// for new clients), on its own small Poco HTTP server.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace Poco::Net {
class HTTPServer;
}

namespace pgwire_proxy::server {

// Whether the proxy should get new clients; `reason` says why not.
struct Readiness {
  bool ready = true;
  std::string reason;
};

class MetricsEndpoint {
 public:
  // Listens on `hostPort` ("127.0.0.1:9187"; port 0 picks one) and serves `render()` at /metrics and
  // `readiness()` at /readyz (200 or 503). Throws config::ConfigError for a malformed address,
  // std::runtime_error when it cannot listen.
  MetricsEndpoint(const std::string& hostPort, std::function<std::string()> render,
                  std::function<Readiness()> readiness);
  ~MetricsEndpoint();
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }

 private:
  std::unique_ptr<Poco::Net::HTTPServer> server_;
  std::uint16_t port_ = 0;
};

}  // namespace pgwire_proxy::server
