// Frame decoding: find message boundaries in a byte stream, checking lengths before buffering.
#include "protocol/frame.h"

#include <string>

#include "protocol/constants.h"
#include "protocol/errors.h"

namespace pgwire_proxy::protocol {

std::uint32_t readUint32(const char* data) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

std::optional<FrameHeader> decodeHeader(std::span<const char> data, std::uint32_t maxLength) {
  if (data.size() < kTypedHeaderSize) return std::nullopt;
  FrameHeader header{data[0], readUint32(data.data() + 1)};
  if (header.length < kMinLength) {
    throw ProtocolError("invalid message length " + std::to_string(header.length) + " for message type '" +
                        std::string(1, header.type) + "'");
  }
  if (header.length > maxLength) {
    throw ProtocolError("message of type '" + std::string(1, header.type) + "' is " +
                        std::to_string(header.length) + " bytes long, over the limit of " +
                        std::to_string(maxLength) + " bytes");
  }
  return header;
}

std::optional<Frame> decodeFrame(std::span<const char> data, std::uint32_t maxLength) {
  const auto header = decodeHeader(data, maxLength);
  if (!header || data.size() < header->frameSize()) return std::nullopt;
  return Frame{*header, data.first(header->frameSize())};
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
