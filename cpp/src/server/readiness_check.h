// The upstream half of /readyz: a background thread pings the upstream every second, so the endpoint
// answers from the last result and never waits on the network.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace pgwire_proxy::server {

class ReadinessCheck {
 public:
  enum class State { kReachable, kUnreachable };

  static constexpr std::chrono::milliseconds kInterval{1000};  // from the end of one ping to the next
  static constexpr const char* kConnectTimeout = "2";          // seconds; libpq's minimum

  // Pings once before returning (milliseconds for a reachable or refusing upstream, at most the connect
  // timeout for a silent one), so /readyz is truthful from its first request; then starts the thread.
  explicit ReadinessCheck(std::string upstreamDsn, std::chrono::milliseconds interval = kInterval);
  // Wakes the thread and joins it: at once between pings, within the connect timeout during one.
  ~ReadinessCheck();
  ReadinessCheck(const ReadinessCheck&) = delete;
  ReadinessCheck& operator=(const ReadinessCheck&) = delete;

  // The last ping's result; never blocks.
  [[nodiscard]] State state() const noexcept { return state_.load(std::memory_order_acquire); }

 private:
  void run();
  void check();  // one ping; the state and, when it changed, a log line

  const std::string dsn_;
  const std::chrono::milliseconds interval_;
  std::atomic<State> state_{State::kReachable};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;  // under mutex_
  std::thread thread_;
};

}  // namespace pgwire_proxy::server
