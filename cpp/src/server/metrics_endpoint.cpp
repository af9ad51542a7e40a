// The HTTP side door: /metrics, /healthz and /readyz on one thread that polls every socket.
//
// Not Poco's HTTPServer: in Poco 1.11 each of its connections holds a pool thread for as long as it
// lasts, and HTTPServerParams' timeout bounds each receive, not the request, so N slow clients hold
// N threads (N = 2 stalled the liveness probe). Here a connection is a descriptor, a buffer and a
// deadline; Poco still parses the request head and writes the response head.
#include "server/metrics_endpoint.h"

#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <system_error>

#include "config/server_config.h"
#include "observability/log.h"

namespace pgwire_proxy::server {
namespace {

using Poco::Net::HTTPResponse;

constexpr auto kAcceptPause = std::chrono::milliseconds(100);

// Where the request head ends (after its blank line), or npos while it is incomplete.
std::size_t headEnd(const std::string& in) {
  const std::size_t crlf = in.find("\r\n\r\n");
  if (crlf != std::string::npos) return crlf + 4;
  const std::size_t lf = in.find("\n\n");
  return lf == std::string::npos ? std::string::npos : lf + 2;
}

// A whole response; every connection closes after one (no keep-alive: a probe opens a fresh one).
std::string message(HTTPResponse::HTTPStatus status, const std::string& version, const std::string& contentType,
                    const std::string& body, bool withBody) {
  HTTPResponse response(version == Poco::Net::HTTPMessage::HTTP_1_1 ? version : Poco::Net::HTTPMessage::HTTP_1_0,
                        status);
  response.setKeepAlive(false);
  if (status == HTTPResponse::HTTP_METHOD_NOT_ALLOWED) response.set("Allow", "GET, HEAD");
  response.setContentType(contentType);
  response.setContentLength(static_cast<std::streamsize>(body.size()));
  std::ostringstream out;
  response.write(out);
  if (withBody) out << body;
  return std::move(out).str();
}

std::string plain(HTTPResponse::HTTPStatus status, const std::string& body) {
  return message(status, Poco::Net::HTTPMessage::HTTP_1_0, "text/plain; charset=utf-8", body, true);
}

}  // namespace

MetricsEndpoint::MetricsEndpoint(const std::string& hostPort, std::function<std::string()> render,
                                 std::function<Readiness()> readiness)
    : render_(std::move(render)), readiness_(std::move(readiness)) {
  Poco::Net::SocketAddress address;
  try {
    address = Poco::Net::SocketAddress(hostPort);
  } catch (const Poco::Exception& error) {
    throw config::ConfigError("metrics-address: invalid address \"" + hostPort + "\" (use HOST:PORT): " +
                              error.displayText());
  }
  try {
    listener_.bind(address, true, false);
    listener_.listen(128);
    listener_.setBlocking(false);
  } catch (const Poco::Exception& error) {
    throw std::runtime_error("metrics-address: cannot listen on " + hostPort + ": " + error.displayText());
  }
  port_ = listener_.address().port();
  wakeFd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wakeFd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  thread_ = std::thread([this] { run(); });
  (void)::pthread_setname_np(thread_.native_handle(), "pgwire-metrics");
}

MetricsEndpoint::~MetricsEndpoint() {
  const std::uint64_t one = 1;
  (void)::write(wakeFd_, &one, sizeof one);
  thread_.join();
  for (const Connection& connection : connections_) ::close(connection.fd);
  ::close(wakeFd_);
}

void MetricsEndpoint::run() {
  const int listenFd = listener_.impl()->sockfd();
  std::vector<pollfd> polled;
  while (true) {
    const auto now = Clock::now();
    const bool accepting = now >= acceptPausedUntil_;
    auto wakeAt = accepting ? Clock::time_point::max() : acceptPausedUntil_;
    polled.clear();
    polled.push_back({wakeFd_, POLLIN, 0});
    polled.push_back({accepting ? listenFd : -1, POLLIN, 0});  // poll skips a negative descriptor
    for (const Connection& connection : connections_) {
      polled.push_back({connection.fd, static_cast<short>(connection.phase == Phase::kReading ? POLLIN : POLLOUT), 0});
      wakeAt = std::min(wakeAt, connection.deadline);
    }
    int timeout = -1;
    if (wakeAt != Clock::time_point::max()) {
      timeout = static_cast<int>(std::max<std::int64_t>(
          0, std::chrono::ceil<std::chrono::milliseconds>(wakeAt - now).count()));
    }
    if (::poll(polled.data(), polled.size(), timeout) < 0 && errno != EINTR) {
      // Nothing to recover: without its endpoint the process fails its liveness probe and is restarted.
      observability::logEvent(observability::LogLevel::kError, "metrics_endpoint_failed",
                              {{"error", std::strerror(errno)}});
      return;
    }
    if (polled[0].revents != 0) return;

    const auto woke = Clock::now();
    for (std::size_t i = 0; i < connections_.size(); ++i) {
      if (polled[i + 2].revents == 0) continue;
      Connection& connection = connections_[i];
      if (connection.phase == Phase::kReading) {
        readRequest(connection, woke);
      } else if (connection.phase == Phase::kWriting) {
        writeResponse(connection);
      }
    }
    std::erase_if(connections_, [woke](const Connection& connection) {
      if (connection.phase != Phase::kDone && woke < connection.deadline) return false;
      ::close(connection.fd);  // answered, gone, or out of time
      return true;
    });
    if (accepting && (polled[1].revents & POLLIN) != 0) acceptConnections(woke);
  }
}

void MetricsEndpoint::acceptConnections(Clock::time_point now) {
  const int listenFd = listener_.impl()->sockfd();
  for (std::size_t accepted = 0; accepted < kMaxConnections; ++accepted) {  // bounded work per wake-up
    const int fd = ::accept4(listenFd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        acceptPausedUntil_ = now + kAcceptPause;  // the backlog waits; the loop does not spin
      }
      return;  // EAGAIN: the backlog is empty
    }
    if (connections_.size() >= kMaxConnections) {
      const auto oldest = std::find_if(connections_.begin(), connections_.end(), [](const Connection& connection) {
        return connection.phase == Phase::kReading;
      });
      if (oldest == connections_.end()) {
        ::close(fd);  // every slot is sending an answer: this one comes back later
        continue;
      }
      ::close(oldest->fd);
      connections_.erase(oldest);
    }
    connections_.push_back(Connection{fd, Phase::kReading, now + kRequestTimeout, {}, {}, 0});
  }
}

void MetricsEndpoint::readRequest(Connection& connection, Clock::time_point now) {
  char buffer[4096];
  while (connection.in.size() <= kMaxRequestHead && headEnd(connection.in) == std::string::npos) {
    const ssize_t got = ::recv(connection.fd, buffer, sizeof buffer, 0);
    if (got > 0) {
      connection.in.append(buffer, static_cast<std::size_t>(got));
      continue;
    }
    if (got < 0 && errno == EINTR) continue;
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;  // more later, before the deadline
    connection.phase = Phase::kDone;  // gone before finishing its request
    return;
  }
  const std::size_t end = headEnd(connection.in);
  connection.out = end == std::string::npos || end > kMaxRequestHead
                       ? plain(HTTPResponse::HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large\n")
                       : respond(connection.in.substr(0, end));
  connection.in.clear();
  connection.phase = Phase::kWriting;
  connection.deadline = now + kResponseTimeout;
  writeResponse(connection);  // usually the whole answer fits in the socket buffer at once
}

void MetricsEndpoint::writeResponse(Connection& connection) {
  while (connection.sent < connection.out.size()) {
    const ssize_t put = ::send(connection.fd, connection.out.data() + connection.sent,
                               connection.out.size() - connection.sent, MSG_NOSIGNAL);
    if (put > 0) {
      connection.sent += static_cast<std::size_t>(put);
      continue;
    }
    if (put < 0 && errno == EINTR) continue;
    if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    connection.phase = Phase::kDone;  // the client went away
    return;
  }
  (void)::shutdown(connection.fd, SHUT_WR);
  connection.phase = Phase::kDone;
}

std::string MetricsEndpoint::respond(const std::string& head) {
  Poco::Net::HTTPRequest request;
  try {
    std::istringstream stream(head);
    request.read(stream);
  } catch (const Poco::Exception&) {
    return plain(HTTPResponse::HTTP_BAD_REQUEST, "bad request\n");
  }
  const std::string& version = request.getVersion();
  const std::string path = request.getURI().substr(0, request.getURI().find('?'));
  if (path != "/metrics" && path != "/healthz" && path != "/readyz") {
    return message(HTTPResponse::HTTP_NOT_FOUND, version, "text/plain",
                   "not found; this serves /metrics, /healthz and /readyz\n", true);
  }
  const bool headOnly = request.getMethod() == Poco::Net::HTTPRequest::HTTP_HEAD;
  if (request.getMethod() != Poco::Net::HTTPRequest::HTTP_GET && !headOnly) {
    return message(HTTPResponse::HTTP_METHOD_NOT_ALLOWED, version, "text/plain", "", false);
  }
  try {
    if (path == "/metrics") {
      return message(HTTPResponse::HTTP_OK, version, "text/plain; version=0.0.4; charset=utf-8", render_(),
                     !headOnly);
    }
    // /healthz: answering at all is the proof of life. /readyz: whether new clients should come.
    const Readiness readiness = path == "/readyz" ? readiness_() : Readiness{};
    return message(readiness.ready ? HTTPResponse::HTTP_OK : HTTPResponse::HTTP_SERVICE_UNAVAILABLE, version,
                   "text/plain; charset=utf-8", readiness.ready ? "ok\n" : "not ready: " + readiness.reason + "\n",
                   !headOnly);
  } catch (const std::exception& error) {
    observability::logEvent(observability::LogLevel::kError, "metrics_endpoint_error",
                            {{"path", path}, {"error", std::string(error.what())}});
    return message(HTTPResponse::HTTP_INTERNAL_SERVER_ERROR, version, "text/plain", "internal error\n", !headOnly);
  }
}

}  // namespace pgwire_proxy::server
