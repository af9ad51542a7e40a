// --reuse-upstream's pool of reset upstream connections.
#include "upstream/upstream_pool.h"

#include <poll.h>

#include <algorithm>
#include <charconv>
#include <utility>

namespace pgwire_proxy::upstream {
namespace {

// A field's length (at most 20 digits), a colon, the field.
constexpr std::size_t kFieldOverhead = 21;

void appendField(std::string& key, std::string_view field) {
  char digits[kFieldOverhead];
  const auto end = std::to_chars(digits, digits + sizeof digits, field.size()).ptr;
  key.append(digits, end);
  key += ':';
  key += field;
}

// An idle connection has nothing to say: anything readable is the server ending it (or data the
// relay would mistake for a reply), and a hang-up is a hang-up.
bool stillIdle(const UpstreamConnection& connection) {
  pollfd probe{connection.socket(), POLLIN | POLLRDHUP, 0};
  if (probe.fd < 0) return false;
  return ::poll(&probe, 1, 0) == 0;
}

}  // namespace

std::string poolKey(const ConnectRequest& request) {
  if (request.asClient) return {};
  // Sorted by pointer: the parameters are not copied.
  std::vector<const Parameters::value_type*> parameters;
  parameters.reserve(request.clientParameters.size());
  for (const auto& parameter : request.clientParameters) parameters.push_back(&parameter);
  std::sort(parameters.begin(), parameters.end(), [](const auto* a, const auto* b) { return *a < *b; });
  std::string key;
  std::size_t size = request.dsn.size() + request.user.size() + request.database.size() + 3 * kFieldOverhead;
  for (const auto* parameter : parameters) size += parameter->first.size() + parameter->second.size() + 2 * kFieldOverhead;
  key.reserve(size);  // one allocation, not one per doubling
  appendField(key, request.dsn);
  appendField(key, request.user);
  appendField(key, request.database);
  for (const auto* parameter : parameters) {
    appendField(key, parameter->first);
    appendField(key, parameter->second);
  }
  return key;
}

UpstreamPool::~UpstreamPool() { clear(); }

UpstreamPool::Taken UpstreamPool::take(const std::string& key, const std::shared_ptr<Handover>& handover) {
  std::vector<std::unique_ptr<UpstreamConnection>> dead;  // closed once the lock is released
  Taken taken;
  std::lock_guard lock(mutex_);
  for (std::size_t i = parked_.size(); i-- > 0;) {  // the most recently parked first: its backend is warm
    if (parked_[i].key != key) continue;
    std::unique_ptr<UpstreamConnection> connection = std::move(parked_[i].connection);
    parked_.erase(parked_.begin() + static_cast<std::ptrdiff_t>(i));
    if (stillIdle(*connection)) {
      taken.connection = std::move(connection);
      return taken;
    }
    connection->abandon();
    dead.push_back(std::move(connection));
  }
  if (handover == nullptr || closed_) return taken;
  const auto resetting = std::find_if(resetting_.begin(), resetting_.end(), [&key](const auto& r) { return r.first == key; });
  if (resetting != resetting_.end() && static_cast<std::size_t>(resetting->second) > waitingLocked(key)) {
    handover->key = key;
    waiting_.push_back(handover);
    taken.waiting = true;
  }
  return taken;
}

std::optional<std::unique_ptr<UpstreamConnection>> UpstreamPool::collect(const std::shared_ptr<Handover>& handover) {
  std::lock_guard lock(mutex_);
  if (!handover->settled) return std::nullopt;
  return std::move(handover->connection);
}

void UpstreamPool::abandon(const std::shared_ptr<Handover>& handover) {
  std::unique_ptr<UpstreamConnection> evicted;
  std::vector<std::function<void()>> wakes;
  {
    std::lock_guard lock(mutex_);
    std::erase(waiting_, handover);
    if (handover->connection) placeLocked(handover->key, std::move(handover->connection), wakes, evicted);
  }
  for (auto& wake : wakes) wake();
}

void UpstreamPool::resetStarted(const std::string& key) {
  std::lock_guard lock(mutex_);
  const auto it = std::find_if(resetting_.begin(), resetting_.end(), [&key](const auto& r) { return r.first == key; });
  if (it != resetting_.end()) {
    ++it->second;
  } else {
    resetting_.emplace_back(key, 1);
  }
}

void UpstreamPool::resetEnded(const std::string& key, std::unique_ptr<UpstreamConnection> connection) {
  std::unique_ptr<UpstreamConnection> evicted;
  std::vector<std::function<void()>> wakes;
  {
    std::lock_guard lock(mutex_);
    const auto it = std::find_if(resetting_.begin(), resetting_.end(), [&key](const auto& r) { return r.first == key; });
    int left = 0;
    if (it != resetting_.end()) {
      left = --it->second;
      if (left <= 0) resetting_.erase(it);
    }
    if (connection) placeLocked(key, std::move(connection), wakes, evicted);
    // Waiters beyond the resets still under way would wait for nothing: they connect anew.
    for (std::size_t waiting = waitingLocked(key); waiting > static_cast<std::size_t>(std::max(left, 0)); --waiting) {
      const auto last = std::find_if(waiting_.rbegin(), waiting_.rend(), [&key](const auto& h) { return h->key == key; });
      (*last)->settled = true;
      wakes.push_back((*last)->wake);
      waiting_.erase(std::next(last).base());
    }
  }
  for (auto& wake : wakes) wake();
}

void UpstreamPool::placeLocked(const std::string& key, std::unique_ptr<UpstreamConnection> connection,
                               std::vector<std::function<void()>>& wakes,
                               std::unique_ptr<UpstreamConnection>& evicted) {
  if (closed_ || capacity_ == 0) {
    evicted = std::move(connection);
    return;
  }
  const auto waiter = std::find_if(waiting_.begin(), waiting_.end(), [&key](const auto& h) { return h->key == key; });
  if (waiter != waiting_.end()) {
    (*waiter)->connection = std::move(connection);
    (*waiter)->settled = true;
    wakes.push_back((*waiter)->wake);
    waiting_.erase(waiter);
    return;
  }
  if (parked_.size() >= capacity_) {
    evicted = std::move(parked_.front().connection);
    parked_.pop_front();
  }
  parked_.push_back({key, std::move(connection), Clock::now()});
}

std::size_t UpstreamPool::waitingLocked(const std::string& key) const {
  return static_cast<std::size_t>(
      std::count_if(waiting_.begin(), waiting_.end(), [&key](const auto& h) { return h->key == key; }));
}

std::optional<UpstreamPool::Clock::time_point> UpstreamPool::sweep() {
  std::vector<std::unique_ptr<UpstreamConnection>> expired;
  std::optional<Clock::time_point> next;
  {
    std::lock_guard lock(mutex_);
    const auto now = Clock::now();
    while (!parked_.empty() && parked_.front().since + idleTimeout_ <= now) {
      expired.push_back(std::move(parked_.front().connection));
      parked_.pop_front();
    }
    if (!parked_.empty()) next = parked_.front().since + idleTimeout_;
  }
  return next;
}

void UpstreamPool::clear() {
  std::deque<Parked> all;
  std::vector<std::function<void()>> wakes;
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    all.swap(parked_);
    for (auto& waiter : waiting_) {
      waiter->settled = true;  // with nothing: connect anew (or, shutting down, not at all)
      wakes.push_back(waiter->wake);
    }
    waiting_.clear();
  }
  for (auto& wake : wakes) wake();
}


}  // namespace pgwire_proxy::upstream
