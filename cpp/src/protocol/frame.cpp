// Frame decoding: find message boundaries in a byte stream, checking lengths before buffering.
#include "protocol/frame.h"

#include <string>

#include "protocol/constants.h"
#include "protocol/errors.h"

namespace pgwire_proxy::protocol {

void throwInvalidLength(const FrameHeader& header, std::uint32_t maxLength) {
  if (header.length < kMinLength) {
    throw ProtocolError("invalid message length " + std::to_string(header.length) + " for message type '" +
                        std::string(1, header.type) + "'");
  }
  throw ProtocolError("message of type '" + std::string(1, header.type) + "' is " + std::to_string(header.length) +
                      " bytes long, over the limit of " + std::to_string(maxLength) + " bytes");
}

std::optional<std::span<const char>> decodeStartupPacket(std::span<const char> data) {
  if (data.size() < kUntypedHeaderSize) return std::nullopt;
  const std::uint32_t length = readUint32(data.data());
  // PostgreSQL: the packet must hold at least the version/code word, and not be absurdly long.
  if (length < 8 || length > kMaxStartupPacketLength) {
    throw ProtocolError("invalid length of startup packet (" + std::to_string(length) + " bytes)");
  }
  if (data.size() < length) return std::nullopt;
  return data.subspan(kUntypedHeaderSize, length - kUntypedHeaderSize);
}

}  // namespace pgwire_proxy::protocol
