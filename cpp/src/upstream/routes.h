// Where a client's database goes: a named route's DSN, else the fallback (--upstream-dsn), else nowhere.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/snapshot.h"

namespace pgwire_proxy::upstream {

struct Route {
  std::string name;  // what the client asks for (its startup database)
  std::string dsn;   // where it goes
};

// The routes in force: immutable, replaced as a whole on reload (a reload applies to new sessions).
class RouteTable {
 public:
  // `routes` as --database NAME=DSN gives them; `fallbackDsn` empty: none (unknown names get 3D000).
  RouteTable(std::vector<std::pair<std::string, std::string>> routes, std::string fallbackDsn);
  // The route for `database`: its own, else the fallback under the client's name; nullopt: none.
  [[nodiscard]] std::optional<Route> find(std::string_view database) const;
  [[nodiscard]] const std::vector<std::pair<std::string, std::string>>& named() const noexcept { return routes_; }

 private:
  std::vector<std::pair<std::string, std::string>> routes_;
  std::string fallbackDsn_;
};

// The table in force; sessions load it once, at their upstream connect.
using RouteHolder = config::Snapshot<RouteTable>;

}  // namespace pgwire_proxy::upstream
