// Frame decoding: find message boundaries in a byte stream, checking lengths before buffering.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "protocol/constants.h"

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
[[nodiscard]] inline std::uint32_t readUint32(const char* data) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
}

// Throws the ProtocolError for a header whose length is below 4 or above `maxLength`.
[[noreturn]] void throwInvalidLength(const FrameHeader& header, std::uint32_t maxLength);

// The header at the start of `data`, or nullopt when fewer than 5 bytes are buffered.
// Throws ProtocolError when the length is below 4 or above `maxLength`.
// Inline: the relay decodes a dozen headers a round trip; only the error path is out of line.
[[nodiscard]] inline std::optional<FrameHeader> decodeHeader(std::span<const char> data, std::uint32_t maxLength) {
  if (data.size() < kTypedHeaderSize) return std::nullopt;
  const FrameHeader header{data[0], readUint32(data.data() + 1)};
  if (header.length < kMinLength || header.length > maxLength) throwInvalidLength(header, maxLength);
  return header;
}

// The whole frame at the start of `data`, or nullopt when it is not completely buffered yet.
[[nodiscard]] inline std::optional<Frame> decodeFrame(std::span<const char> data, std::uint32_t maxLength) {
  const auto header = decodeHeader(data, maxLength);
  if (!header || data.size() < header->frameSize()) return std::nullopt;
  return Frame{*header, data.first(header->frameSize())};
}

// The bytes of the run of whole `type` frames at the start of `data` that `take(frameSize)` accepts
// (asked once per frame, in order; false ends the run before that frame). A frame of another type, a
// partial one or one whose length is below 4 or above `maxLength` ends it too: decodeFrame then says
// what that frame is. Inline: the relay walks a large result's rows and a COPY's data with it.
template <typename Take>
[[nodiscard]] std::size_t frameRun(std::span<const char> data, char type, std::uint32_t maxLength, Take&& take) {
  std::size_t at = 0;
  while (data.size() - at >= kTypedHeaderSize && data[at] == type) {
    const std::uint32_t length = readUint32(data.data() + at + 1);
    const std::size_t size = 1 + static_cast<std::size_t>(length);
    if (length < kMinLength || length > maxLength || size > data.size() - at || !take(size)) break;
    at += size;
  }
  return at;
}

// An untyped startup-phase packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest):
// returns its body (after the length word) once complete, nullopt before that.
// Throws ProtocolError for a length below 8 or above kMaxStartupPacketLength.
[[nodiscard]] std::optional<std::span<const char>> decodeStartupPacket(std::span<const char> data);

}  // namespace pgwire_proxy::protocol
