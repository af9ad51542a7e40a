// A bounded reader over exactly one message body: every read is checked against the bytes left.
#include "protocol/reader.h"

#include <cstring>
#include <string>

#include "protocol/errors.h"
#include "protocol/frame.h"

namespace pgwire_proxy::protocol {

void MessageReader::require(std::size_t count) const {
  if (count > remaining()) {
    throw ProtocolError("message too short: needed " + std::to_string(count) + " more bytes, " +
                        std::to_string(remaining()) + " left");
  }
}

std::uint8_t MessageReader::readByte() {
  require(1);
  return static_cast<std::uint8_t>(data_[offset_++]);
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

std::string_view MessageReader::readCString() {
  const char* start = data_.data() + offset_;
  const void* nul = std::memchr(start, '\0', remaining());
  if (nul == nullptr) throw ProtocolError("invalid string in message: missing terminator");
  const auto length = static_cast<std::size_t>(static_cast<const char*>(nul) - start);
  offset_ += length + 1;
  return {start, length};
}

std::span<const char> MessageReader::readBytes(std::size_t count) {
  require(count);
  auto bytes = data_.subspan(offset_, count);
  offset_ += count;
  return bytes;
}

void MessageReader::expectEnd() const {
  if (remaining() != 0) {
    throw ProtocolError("invalid message format: " + std::to_string(remaining()) + " unexpected trailing bytes");
  }
}

}  // namespace pgwire_proxy::protocol
