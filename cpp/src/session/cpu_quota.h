// The CPU time a cgroup quota lets the process use (`docker --cpus`, a Kubernetes CPU limit,
// systemd's CPUQuota=): the loops are no more than it allows.
#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>

namespace pgwire_proxy::session {

// CPUs' worth of time per period (1.5 for `--cpus=1.5`), the smallest along the process's cgroup
// path up to its mount: cgroup v2's cpu.max, v1's cpu.cfs_quota_us / cpu.cfs_period_us. nullopt
// when nothing limits it or nothing can be read. `root` prefixes every path read (/proc/self/cgroup,
// /proc/self/mountinfo, the cgroup files): "/" in use, a directory tree in the tests.
[[nodiscard]] std::optional<double> cpuQuota(const std::filesystem::path& root = "/");

// Loops for `allowed` CPUs under `quota`: at least one, at most one per allowed CPU, and no more
// than the quota rounded up (a quota of 1.5 CPUs runs two loops, one of 0.5 one).
[[nodiscard]] std::size_t loopsFor(std::size_t allowed, std::optional<double> quota);

}  // namespace pgwire_proxy::session
