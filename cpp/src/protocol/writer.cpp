// A message writer that fills lengths in when a message ends, so no size is ever counted by hand.
#include "protocol/writer.h"

#include <cassert>
#include <stdexcept>

namespace pgwire_proxy::protocol {

void MessageWriter::beginMessage(char type) {
  out_.push_back(type);
  beginUntypedMessage();
}

void MessageWriter::beginUntypedMessage() {
  assert(lengthOffset_ == std::string::npos && "messages do not nest");
  lengthOffset_ = out_.size();
  out_.append(4, '\0');
}

void MessageWriter::endMessage() {
  assert(lengthOffset_ != std::string::npos && "endMessage without beginMessage");
  const std::size_t length = out_.size() - lengthOffset_;
  if (length > 0x7fffffffU) throw std::length_error("message too long");
  for (int i = 0; i < 4; ++i) {
    out_[lengthOffset_ + static_cast<std::size_t>(i)] = static_cast<char>((length >> (24 - 8 * i)) & 0xff);
  }
  lengthOffset_ = std::string::npos;
}

void MessageWriter::writeInt16(std::int16_t value) {
  const auto v = static_cast<std::uint16_t>(value);
  out_.push_back(static_cast<char>(v >> 8));
  out_.push_back(static_cast<char>(v & 0xff));
}

void MessageWriter::writeInt32(std::int32_t value) {
  const auto v = static_cast<std::uint32_t>(value);
  for (int shift = 24; shift >= 0; shift -= 8) out_.push_back(static_cast<char>((v >> shift) & 0xff));
}

void MessageWriter::writeCString(std::string_view value) {
  out_.append(value);
  out_.push_back('\0');
}

}  // namespace pgwire_proxy::protocol
