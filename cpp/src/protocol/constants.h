// Message type bytes and protocol codes of the PostgreSQL frontend/backend protocol, version 3.0.
#pragma once

#include <cstdint>

namespace pgwire_proxy::protocol {

// Frontend (client to server) message types.
namespace frontend {
inline constexpr char kQuery = 'Q';
inline constexpr char kTerminate = 'X';
inline constexpr char kParse = 'P';
inline constexpr char kBind = 'B';
inline constexpr char kDescribe = 'D';
inline constexpr char kExecute = 'E';
inline constexpr char kClose = 'C';
inline constexpr char kFlush = 'H';
inline constexpr char kSync = 'S';
inline constexpr char kFunctionCall = 'F';
inline constexpr char kCopyData = 'd';
inline constexpr char kCopyDone = 'c';
inline constexpr char kCopyFail = 'f';
inline constexpr char kPassword = 'p';
}  // namespace frontend

// Backend (server to client) message types.
namespace backend {
inline constexpr char kAuthentication = 'R';
inline constexpr char kBackendKeyData = 'K';
inline constexpr char kParameterStatus = 'S';
inline constexpr char kReadyForQuery = 'Z';
inline constexpr char kRowDescription = 'T';
inline constexpr char kDataRow = 'D';
inline constexpr char kCommandComplete = 'C';
inline constexpr char kEmptyQueryResponse = 'I';
inline constexpr char kErrorResponse = 'E';
inline constexpr char kNoticeResponse = 'N';
inline constexpr char kNotificationResponse = 'A';
inline constexpr char kCopyInResponse = 'G';
inline constexpr char kCopyOutResponse = 'H';
inline constexpr char kCopyBothResponse = 'W';
inline constexpr char kCopyData = 'd';
inline constexpr char kCopyDone = 'c';
inline constexpr char kNegotiateProtocolVersion = 'v';
// Extended query protocol replies.
inline constexpr char kParseComplete = '1';
inline constexpr char kBindComplete = '2';
inline constexpr char kCloseComplete = '3';
inline constexpr char kParameterDescription = 't';
inline constexpr char kNoData = 'n';
inline constexpr char kPortalSuspended = 's';
}  // namespace backend

// Codes in the first int32 of an untyped startup-phase packet.
inline constexpr std::int32_t kProtocolVersion3 = 196608;  // 3.0
inline constexpr std::int32_t kSslRequestCode = 80877103;
inline constexpr std::int32_t kGssEncRequestCode = 80877104;
inline constexpr std::int32_t kCancelRequestCode = 80877102;
// pgwire-proxy's own: a CancelRequest one instance forwards to the peer that owns the key. A peer never
// forwards one of these again (the hop limit). Same layout as CancelRequest.
inline constexpr std::int32_t kForwardedCancelCode = 80877114;

// Header sizes: a typed message is 1 type byte plus an int32 length that counts itself.
inline constexpr std::size_t kTypedHeaderSize = 5;
inline constexpr std::size_t kUntypedHeaderSize = 4;
inline constexpr std::uint32_t kMinLength = 4;

// PostgreSQL's own ceiling for a startup packet body (MAX_STARTUP_PACKET_LENGTH).
inline constexpr std::uint32_t kMaxStartupPacketLength = 10000;

// ReadyForQuery transaction status bytes.
inline constexpr char kTxIdle = 'I';
inline constexpr char kTxInBlock = 'T';
inline constexpr char kTxFailed = 'E';

}  // namespace pgwire_proxy::protocol
