// The guardrails in force: limits and patterns, immutable, swapped as a whole when SIGHUP reloads them.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "config/server_config.h"
#include "config/snapshot.h"
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
// atomic read per query) before taking the lock to fetch a newer one.
using GuardrailHolder = config::Snapshot<GuardrailSet>;

}  // namespace pgwire_proxy::guardrails
