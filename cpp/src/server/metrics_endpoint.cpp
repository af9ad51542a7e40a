// The HTTP side door: /metrics, /healthz and /readyz on their own small Poco HTTP server.
#include "server/metrics_endpoint.h"

#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/ServerSocket.h>

#include "config/server_config.h"

namespace pgwire_proxy::server {
namespace {

struct Callbacks {
  std::function<std::string()> render;
  std::function<Readiness()> readiness;
};

class MetricsHandler final : public Poco::Net::HTTPRequestHandler {
 public:
  explicit MetricsHandler(const Callbacks& callbacks) : callbacks_(callbacks) {}

  void handleRequest(Poco::Net::HTTPServerRequest& request, Poco::Net::HTTPServerResponse& response) override {
    const std::string path = request.getURI().substr(0, request.getURI().find('?'));
    if (path != "/metrics" && path != "/healthz" && path != "/readyz") {
      response.setStatusAndReason(Poco::Net::HTTPResponse::HTTP_NOT_FOUND);
      response.setContentType("text/plain");
      response.send() << "not found; this serves /metrics, /healthz and /readyz\n";
      return;
    }
    if (request.getMethod() != "GET" && request.getMethod() != "HEAD") {
      response.setStatusAndReason(Poco::Net::HTTPResponse::HTTP_METHOD_NOT_ALLOWED);
      response.send();
      return;
    }
    std::string body;
    if (path == "/metrics") {
      body = callbacks_.render();
      response.setContentType("text/plain; version=0.0.4; charset=utf-8");
    } else {
      // /healthz: answering at all is the proof of life. /readyz: whether new clients should come.
      const Readiness readiness = path == "/readyz" ? callbacks_.readiness() : Readiness{};
      body = readiness.ready ? "ok\n" : "not ready: " + readiness.reason + "\n";
      if (!readiness.ready) response.setStatusAndReason(Poco::Net::HTTPResponse::HTTP_SERVICE_UNAVAILABLE);
      response.setContentType("text/plain; charset=utf-8");
    }
    response.setContentLength(static_cast<std::streamsize>(body.size()));
    auto& out = response.send();
    if (request.getMethod() == "GET") out << body;
  }

 private:
  const Callbacks& callbacks_;
};

class MetricsHandlerFactory final : public Poco::Net::HTTPRequestHandlerFactory {
 public:
  explicit MetricsHandlerFactory(Callbacks callbacks) : callbacks_(std::move(callbacks)) {}
  Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
    return new MetricsHandler(callbacks_);
  }

 private:
  Callbacks callbacks_;
};

}  // namespace

MetricsEndpoint::MetricsEndpoint(const std::string& hostPort, std::function<std::string()> render,
                                 std::function<Readiness()> readiness) {
  Poco::Net::SocketAddress address;
  try {
    address = Poco::Net::SocketAddress(hostPort);
  } catch (const Poco::Exception& error) {
    throw config::ConfigError("metrics-address: invalid address \"" + hostPort + "\" (use HOST:PORT): " +
                              error.displayText());
  }
  Poco::Net::ServerSocket socket;
  try {
    socket.bind(address, true, false);
    socket.listen(64);
  } catch (const Poco::Exception& error) {
    throw std::runtime_error("metrics-address: cannot listen on " + hostPort + ": " + error.displayText());
  }
  port_ = socket.address().port();
  auto* params = new Poco::Net::HTTPServerParams;
  params->setMaxThreads(2);
  params->setMaxQueued(16);
  params->setKeepAlive(false);
  server_ = std::make_unique<Poco::Net::HTTPServer>(
      new MetricsHandlerFactory(Callbacks{std::move(render), std::move(readiness)}), socket, params);
  server_->start();
}

MetricsEndpoint::~MetricsEndpoint() {
  if (server_) server_->stopAll(true);
}

}  // namespace pgwire_proxy::server
