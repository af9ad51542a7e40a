// A message writer that fills lengths in when a message ends, so no size is ever counted by hand.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pgwire_proxy::protocol {

class MessageWriter {
 public:
  // Appends to `out`; several messages may be written back to back.
  explicit MessageWriter(std::string& out) noexcept : out_(out) {}

  void beginMessage(char type);
  void beginUntypedMessage();  // startup-phase packets have no type byte
  void endMessage();

  void writeByte(std::uint8_t value) { out_.push_back(static_cast<char>(value)); }
  void writeInt16(std::int16_t value);
  void writeInt32(std::int32_t value);
  void writeCString(std::string_view value);
  void writeBytes(std::string_view value) { out_.append(value); }

 private:
  std::string& out_;
  std::size_t lengthOffset_ = std::string::npos;
};

}  // namespace pgwire_proxy::protocol
