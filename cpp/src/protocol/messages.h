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
  // CancelRequest: the key the client was issued.
  std::int32_t cancelProcessId = 0;
  std::int32_t cancelSecretKey = 0;

  [[nodiscard]] const std::string* parameter(std::string_view name) const;
};

// Parses the body of an untyped startup packet (everything after its length word).
// Throws ProtocolError for a malformed body, ProxyError 0A000 for an unsupported protocol major version.
[[nodiscard]] StartupPacket parseStartupPacket(std::span<const char> body);

// ---- query phase -----------------------------------------------------------------------------

// The SQL text of a Query message body.
[[nodiscard]] std::string_view parseQuery(std::span<const char> body);

// The identified fields of an ErrorResponse or NoticeResponse body, in order.
struct ErrorFields {
  std::vector<std::pair<char, std::string>> fields;

  [[nodiscard]] std::string_view get(char code) const;
  // Severity 'V' (non-localised) when present, else 'S'.
  [[nodiscard]] std::string_view severity() const;
  [[nodiscard]] bool isFatal() const;
};
[[nodiscard]] ErrorFields parseErrorFields(std::span<const char> body);

// ---- messages the proxy builds -----------------------------------------------------------------

void writeAuthenticationOk(MessageWriter& writer);
void writeParameterStatus(MessageWriter& writer, std::string_view name, std::string_view value);
void writeBackendKeyData(MessageWriter& writer, std::int32_t processId, std::int32_t secretKey);
void writeReadyForQuery(MessageWriter& writer, char transactionStatus);
void writeErrorResponse(MessageWriter& writer, const ProxyError& error);
void writeNegotiateProtocolVersion(MessageWriter& writer, std::int32_t newestMinor,
                                   const std::vector<std::string>& unrecognizedOptions);
void writeCopyFail(MessageWriter& writer, std::string_view reason);
void writeTerminate(MessageWriter& writer);

}  // namespace pgwire_proxy::protocol
