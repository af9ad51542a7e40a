// A bounded reader over exactly one message body: every read is checked against the bytes left.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace pgwire_proxy::protocol {

class MessageReader {
 public:
  explicit MessageReader(std::span<const char> body) noexcept : data_(body) {}

  // Each throws ProtocolError on a short read (or, for readCString, a missing NUL).
  [[nodiscard]] std::uint8_t readByte();
  [[nodiscard]] std::int16_t readInt16();
  [[nodiscard]] std::int32_t readInt32();
  [[nodiscard]] std::string_view readCString();
  [[nodiscard]] std::span<const char> readBytes(std::size_t count);

  [[nodiscard]] std::size_t remaining() const noexcept { return data_.size() - offset_; }
  // Throws ProtocolError when bytes are left over: a message must be consumed exactly.
  void expectEnd() const;

 private:
  void require(std::size_t count) const;

  std::span<const char> data_;
  std::size_t offset_ = 0;
};

}  // namespace pgwire_proxy::protocol
