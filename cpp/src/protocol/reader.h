// A bounded reader over exactly one message body: every read is checked against the bytes left.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace pgwire_proxy::protocol {

class MessageReader {
 public:
  explicit MessageReader(std::span<const char> body) noexcept : data_(body) {}

  // Each throws ProtocolError on a short read (or, for readCString, a missing NUL). Inline: the relay
  // reads a name or two from most client messages; only the errors are out of line.
  [[nodiscard]] std::uint8_t readByte() {
    require(1);
    return static_cast<std::uint8_t>(data_[offset_++]);
  }
  [[nodiscard]] std::int16_t readInt16();
  [[nodiscard]] std::int32_t readInt32();
  [[nodiscard]] std::string_view readCString() {
    const char* start = data_.data() + offset_;
    const void* nul = std::memchr(start, '\0', remaining());
    if (nul == nullptr) throwMissingTerminator();
    const auto length = static_cast<std::size_t>(static_cast<const char*>(nul) - start);
    offset_ += length + 1;
    return {start, length};
  }
  [[nodiscard]] std::span<const char> readBytes(std::size_t count);

  [[nodiscard]] std::size_t remaining() const noexcept { return data_.size() - offset_; }
  // Throws ProtocolError when bytes are left over: a message must be consumed exactly.
  void expectEnd() const {
    if (remaining() != 0) throwTrailingBytes();
  }

 private:
  void require(std::size_t count) const {
    if (count > remaining()) throwShortRead(count);
  }
  [[noreturn]] void throwShortRead(std::size_t count) const;
  [[noreturn]] static void throwMissingTerminator();
  [[noreturn]] void throwTrailingBytes() const;

  std::span<const char> data_;
  std::size_t offset_ = 0;
};

}  // namespace pgwire_proxy::protocol
