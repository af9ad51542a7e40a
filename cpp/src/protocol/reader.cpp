// A bounded reader over exactly one message body: every read is checked against the bytes left.
#include "protocol/reader.h"

#include <cstring>
#include <string>

#include "protocol/errors.h"
#include "protocol/frame.h"

namespace pgwire_proxy::protocol {

void MessageReader::throwShortRead(std::size_t count) const {
  throw ProtocolError("message too short: needed " + std::to_string(count) + " more bytes, " +
                      std::to_string(remaining()) + " left");
}

void MessageReader::throwMissingTerminator() {
  throw ProtocolError("invalid string in message: missing terminator");
}

void MessageReader::throwTrailingBytes() const {
  throw ProtocolError("invalid message format: " + std::to_string(remaining()) + " unexpected trailing bytes");
}

std::int16_t MessageReader::readInt16() {
  require(2);
  const auto* p = reinterpret_cast<const unsigned char*>(data_.data() + offset_);
  offset_ += 2;
  return static_cast<std::int16_t>((p[0] << 8) | p[1]);
}

std::int32_t MessageReader::readInt32() {
  require(4);
  const std::uint32_t value = readUint32(data_.data() + offset_);
  offset_ += 4;
  return static_cast<std::int32_t>(value);
}

std::span<const char> MessageReader::readBytes(std::size_t count) {
  require(count);
  auto bytes = data_.subspan(offset_, count);
  offset_ += count;
  return bytes;
}

}  // namespace pgwire_proxy::protocol
