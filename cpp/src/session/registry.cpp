// The live sessions: admission against the connection limit, and cancel keys mapped to sessions.
#include "session/registry.h"

#include <netdb.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>

#include "auth/scram.h"

namespace pgwire_proxy::session {
namespace {

// A session's cancel secret, from a batch the thread draws at once: each RAND_bytes call costs a
// getpid(2) (OpenSSL's check for a fork), which per session was a syscall per connection. Sessions
// are opened on the loop threads, which never fork; a forked child has none of them, and its own
// threads start with empty batches. A secret is erased from the batch when it is handed out.
std::int32_t nextSecret() {
  constexpr std::size_t kBatch = 64;
  thread_local std::array<std::int32_t, kBatch> batch{};
  thread_local std::size_t used = kBatch;
  if (used == kBatch) {
    auth::fillRandom(batch.data(), sizeof batch);
    used = 0;
  }
  const std::int32_t secret = batch[used];
  batch[used++] = 0;
  return secret;
}

}  // namespace

bool SessionRegistry::tryAdmit() noexcept {
  int current = active_.load();
  while (current < maxSessions_) {
    if (active_.compare_exchange_weak(current, current + 1)) return true;
  }
  return false;
}

void SessionRegistry::release() noexcept { active_.fetch_sub(1); }

CancelKey SessionRegistry::add(std::shared_ptr<CancelTarget> target) {
  CancelKey key;
  key.secretKey = nextSecret();
  std::lock_guard lock(mutex_);
  if (nextProcessId_ == 0) {
    // Start somewhere random so ids from two proxy runs (or instances) rarely coincide.
    std::uint32_t seed = 0;
    auth::fillRandom(&seed, sizeof seed);
    nextProcessId_ = static_cast<std::int32_t>(seed % 0x3fffffffU) + 1;
  }
  do {
    key.processId = nextProcessId_;
    nextProcessId_ = nextProcessId_ == 0x7fffffff ? 1 : nextProcessId_ + 1;
    if (instanceId_ >= 0) {
      // The instance in the top 8 bits, a non-zero counter below.
      const auto counter = static_cast<std::uint32_t>(key.processId) & ((1U << kCounterBits) - 1);
      key.processId = static_cast<std::int32_t>((static_cast<std::uint32_t>(instanceId_) << kCounterBits) |
                                                (counter == 0 ? 1U : counter));
    }
  } while (entries_.contains(key.processId));
  entries_.emplace(key.processId, Entry{key.secretKey, std::move(target)});
  return key;
}

void SessionRegistry::remove(std::int32_t processId) {
  std::lock_guard lock(mutex_);
  entries_.erase(processId);
}

observability::CancelResult SessionRegistry::cancel(CancelKey key) {
  using observability::CancelResult;
  std::shared_ptr<CancelTarget> target;
  {
    std::lock_guard lock(mutex_);
    const auto it = entries_.find(key.processId);
    if (it == entries_.end()) return CancelResult::kUnmatched;
    // XOR then compare once: no early exit that would time how many bits matched.
    const volatile std::uint32_t difference =
        static_cast<std::uint32_t>(it->second.secretKey) ^ static_cast<std::uint32_t>(key.secretKey);
    if (difference != 0) return CancelResult::kUnmatched;
    target = it->second.target;
  }
  // Outside the lock: it waits on the upstream server.
  return target->cancelRunningQuery() ? CancelResult::kForwarded : CancelResult::kIdle;
}

namespace {

// "host:port" (or "[v6]:port") to an address; addressLength 0 when it does not resolve.
void resolve(PeerDirectory::Peer& peer) {
  const auto colon = peer.name.rfind(':');
  if (colon == std::string::npos) return;
  std::string host = peer.name.substr(0, colon);
  const std::string port = peer.name.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr) return;
  std::memcpy(&peer.address, found->ai_addr, found->ai_addrlen);
  peer.addressLength = static_cast<socklen_t>(found->ai_addrlen);
  ::freeaddrinfo(found);
}

constexpr auto kPeerRefresh = std::chrono::seconds(10);

}  // namespace

PeerDirectory::~PeerDirectory() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (resolver_.joinable()) resolver_.join();
}

void PeerDirectory::replace(std::vector<std::pair<int, std::string>> peers) {
  std::vector<std::pair<int, Peer>> next;
  for (auto& [id, name] : peers) {
    Peer peer;
    peer.name = std::move(name);
    resolve(peer);  // on the caller's thread (start, reload): never the event loop
    next.emplace_back(id, std::move(peer));
  }
  std::lock_guard lock(mutex_);
  peers_ = std::move(next);
  ++generation_;
  if (!peers_.empty() && !resolver_.joinable()) resolver_ = std::thread([this] { refreshLoop(); });
  changed_.notify_all();
}

std::optional<PeerDirectory::Peer> PeerDirectory::find(int id) const {
  std::lock_guard lock(mutex_);
  for (const auto& [peer, entry] : peers_) {
    if (peer == id) return entry;
  }
  return std::nullopt;
}

// Names change address (a rescheduled pod): resolved again every few seconds.
void PeerDirectory::refreshLoop() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    changed_.wait_for(lock, kPeerRefresh);
    if (stopping_) return;
    auto peers = peers_;
    const auto generation = generation_;
    lock.unlock();
    for (auto& [id, peer] : peers) resolve(peer);
    lock.lock();
    if (generation == generation_) peers_ = std::move(peers);
  }
}

}  // namespace pgwire_proxy::session
