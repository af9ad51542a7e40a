// A growable byte buffer with a read and a write position, compacted instead of reallocated.
// Memory is taken at the first write (an idle session's buffers cost nothing until used) and is
// never zero-filled: only bytes written are ever read.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <span>

namespace pgwire_proxy::session {

class ByteBuffer {
 public:
  explicit ByteBuffer(std::size_t initialCapacity) noexcept : initialCapacity_(initialCapacity) {}

  [[nodiscard]] std::span<const char> readable() const noexcept { return {data_.get() + begin_, end_ - begin_}; }
  [[nodiscard]] std::size_t size() const noexcept { return end_ - begin_; }
  [[nodiscard]] bool empty() const noexcept { return begin_ == end_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

  void consume(std::size_t count) noexcept {
    begin_ += count;
    if (begin_ == end_) begin_ = end_ = 0;
  }

  // Room for at least `minimum` more bytes at the end: moves unread bytes to the front first and
  // grows only when the unread bytes plus `minimum` do not fit.
  [[nodiscard]] std::span<char> prepareWrite(std::size_t minimum) {
    if (capacity_ - end_ < minimum) {
      if (begin_ > 0) {
        std::memmove(data_.get(), data_.get() + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
      }
      // Geometric growth: a message of n bytes read in chunks costs O(n) copies, not O(n^2).
      if (capacity_ - end_ < minimum) reallocate(std::max({end_ + minimum, initialCapacity_, capacity_ * 2}));
    }
    return {data_.get() + end_, capacity_ - end_};
  }
  void commitWrite(std::size_t count) noexcept { end_ += count; }

  // Gives memory back after an unusually large message, keeping `capacity` bytes.
  void shrinkTo(std::size_t capacity) {
    if (capacity_ > capacity && size() <= capacity) reallocate(capacity);
  }

 private:
  void reallocate(std::size_t capacity) {
    std::unique_ptr<char[]> next(new char[capacity]);  // uninitialised on purpose
    if (size() > 0) std::memcpy(next.get(), data_.get() + begin_, size());
    end_ -= begin_;
    begin_ = 0;
    data_ = std::move(next);
    capacity_ = capacity;
  }

  std::size_t initialCapacity_;
  std::unique_ptr<char[]> data_;
  std::size_t capacity_ = 0;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
};

}  // namespace pgwire_proxy::session
