// Reading a cgroup's CPU quota: which hierarchy has the cpu controller (mountinfo), where the
// process is in it (/proc/self/cgroup), and the limits from there up to the mount.
#include "session/cpu_quota.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "config/file_text.h"

namespace pgwire_proxy::session {
namespace {

// `relative` (absolute inside the cgroup tree) under `base`, which may itself be "/".
std::filesystem::path under(const std::filesystem::path& base, const std::string& relative) {
  return base / std::filesystem::path(relative).relative_path();
}

bool hasItem(const std::string& list, const std::string& item) {
  std::istringstream items(list);
  for (std::string word; std::getline(items, word, ',');) {
    if (word == item) return true;
  }
  return false;
}

struct Hierarchy {
  bool v2 = false;
  std::string mountRoot;   // the part of the hierarchy the mount shows ("/" outside a namespace)
  std::string mountPoint;  // where it is mounted
};

// mountinfo: "id parent major:minor root mount-point options [optional fields] - fstype source super-options".
std::vector<Hierarchy> cpuHierarchies(const std::string& mountinfo) {
  std::vector<Hierarchy> found;
  std::istringstream lines(mountinfo);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::vector<std::string> fields;
    for (std::string word; words >> word;) fields.push_back(word);
    const auto dash = std::find(fields.begin(), fields.end(), "-");
    if (dash == fields.end() || fields.size() < 5 || fields.end() - dash < 4) continue;
    const std::string& type = *(dash + 1);
    const std::string& options = *(dash + 3);
    if (type == "cgroup2") {
      found.push_back({true, fields[3], fields[4]});
    } else if (type == "cgroup" && hasItem(options, "cpu")) {
      found.push_back({false, fields[3], fields[4]});
    }
  }
  return found;
}

// The process's path in the v2 hierarchy ("0::/path") or in the v1 one that has the cpu controller.
std::optional<std::string> cgroupPath(const std::string& cgroups, bool v2) {
  std::istringstream lines(cgroups);
  for (std::string line; std::getline(lines, line);) {
    const auto first = line.find(':');
    const auto second = first == std::string::npos ? first : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    const std::string id = line.substr(0, first);
    const std::string controllers = line.substr(first + 1, second - first - 1);
    if (v2 ? (id == "0" && controllers.empty()) : hasItem(controllers, "cpu")) return line.substr(second + 1);
  }
  return std::nullopt;
}

std::optional<long long> number(const std::string& text) {
  try {
    return std::stoll(text);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// One directory's limit in CPUs, if it sets one.
std::optional<double> limitIn(const std::filesystem::path& dir, bool v2) {
  std::optional<long long> quota;
  std::optional<long long> period;
  if (v2) {
    const auto text = config::fileText(dir / "cpu.max");  // "max 100000" or "150000 100000"
    if (!text) return std::nullopt;
    std::istringstream words(*text);
    std::string quotaText, periodText;
    if (!(words >> quotaText >> periodText) || quotaText == "max") return std::nullopt;
    quota = number(quotaText);
    period = number(periodText);
  } else {
    const auto quotaText = config::fileText(dir / "cpu.cfs_quota_us");  // -1: none
    const auto periodText = config::fileText(dir / "cpu.cfs_period_us");
    if (!quotaText || !periodText) return std::nullopt;
    quota = number(*quotaText);
    period = number(*periodText);
  }
  if (!quota || !period || *quota <= 0 || *period <= 0) return std::nullopt;
  return static_cast<double>(*quota) / static_cast<double>(*period);
}

}  // namespace

std::optional<double> cpuQuota(const std::filesystem::path& root) {
  const auto mountinfo = config::fileText(under(root, "/proc/self/mountinfo"));
  const auto cgroups = config::fileText(under(root, "/proc/self/cgroup"));
  if (!mountinfo || !cgroups) return std::nullopt;
  std::optional<double> smallest;
  for (const Hierarchy& hierarchy : cpuHierarchies(*mountinfo)) {
    const auto path = cgroupPath(*cgroups, hierarchy.v2);
    if (!path) continue;
    // Inside a cgroup namespace the mount shows the process's own cgroup as its root.
    std::string relative;
    if (hierarchy.mountRoot == "/") {
      relative = *path;
    } else if (path->starts_with(hierarchy.mountRoot) &&
               (path->size() == hierarchy.mountRoot.size() || (*path)[hierarchy.mountRoot.size()] == '/')) {
      relative = path->substr(hierarchy.mountRoot.size());
    } else {
      continue;  // the process is not under what this mount shows
    }
    const std::filesystem::path top = under(root, hierarchy.mountPoint).lexically_normal();
    const std::filesystem::path inside = std::filesystem::path(relative).lexically_normal().relative_path();
    if (!inside.empty() && *inside.begin() == "..") continue;  // not below the mount
    std::filesystem::path dir = inside.empty() ? top : (top / inside).lexically_normal();
    // The smallest limit from the process's cgroup up to the mount: a parent's bounds its children.
    for (;;) {
      if (const auto limit = limitIn(dir, hierarchy.v2); limit && (!smallest || *limit < *smallest)) smallest = limit;
      if (dir == top || dir.parent_path() == dir) break;
      dir = dir.parent_path();
    }
  }
  return smallest;
}

std::size_t loopsFor(std::size_t allowed, std::optional<double> quota) {
  std::size_t loops = std::max<std::size_t>(allowed, 1);
  if (quota && *quota > 0) {
    const double rounded = std::ceil(*quota - 1e-9);  // 2.0000000001 from a division is still two
    loops = std::min(loops, static_cast<std::size_t>(std::max(1.0, rounded)));
  }
  return loops;
}

}  // namespace pgwire_proxy::session
