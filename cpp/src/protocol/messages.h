// The messages the proxy parses (startup packets, error fields, queries) and builds itself.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/errors.h"
#include "protocol/writer.h"

namespace pgwire_proxy::protocol {

// ---- startup phase ---------------------------------------------------------------------------

enum class StartupKind { kStartup, kSslRequest, kGssEncRequest, kCancelRequest };

struct StartupPacket {
  StartupKind kind = StartupKind::kStartup;
  std::int32_t protocolVersion = 0;
  // StartupMessage: name/value pairs in the order sent.
  std::vector<std::pair<std::string, std::string>> parameters;
  // CancelRequest: the key the client was issued; forwarded: sent by a peer instance (not to be
  // forwarded again).
  std::int32_t cancelProcessId = 0;
  std::int32_t cancelSecretKey = 0;
  bool forwardedCancel = false;

  [[nodiscard]] const std::string* parameter(std::string_view name) const;
};

// Parses the body of an untyped startup packet (everything after its length word).
// Throws ProtocolError for a malformed body, ProxyError 0A000 for an unsupported protocol major version.
[[nodiscard]] StartupPacket parseStartupPacket(std::span<const char> body);

// ---- query phase -----------------------------------------------------------------------------

// The SQL text of a Query message body.
[[nodiscard]] std::string_view parseQuery(std::span<const char> body);

// What the relay reads of the extended-protocol messages (the rest of each goes upstream as it came).
// Each throws ProtocolError when a name or the query text is not NUL-terminated inside the body.
struct ParseMessage {
  std::string_view statement;
  std::string_view sql;
};
[[nodiscard]] ParseMessage parseParseMessage(std::span<const char> body);
struct BindMessage {
  std::string_view portal;
  std::string_view statement;
};
[[nodiscard]] BindMessage parseBindMessage(std::span<const char> body);
// Describe and Close: 'S' (a prepared statement) or 'P' (a portal), and its name.
struct TargetMessage {
  char kind = 0;
  std::string_view name;
};
[[nodiscard]] TargetMessage parseTargetMessage(std::span<const char> body);
// Execute: the portal's name (the row count that follows is PostgreSQL's business).
[[nodiscard]] std::string_view parseExecutePortal(std::span<const char> body);

// ParameterStatus: a run-time parameter's name and value. Throws ProtocolError for a malformed body.
struct ParameterStatusMessage {
  std::string_view name;
  std::string_view value;
};
[[nodiscard]] ParameterStatusMessage parseParameterStatus(std::span<const char> body);

// The identified fields of an ErrorResponse or NoticeResponse body, in order.
struct ErrorFields {
  std::vector<std::pair<char, std::string>> fields;

  [[nodiscard]] std::string_view get(char code) const;
  // Severity 'V' (non-localised) when present, else 'S'.
  [[nodiscard]] std::string_view severity() const;
  [[nodiscard]] bool isFatal() const;
};
[[nodiscard]] ErrorFields parseErrorFields(std::span<const char> body);
// The fields found in the first bytes of a body too large to hold whole: those complete within
// `prefix`, the last one cut where the prefix ends (PostgreSQL sends severity and SQLSTATE first).
[[nodiscard]] ErrorFields parseErrorFieldsPrefix(std::span<const char> prefix);

// ---- messages the proxy builds -----------------------------------------------------------------

// An Authentication request other than Ok: `code` 3 (CleartextPassword), 11 (SASLContinue), 12
// (SASLFinal) with its data.
void writeAuthenticationRequest(MessageWriter& writer, std::int32_t code, std::string_view data = {});
// AuthenticationSASL (10) offering `mechanisms`, best first.
void writeAuthenticationSasl(MessageWriter& writer, const std::vector<std::string>& mechanisms);
void writeAuthenticationOk(MessageWriter& writer);
void writeParameterStatus(MessageWriter& writer, std::string_view name, std::string_view value);
void writeBackendKeyData(MessageWriter& writer, std::int32_t processId, std::int32_t secretKey);
void writeReadyForQuery(MessageWriter& writer, char transactionStatus);
void writeErrorResponse(MessageWriter& writer, const ProxyError& error);
// A NoticeResponse (severity NOTICE, WARNING, INFO ...); empty detail/hint are left out.
void writeNoticeResponse(MessageWriter& writer, std::string_view severity, std::string_view sqlstate,
                         std::string_view message, std::string_view detail, std::string_view hint);
void writeNegotiateProtocolVersion(MessageWriter& writer, std::int32_t newestMinor,
                                   const std::vector<std::string>& unrecognizedOptions);
void writeCopyFail(MessageWriter& writer, std::string_view reason);
// Parse, Bind and Execute of `sql` as the unnamed statement and portal, no parameters, text results.
void writeUnnamedExecution(MessageWriter& writer, std::string_view sql);
void writeSync(MessageWriter& writer);
void writeFlush(MessageWriter& writer);
void writeTerminate(MessageWriter& writer);

}  // namespace pgwire_proxy::protocol
