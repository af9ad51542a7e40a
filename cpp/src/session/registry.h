// The live sessions: admission against the connection limit, and cancel keys mapped to sessions.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <condition_variable>
#include <thread>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "observability/session_observer.h"

namespace pgwire_proxy::session {

// What a CancelRequest reaches: the session's running query, if any.
class CancelTarget {
 public:
  virtual ~CancelTarget() = default;
  // Called on the cancelling connection's thread; must not touch the session's sockets. Returns
  // whether a query was running (and was asked to stop).
  virtual bool cancelRunningQuery() = 0;
};

struct CancelKey {
  std::int32_t processId = 0;
  std::int32_t secretKey = 0;
};

class SessionRegistry {
 public:
  // instanceId >= 0: the issued process ids carry it in their top 8 bits (scale-out, see --instance-id).
  explicit SessionRegistry(int maxSessions, int instanceId = -1) : maxSessions_(maxSessions), instanceId_(instanceId) {}

  // Which instance issued a process id; -1 when this registry does not use instance ids.
  [[nodiscard]] int instanceOf(std::int32_t processId) const noexcept {
    return instanceId_ < 0 ? -1 : static_cast<int>((static_cast<std::uint32_t>(processId) >> kCounterBits) & 0xffU);
  }
  [[nodiscard]] int instanceId() const noexcept { return instanceId_; }
  // Process id = instance (8 bits) << 23 | a counter (23 bits); the 32-bit secret stays all random.
  static constexpr int kCounterBits = 23;

  // Counts a connection that has not completed startup; false (counted all the same, leaveStartup
  // undoes it) when more than `limit` are in startup (--max-startup-connections).
  [[nodiscard]] bool enterStartup(int limit) noexcept { return starting_.fetch_add(1) < limit; }
  void leaveStartup() noexcept { starting_.fetch_sub(1); }
  [[nodiscard]] int startingConnections() const noexcept { return starting_.load(); }

  // Takes one of the --max-connections slots; false when all are taken.
  [[nodiscard]] bool tryAdmit() noexcept;
  void release() noexcept;
  [[nodiscard]] int activeSessions() const noexcept { return active_.load(); }
  [[nodiscard]] int maxSessions() const noexcept { return maxSessions_; }

  // Issues a process-unique id and a secret from the kernel's CSPRNG for a session.
  [[nodiscard]] CancelKey add(std::shared_ptr<CancelTarget> target);
  void remove(std::int32_t processId);
  // Matches the key (the secret in constant time); on a match asks the session to cancel.
  // Unknown keys are ignored, as PostgreSQL does.
  observability::CancelResult cancel(CancelKey key);

 private:
  struct Entry {
    std::int32_t secretKey;
    std::shared_ptr<CancelTarget> target;
  };

  const int maxSessions_;
  const int instanceId_;
  std::atomic<int> active_{0};
  std::atomic<int> starting_{0};
  std::mutex mutex_;
  std::int32_t nextProcessId_ = 0;
  std::unordered_map<std::int32_t, Entry> entries_;
};

// The other instances (--peers): id -> "host:port", with the address it resolves to. Replaced on
// reload; names are resolved off the event loop (at replace and every few seconds after, on a thread
// of its own), so forwarding a cancel never waits on DNS.
class PeerDirectory {
 public:
  struct Peer {
    std::string name;  // host:port as configured
    sockaddr_storage address{};
    socklen_t addressLength = 0;  // 0: not resolved (yet)
  };
  PeerDirectory() = default;
  ~PeerDirectory();
  PeerDirectory(const PeerDirectory&) = delete;
  PeerDirectory& operator=(const PeerDirectory&) = delete;

  void replace(std::vector<std::pair<int, std::string>> peers);
  [[nodiscard]] std::optional<Peer> find(int id) const;
  [[nodiscard]] std::optional<std::string> addressOf(int id) const {
    const auto peer = find(id);
    return peer ? std::optional<std::string>(peer->name) : std::nullopt;
  }

 private:
  void refreshLoop();
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::pair<int, Peer>> peers_;
  std::uint64_t generation_ = 0;
  bool stopping_ = false;
  std::thread resolver_;
};

}  // namespace pgwire_proxy::session
