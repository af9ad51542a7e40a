// A value replaced whole on reload and read by sessions on other threads: a shared pointer behind a
// mutex, plus a version counter so a reader can tell with one atomic load whether it must fetch a newer
// one. (Not atomic<shared_ptr>: libstdc++ implements it with a spin-lock bit whose reader side TSan
// cannot follow.)
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

namespace pgwire_proxy::config {

template <class T>
class Snapshot {
 public:
  explicit Snapshot(std::shared_ptr<const T> value) : value_(std::move(value)) {}

  [[nodiscard]] std::shared_ptr<const T> load() const {
    std::lock_guard lock(mutex_);
    return value_;
  }
  void store(std::shared_ptr<const T> value) {
    {
      std::lock_guard lock(mutex_);
      value_ = std::move(value);
    }
    version_.fetch_add(1, std::memory_order_release);
  }
  // Bumped after every store: a reader that saw this version has (at least) the value stored before.
  [[nodiscard]] std::uint64_t version() const noexcept { return version_.load(std::memory_order_acquire); }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const T> value_;
  std::atomic<std::uint64_t> version_{0};
};

}  // namespace pgwire_proxy::config
