// Frame decoding: find message boundaries in a byte stream, checking lengths before buffering.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace pgwire_proxy::protocol {

// A typed message header: 1 type byte, then an int32 length that counts itself but not the type.
struct FrameHeader {
  char type = 0;
  std::uint32_t length = 0;

  [[nodiscard]] std::size_t frameSize() const noexcept { return 1 + static_cast<std::size_t>(length); }
  [[nodiscard]] std::size_t bodySize() const noexcept { return length - 4; }
};

// A complete typed message inside a buffer; `bytes` spans the whole frame, header included.
struct Frame {
  FrameHeader header;
  std::span<const char> bytes;

  [[nodiscard]] char type() const noexcept { return header.type; }
  [[nodiscard]] std::span<const char> body() const noexcept { return bytes.subspan(5); }
};

// Reads a big-endian int32 from the first four bytes of `data` (which must hold them).
[[nodiscard]] std::uint32_t readUint32(const char* data) noexcept;

// The header at the start of `data`, or nullopt when fewer than 5 bytes are buffered.
// Throws ProtocolError when the length is below 4 or above `maxLength`.
[[nodiscard]] std::optional<FrameHeader> decodeHeader(std::span<const char> data, std::uint32_t maxLength);

// The whole frame at the start of `data`, or nullopt when it is not completely buffered yet.
[[nodiscard]] std::optional<Frame> decodeFrame(std::span<const char> data, std::uint32_t maxLength);

// An untyped startup-phase packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest):
// returns its body (after the length word) once complete, nullopt before that.
// Throws ProtocolError for a length below 8 or above kMaxStartupPacketLength.
[[nodiscard]] std::optional<std::span<const char>> decodeStartupPacket(std::span<const char> data);

}  // namespace pgwire_proxy::protocol
