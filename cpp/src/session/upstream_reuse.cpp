// --reuse-upstream on the event loop: the reset between clients, parking and the idle sweep.
#include "session/upstream_reuse.h"

#include <poll.h>

#include <utility>

#include "observability/log.h"
#include "protocol/constants.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "protocol/reader.h"
#include "protocol/writer.h"
#include "session/socket_io.h"

namespace pgwire_proxy::session {
namespace {

namespace be = protocol::backend;

// Replies to the proxy's own statements are small; a larger frame means the link is not what it seems.
constexpr std::uint32_t kMaxReply = 64 * 1024;
constexpr auto kResetTimeout = std::chrono::seconds(5);

}  // namespace

ProxyStatement::ProxyStatement(std::string_view sql) {
  protocol::MessageWriter writer(out_);
  writer.beginMessage(protocol::frontend::kQuery);
  writer.writeCString(sql);
  writer.endMessage();
}

ProxyStatement::Outcome ProxyStatement::fail(std::string why) {
  why_ = std::move(why);
  return Outcome::kFailed;
}

ProxyStatement::Outcome ProxyStatement::step(Channel& link, upstream::UpstreamConnection& connection, short& events) {
  try {
    bool sentNow = false;
    while (sent_ < out_.size()) {
      const std::size_t written = link.write(std::span<const char>(out_).subspan(sent_));
      if (written == 0) {
        events = link.writeEvents();
        return Outcome::kWaiting;
      }
      sent_ += written;
      sentNow = true;
    }
    if (sentNow && !link.hasPendingInput()) {
      // The server cannot have answered a statement sent a moment ago (DISCARD ALL takes it hundreds
      // of microseconds): wait for the answer instead of a read that finds nothing, a syscall per reset.
      events = link.readEvents();
      return Outcome::kWaiting;
    }
    for (;;) {
      while (const auto frame = protocol::decodeFrame(in_.readable(), kMaxReply)) {
        const std::span<const char> body = frame->body();
        switch (frame->type()) {
          case be::kErrorResponse: {
            const auto fields = protocol::parseErrorFields(body);
            errored_ = true;
            why_ = std::string(fields.get('C')) + ": " + std::string(fields.get('M'));
            if (fields.isFatal()) return Outcome::kFailed;
            break;
          }
          case be::kParameterStatus: {
            const auto parameter = protocol::parseParameterStatus(body);
            connection.noteParameter(parameter.name, parameter.value);
            break;
          }
          case be::kReadyForQuery:
            in_.consume(frame->bytes.size());
            if (errored_) return Outcome::kFailed;
            if (body.size() != 1 || body[0] != protocol::kTxIdle) return fail("not idle after the reset");
            if (!in_.empty()) return fail("unexpected bytes after ReadyForQuery");
            return Outcome::kDone;
          case be::kCommandComplete:
          case be::kNoticeResponse:
            break;
          default:
            return fail(std::string("unexpected message type ") + frame->type());
        }
        in_.consume(frame->bytes.size());
      }
      const auto count = link.read(in_.prepareWrite(4096));
      if (!count) {
        events = link.readEvents();
        return Outcome::kWaiting;
      }
      if (*count == 0) return fail("the upstream closed the connection");
      in_.commitWrite(*count);
    }
  } catch (const IoError& error) {
    return fail(error.what());
  } catch (const ProtocolError& error) {
    return fail(error.what());
  }
}

std::unique_ptr<Channel> upstreamChannel(upstream::UpstreamConnection& connection) {
  if (ssl_st* ssl = connection.sslObject()) return std::make_unique<TlsChannel>(ssl, connection.socket(), false);
  return std::make_unique<PlainChannel>(connection.socket());
}

UpstreamReset::UpstreamReset(upstream::UpstreamPool& pool, std::string key,
                             std::unique_ptr<upstream::UpstreamConnection> connection, std::uint64_t sessionId)
    : pool_(pool), key_(std::move(key)), connection_(std::move(connection)), link_(upstreamChannel(*connection_)),
      sessionId_(sessionId), deadline_(Clock::now() + kResetTimeout) {
  pool_.resetStarted(key_);  // a client of the same key arriving now waits for it
}

UpstreamReset::~UpstreamReset() {
  link_.reset();
  // Out of this loop's set by now: another loop may take it at once. Not reset: closed with the task.
  pool_.resetEnded(key_, reset_ ? std::move(connection_) : nullptr);
}

std::optional<Interest> UpstreamReset::advance(const Readiness& ready) noexcept {
  if (ready.shutdown) return std::nullopt;  // closed with the task
  short events = 0;
  const auto outcome = discard_.step(*link_, *connection_, events);
  if (outcome == ProxyStatement::Outcome::kWaiting) {
    if (!(ready.timedOut && Clock::now() >= deadline_)) {
      Interest interest;
      interest.clientFd = link_->fd();
      interest.client = events;
      interest.deadline = deadline_;
      return interest;
    }
    observability::logEvent(observability::LogLevel::kWarning, "upstream_reset_failed",
                            {{"session", sessionId_}, {"error", "timeout"}});
    connection_->abandon();
    return std::nullopt;
  }
  if (outcome == ProxyStatement::Outcome::kFailed) {
    observability::logEvent(observability::LogLevel::kWarning, "upstream_reset_failed",
                            {{"session", sessionId_}, {"error", discard_.why()}});
    connection_->abandon();
    return std::nullopt;
  }
  reset_ = true;
  return std::nullopt;
}

std::optional<Interest> PoolSweeper::advance(const Readiness& ready) noexcept {
  if (ready.shutdown) {
    pool_.clear();
    return std::nullopt;
  }
  Interest interest;
  interest.deadline = pool_.sweep().value_or(Clock::now() + idleTimeout_);
  return interest;
}

}  // namespace pgwire_proxy::session
