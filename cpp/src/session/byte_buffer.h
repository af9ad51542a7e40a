// A growable byte buffer with a read and a write position, compacted instead of reallocated.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

namespace pgwire_proxy::session {

class ByteBuffer {
 public:
  explicit ByteBuffer(std::size_t initialCapacity) : data_(initialCapacity) {}

  [[nodiscard]] std::span<const char> readable() const noexcept {
    return {data_.data() + begin_, end_ - begin_};
  }
  [[nodiscard]] std::size_t size() const noexcept { return end_ - begin_; }
  [[nodiscard]] bool empty() const noexcept { return begin_ == end_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return data_.size(); }

  void consume(std::size_t count) noexcept {
    begin_ += count;
    if (begin_ == end_) begin_ = end_ = 0;
  }

  // Room for at least `minimum` more bytes at the end: moves unread bytes to the front first and
  // grows only when the unread bytes plus `minimum` do not fit.
  [[nodiscard]] std::span<char> prepareWrite(std::size_t minimum) {
    if (data_.size() - end_ < minimum) {
      if (begin_ > 0) {
        std::copy(data_.begin() + static_cast<std::ptrdiff_t>(begin_), data_.begin() + static_cast<std::ptrdiff_t>(end_),
                  data_.begin());
        end_ -= begin_;
        begin_ = 0;
      }
      if (data_.size() - end_ < minimum) data_.resize(end_ + minimum);
    }
    return {data_.data() + end_, data_.size() - end_};
  }
  void commitWrite(std::size_t count) noexcept { end_ += count; }

  // Gives memory back after an unusually large message, keeping `capacity` bytes.
  void shrinkTo(std::size_t capacity) {
    if (data_.size() > capacity && size() <= capacity) {
      std::vector<char> smaller(capacity);
      std::copy(data_.begin() + static_cast<std::ptrdiff_t>(begin_), data_.begin() + static_cast<std::ptrdiff_t>(end_),
                smaller.begin());
      end_ -= begin_;
      begin_ = 0;
      data_.swap(smaller);
    }
  }

 private:
  std::vector<char> data_;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
};

}  // namespace pgwire_proxy::session
