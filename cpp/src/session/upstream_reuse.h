// --reuse-upstream on the event loop: the statements the proxy runs on an upstream between two
// clients (DISCARD ALL when one leaves, the next one's application_name when it arrives), the task
// that resets a finished session's connection and parks it, and the task that closes idle ones.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "session/byte_buffer.h"
#include "session/channel.h"
#include "session/loop_task.h"
#include "upstream/upstream_connection.h"
#include "upstream/upstream_pool.h"

namespace pgwire_proxy::session {

// One simple Query of the proxy's own on an idle upstream, its replies read to ReadyForQuery.
// ParameterStatus values it reports are passed to the connection (what the next client is told).
class ProxyStatement {
 public:
  enum class Outcome { kWaiting, kDone, kFailed };

  explicit ProxyStatement(std::string_view sql);
  // Writes and reads what it can. kWaiting: wait for `events` on the link; kDone: ReadyForQuery
  // 'I' without an error; kFailed: an error, anything unexpected or the link lost (why() says).
  [[nodiscard]] Outcome step(Channel& link, upstream::UpstreamConnection& connection, short& events);
  [[nodiscard]] const std::string& why() const noexcept { return why_; }

 private:
  Outcome fail(std::string why);

  std::string out_;
  std::size_t sent_ = 0;
  ByteBuffer in_{4096};
  bool errored_ = false;
  std::string why_;
};

// The link a relay uses for a connection: libpq's TLS object when it made one, else the socket.
[[nodiscard]] std::unique_ptr<Channel> upstreamChannel(upstream::UpstreamConnection& connection);

// A finished session's upstream: DISCARD ALL (prepared statements, temporary tables, session
// settings, advisory locks, LISTEN; application_name back to the connection's first client's), then
// parked in the pool; closed instead on any error, on
// shutdown or when the reset does not finish within its deadline.
class UpstreamReset final : public LoopTask {
 public:
  UpstreamReset(upstream::UpstreamPool& pool, std::string key, std::unique_ptr<upstream::UpstreamConnection> connection,
                std::uint64_t sessionId);
  ~UpstreamReset() override;  // parks the connection once it has left the loop's set
  UpstreamReset(const UpstreamReset&) = delete;
  UpstreamReset& operator=(const UpstreamReset&) = delete;

  [[nodiscard]] std::optional<Interest> advance(const Readiness& ready) noexcept override;

 private:
  upstream::UpstreamPool& pool_;
  const std::string key_;
  std::unique_ptr<upstream::UpstreamConnection> connection_;
  std::unique_ptr<Channel> link_;
  ProxyStatement discard_{"DISCARD ALL"};
  const std::uint64_t sessionId_;
  const Clock::time_point deadline_;
  bool reset_ = false;
};

// Closes parked connections once idle past --reuse-idle-timeout; empties the pool at shutdown.
class PoolSweeper final : public LoopTask {
 public:
  explicit PoolSweeper(upstream::UpstreamPool& pool, std::chrono::milliseconds idleTimeout) noexcept
      : pool_(pool), idleTimeout_(idleTimeout) {}
  [[nodiscard]] std::optional<Interest> advance(const Readiness& ready) noexcept override;

 private:
  upstream::UpstreamPool& pool_;
  const std::chrono::milliseconds idleTimeout_;
};

}  // namespace pgwire_proxy::session
