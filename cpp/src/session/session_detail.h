// What the two halves of the session's implementation share (session.cpp: startup and the simple
// query protocol; extended_relay.cpp: the extended query protocol). Not for other users.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "protocol/constants.h"
#include "protocol/frame.h"
#include "protocol/messages.h"

namespace pgwire_proxy::session::detail {

constexpr std::size_t kClientReadChunk = 16 * 1024;
constexpr std::size_t kUpstreamReadChunk = 64 * 1024;
constexpr std::size_t kIdleBufferCapacity = 64 * 1024;
// Frames the proxy must hold whole (ReadyForQuery, CommandComplete ...) are small; anything past this
// is not PostgreSQL.
constexpr std::uint32_t kMaxInspectedUpstreamMessage = 1024U * 1024;
// An ErrorResponse past this size (a 50 MB message quoting a value) is not held whole: its fields are
// read from its first kErrorPrefix bytes (severity and SQLSTATE come first) and the rest streams.
constexpr std::size_t kErrorPrefix = 16 * 1024;

// Whether the relay reads an inspected frame from its prefix instead of holding it whole.
[[nodiscard]] inline bool streamsWithPrefix(const protocol::FrameHeader& header) noexcept {
  return header.type == protocol::backend::kErrorResponse && header.frameSize() > kErrorPrefix;
}
// The fields of an ErrorResponse frame, whole or only its prefix.
[[nodiscard]] inline protocol::ErrorFields errorFieldsOf(const protocol::Frame& frame) {
  return frame.bytes.size() < frame.header.frameSize() ? protocol::parseErrorFieldsPrefix(frame.body())
                                                       : protocol::parseErrorFields(frame.body());
}
// Upper bound for any upstream frame length (PostgreSQL's MaxAllocSize-scale values), passed through.
constexpr std::uint32_t kMaxUpstreamMessage = 0x7fffffffU;
// How long the upstream has to answer a cancel sent by the backstop before it is given up as lost.
constexpr auto kCancelGrace = std::chrono::seconds(5);
// How much of a query's text goes into logs.
constexpr std::size_t kQueryExcerptLength = 200;
// Sent upstream when the proxy failed a statement but the upstream finished it inside a transaction
// block (the cancel came too late): the transaction must end up failed, as the client was told.
constexpr std::string_view kAbortTransactionSql =
    "DO $pgwire_proxy$ BEGIN RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = "
    "'pgwire-proxy failed the previous statement; the transaction is aborted'; END $pgwire_proxy$";
// How long the proxy's own CancelRequest to the upstream may take (connect, send, the server's close).
constexpr auto kCancelSendTimeout = std::chrono::milliseconds(5000);
// How long forwarding a CancelRequest to a peer instance may take (connect, then send).
constexpr auto kPeerCancelTimeout = std::chrono::milliseconds(1000);
// How often a query held by an injected delay checks for a cancel request.
constexpr auto kHoldPollInterval = std::chrono::milliseconds(50);
// How long a best-effort error may wait for a client that does not read.
constexpr auto kBestEffortWriteTimeout = std::chrono::seconds(1);

// The session ends quietly (the reason is logged, nothing more is sent to the client).
struct SessionEnded {
  std::string reason;
};

}  // namespace pgwire_proxy::session::detail
