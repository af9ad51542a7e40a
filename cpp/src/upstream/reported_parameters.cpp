// The ParameterStatus values a client of an upstream connection is told at startup.
#include "upstream/reported_parameters.h"

#include <algorithm>

#include "protocol/messages.h"
#include "protocol/writer.h"

namespace pgwire_proxy::upstream {

static_assert(ReportedParameters::kNames.front() == "application_name", "the client's own comes first");

void ReportedParameters::note(std::string_view name, std::string_view value) {
  const auto found = std::find(kNames.begin(), kNames.end(), name);
  if (found == kNames.end()) return;
  auto& current = values_[static_cast<std::size_t>(found - kNames.begin())];
  if (current == value) return;
  current = std::string(value);
  if (found != kNames.begin()) encoded_.clear();  // encoded again when next asked for
}

void ReportedParameters::appendTo(std::string& out, std::string_view applicationName) const {
  if (values_.front()) {
    protocol::MessageWriter writer(out);
    protocol::writeParameterStatus(writer, kNames.front(), applicationName);
  }
  if (encoded_.empty()) {
    protocol::MessageWriter encoder(encoded_);
    for (std::size_t i = 1; i < kNames.size(); ++i) {
      if (values_[i]) protocol::writeParameterStatus(encoder, kNames[i], *values_[i]);
    }
  }
  out.append(encoded_);
}

}  // namespace pgwire_proxy::upstream
