// The guardrails in force: limits and patterns, immutable, swapped as a whole when SIGHUP reloads them.
#pragma once

#include <cstdint>
#include <memory>

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

}  // namespace pgwire_proxy::guardrails
