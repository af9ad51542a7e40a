// Where a client's database goes: a named route's DSN, else the fallback (--upstream-dsn), else nowhere.
#include "upstream/routes.h"

namespace pgwire_proxy::upstream {

RouteTable::RouteTable(std::vector<std::pair<std::string, std::string>> routes, std::string fallbackDsn)
    : routes_(std::move(routes)), fallbackDsn_(std::move(fallbackDsn)) {}

std::optional<Route> RouteTable::find(std::string_view database) const {
  for (const auto& [name, dsn] : routes_) {
    if (name == database) return Route{name, dsn};
  }
  if (fallbackDsn_.empty()) return std::nullopt;
  return Route{std::string(database), fallbackDsn_};
}

}  // namespace pgwire_proxy::upstream
