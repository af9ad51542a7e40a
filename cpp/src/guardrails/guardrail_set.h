// The guardrails in force: limits and patterns, immutable, swapped as a whole when SIGHUP reloads them.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "config/server_config.h"
#include "guardrails/query_filter.h"

namespace pgwire_proxy::guardrails {

struct GuardrailSet {
  explicit GuardrailSet(const config::ServerConfig& config)
      : maxRows(config.maxRows),
        maxBytes(config.maxBytes),
        filter(config.denyPatterns, config.allowPatterns, config.patternsIgnoreCase) {}

  const std::uint64_t maxRows;
  const std::uint64_t maxBytes;
  const QueryFilter filter;
};

// The set in force, replaced on reload. Sessions keep their own copy and compare version() (one
// atomic read per query) before taking the lock to fetch a newer one. (Not atomic<shared_ptr>:
// libstdc++ implements it with a spin-lock bit whose reader side TSan cannot follow.)
class GuardrailHolder {
 public:
  explicit GuardrailHolder(std::shared_ptr<const GuardrailSet> set) : set_(std::move(set)) {}

  [[nodiscard]] std::shared_ptr<const GuardrailSet> load() const {
    std::lock_guard lock(mutex_);
    return set_;
  }
  void store(std::shared_ptr<const GuardrailSet> set) {
    {
      std::lock_guard lock(mutex_);
      set_ = std::move(set);
    }
    version_.fetch_add(1, std::memory_order_release);
  }
  // Bumped after every store: a session that saw this version has (at least) the set stored before.
  [[nodiscard]] std::uint64_t version() const noexcept { return version_.load(std::memory_order_acquire); }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const GuardrailSet> set_;
  std::atomic<std::uint64_t> version_{0};
};

}  // namespace pgwire_proxy::guardrails
