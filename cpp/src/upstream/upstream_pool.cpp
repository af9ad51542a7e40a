// --reuse-upstream's pool of reset upstream connections.
#include "upstream/upstream_pool.h"

#include <poll.h>

#include <algorithm>
#include <utility>

namespace pgwire_proxy::upstream {
namespace {

void appendField(std::string& key, std::string_view field) {
  key += std::to_string(field.size());
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
  Parameters parameters = request.clientParameters;
  std::sort(parameters.begin(), parameters.end());
  std::string key;
  appendField(key, request.dsn);
  appendField(key, request.user);
  appendField(key, request.database);
  for (const auto& [name, value] : parameters) {
    appendField(key, name);
    appendField(key, value);
  }
  return key;
}

UpstreamPool::~UpstreamPool() { clear(); }

std::unique_ptr<UpstreamConnection> UpstreamPool::take(const std::string& key) {
  std::vector<std::unique_ptr<UpstreamConnection>> dead;  // closed outside the lock
  std::unique_ptr<UpstreamConnection> found;
  {
    std::lock_guard lock(mutex_);
    for (std::size_t i = parked_.size(); i-- > 0;) {  // the most recently parked first: its backend is warm
      if (parked_[i].key != key) continue;
      std::unique_ptr<UpstreamConnection> connection = std::move(parked_[i].connection);
      parked_.erase(parked_.begin() + static_cast<std::ptrdiff_t>(i));
      if (stillIdle(*connection)) {
        found = std::move(connection);
        break;
      }
      connection->abandon();
      dead.push_back(std::move(connection));
    }
  }
  return found;
}

void UpstreamPool::put(const std::string& key, std::unique_ptr<UpstreamConnection> connection) {
  std::unique_ptr<UpstreamConnection> evicted;
  {
    std::lock_guard lock(mutex_);
    if (closed_ || capacity_ == 0) {
      evicted = std::move(connection);
    } else {
      if (parked_.size() >= capacity_) {
        evicted = std::move(parked_.front().connection);
        parked_.pop_front();
      }
      parked_.push_back({key, std::move(connection), Clock::now()});
    }
  }
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
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    all.swap(parked_);
  }
}

std::size_t UpstreamPool::idle() const {
  std::lock_guard lock(mutex_);
  return parked_.size();
}

}  // namespace pgwire_proxy::upstream
