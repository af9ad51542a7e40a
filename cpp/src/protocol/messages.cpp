// The messages the proxy parses (startup packets, error fields, queries) and builds itself.
#include "protocol/messages.h"

#include "protocol/constants.h"
#include "protocol/reader.h"

namespace pgwire_proxy::protocol {

const std::string* StartupPacket::parameter(std::string_view name) const {
  for (const auto& [key, value] : parameters) {
    if (key == name) return &value;
  }
  return nullptr;
}

StartupPacket parseStartupPacket(std::span<const char> body) {
  MessageReader reader(body);
  StartupPacket packet;
  packet.protocolVersion = reader.readInt32();
  switch (packet.protocolVersion) {
    case kSslRequestCode:
      packet.kind = StartupKind::kSslRequest;
      reader.expectEnd();
      return packet;
    case kGssEncRequestCode:
      packet.kind = StartupKind::kGssEncRequest;
      reader.expectEnd();
      return packet;
    case kCancelRequestCode:
    case kForwardedCancelCode:
      packet.kind = StartupKind::kCancelRequest;
      packet.forwardedCancel = packet.protocolVersion == kForwardedCancelCode;
      packet.cancelProcessId = reader.readInt32();
      packet.cancelSecretKey = reader.readInt32();
      reader.expectEnd();
      return packet;
    default:
      break;
  }
  const auto major = static_cast<std::uint32_t>(packet.protocolVersion) >> 16;
  const auto minor = static_cast<std::uint32_t>(packet.protocolVersion) & 0xffff;
  if (major != 3) {
    throw ProxyError(Severity::kFatal, sqlstate::kFeatureNotSupported,
                     "unsupported frontend protocol " + std::to_string(major) + "." + std::to_string(minor) +
                         ": server supports 3.0 to 3.0");
  }
  // Name/value pairs, terminated by an empty name; drivers send a handful.
  packet.parameters.reserve(8);
  for (;;) {
    const std::string_view name = reader.readCString();
    if (name.empty()) break;
    const std::string_view value = reader.readCString();
    packet.parameters.emplace_back(std::string(name), std::string(value));
  }
  reader.expectEnd();
  return packet;
}

std::string_view parseQuery(std::span<const char> body) {
  MessageReader reader(body);
  const std::string_view sql = reader.readCString();
  reader.expectEnd();
  return sql;
}

ParseMessage parseParseMessage(std::span<const char> body) {
  MessageReader reader(body);
  ParseMessage message;
  message.statement = reader.readCString();
  message.sql = reader.readCString();
  return message;
}

BindMessage parseBindMessage(std::span<const char> body) {
  MessageReader reader(body);
  BindMessage message;
  message.portal = reader.readCString();
  message.statement = reader.readCString();
  return message;
}

TargetMessage parseTargetMessage(std::span<const char> body) {
  MessageReader reader(body);
  TargetMessage message;
  message.kind = static_cast<char>(reader.readByte());
  message.name = reader.readCString();
  return message;
}

std::string_view parseExecutePortal(std::span<const char> body) {
  MessageReader reader(body);
  return reader.readCString();
}

ParameterStatusMessage parseParameterStatus(std::span<const char> body) {
  MessageReader reader(body);
  ParameterStatusMessage message;
  message.name = reader.readCString();
  message.value = reader.readCString();
  reader.expectEnd();
  return message;
}

std::string_view ErrorFields::get(char code) const {
  for (const auto& [key, value] : fields) {
    if (key == code) return value;
  }
  return {};
}

std::string_view ErrorFields::severity() const {
  const auto nonLocalized = get('V');
  return nonLocalized.empty() ? get('S') : nonLocalized;
}

bool ErrorFields::isFatal() const {
  const auto s = severity();
  return s == "FATAL" || s == "PANIC";
}

ErrorFields parseErrorFields(std::span<const char> body) {
  MessageReader reader(body);
  ErrorFields result;
  for (;;) {
    const auto code = static_cast<char>(reader.readByte());
    if (code == '\0') break;
    result.fields.emplace_back(code, std::string(reader.readCString()));
  }
  reader.expectEnd();
  return result;
}

ErrorFields parseErrorFieldsPrefix(std::span<const char> prefix) {
  ErrorFields result;
  std::size_t at = 0;
  while (at < prefix.size() && prefix[at] != '\0') {
    const char code = prefix[at++];
    const std::string_view rest(prefix.data() + at, prefix.size() - at);
    const std::size_t end = rest.find('\0');
    result.fields.emplace_back(code, std::string(rest.substr(0, end)));
    if (end == std::string_view::npos) break;
    at += end + 1;
  }
  return result;
}

void writeAuthenticationRequest(MessageWriter& writer, std::int32_t code, std::string_view data) {
  writer.beginMessage(backend::kAuthentication);
  writer.writeInt32(code);
  writer.writeBytes(data);
  writer.endMessage();
}

void writeAuthenticationSasl(MessageWriter& writer, const std::vector<std::string>& mechanisms) {
  writer.beginMessage(backend::kAuthentication);
  writer.writeInt32(10);
  for (const auto& mechanism : mechanisms) writer.writeCString(mechanism);
  writer.writeByte(0);
  writer.endMessage();
}

void writeAuthenticationOk(MessageWriter& writer) {
  writer.beginMessage(backend::kAuthentication);
  writer.writeInt32(0);
  writer.endMessage();
}

void writeParameterStatus(MessageWriter& writer, std::string_view name, std::string_view value) {
  writer.beginMessage(backend::kParameterStatus);
  writer.writeCString(name);
  writer.writeCString(value);
  writer.endMessage();
}

void writeBackendKeyData(MessageWriter& writer, std::int32_t processId, std::int32_t secretKey) {
  writer.beginMessage(backend::kBackendKeyData);
  writer.writeInt32(processId);
  writer.writeInt32(secretKey);
  writer.endMessage();
}

void writeReadyForQuery(MessageWriter& writer, char transactionStatus) {
  writer.beginMessage(backend::kReadyForQuery);
  writer.writeByte(static_cast<std::uint8_t>(transactionStatus));
  writer.endMessage();
}

void writeErrorResponse(MessageWriter& writer, const ProxyError& error) {
  const std::string_view severity = error.severity() == Severity::kFatal ? "FATAL" : "ERROR";
  writer.beginMessage(backend::kErrorResponse);
  writer.writeByte('S');
  writer.writeCString(severity);
  writer.writeByte('V');
  writer.writeCString(severity);
  writer.writeByte('C');
  writer.writeCString(error.sqlstate());
  writer.writeByte('M');
  writer.writeCString(error.message());
  if (!error.detail().empty()) {
    writer.writeByte('D');
    writer.writeCString(error.detail());
  }
  if (!error.hint().empty()) {
    writer.writeByte('H');
    writer.writeCString(error.hint());
  }
  writer.writeByte(0);
  writer.endMessage();
}

void writeNoticeResponse(MessageWriter& writer, std::string_view severity, std::string_view sqlstate,
                         std::string_view message, std::string_view detail, std::string_view hint) {
  writer.beginMessage(backend::kNoticeResponse);
  for (const auto& [code, value] : {std::pair<char, std::string_view>{'S', severity}, {'V', severity}, {'C', sqlstate},
                                    {'M', message}, {'D', detail}, {'H', hint}}) {
    if (value.empty()) continue;
    writer.writeByte(static_cast<std::uint8_t>(code));
    writer.writeCString(value);
  }
  writer.writeByte(0);
  writer.endMessage();
}

void writeNegotiateProtocolVersion(MessageWriter& writer, std::int32_t newestMinor,
                                   const std::vector<std::string>& unrecognizedOptions) {
  writer.beginMessage(backend::kNegotiateProtocolVersion);
  writer.writeInt32((3 << 16) | newestMinor);
  writer.writeInt32(static_cast<std::int32_t>(unrecognizedOptions.size()));
  for (const auto& option : unrecognizedOptions) writer.writeCString(option);
  writer.endMessage();
}

void writeCopyFail(MessageWriter& writer, std::string_view reason) {
  writer.beginMessage(frontend::kCopyFail);
  writer.writeCString(reason);
  writer.endMessage();
}

void writeUnnamedExecution(MessageWriter& writer, std::string_view sql) {
  writer.beginMessage(frontend::kParse);
  writer.writeCString("");
  writer.writeCString(sql);
  writer.writeInt16(0);  // no parameter types
  writer.endMessage();
  writer.beginMessage(frontend::kBind);
  writer.writeCString("");
  writer.writeCString("");
  writer.writeInt16(0);  // no parameter formats
  writer.writeInt16(0);  // no parameters
  writer.writeInt16(0);  // text results
  writer.endMessage();
  writer.beginMessage(frontend::kExecute);
  writer.writeCString("");
  writer.writeInt32(0);  // all rows
  writer.endMessage();
}

void writeSync(MessageWriter& writer) {
  writer.beginMessage(frontend::kSync);
  writer.endMessage();
}

void writeFlush(MessageWriter& writer) {
  writer.beginMessage(frontend::kFlush);
  writer.endMessage();
}

void writeTerminate(MessageWriter& writer) {
  writer.beginMessage(frontend::kTerminate);
  writer.endMessage();
}

}  // namespace pgwire_proxy::protocol
