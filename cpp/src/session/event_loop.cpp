// The relay's event loop: epoll threads stepping sessions' relays.
#include "session/event_loop.h"

#include <poll.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <unordered_set>

#include "observability/log.h"
#include "session/session.h"

namespace pgwire_proxy::session {
namespace {

constexpr int kMaxEvents = 64;
// A lone session's loop thread polls without sleeping for this long after its last event: its
// client's next message or the upstream's answer usually comes sooner, and a sleeping thread takes
// longer than that to wake. The cost is a busy core while one session is active, none once idle.
constexpr auto kLoneSessionSpin = std::chrono::microseconds(150);

// epoll's event bits are poll's on Linux; the sessions speak poll.
static_assert(EPOLLIN == POLLIN && EPOLLOUT == POLLOUT && EPOLLRDHUP == POLLRDHUP && EPOLLHUP == POLLHUP &&
              EPOLLERR == POLLERR);

}  // namespace

class EventLoop::Worker {
 public:
  Worker(int wakeFd, int forceFd, const std::atomic<int>& relaying)
      : wakeFd_(wakeFd), forceFd_(forceFd), relaying_(relaying) {
    epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
    inbox_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (epoll_ < 0 || inbox_ < 0) throw std::system_error(errno, std::generic_category(), "epoll/eventfd");
    control(inbox_, &inboxTag_);
    if (wakeFd_ >= 0) control(wakeFd_, &wakeTag_);
    if (forceFd_ >= 0) control(forceFd_, &forceTag_);
    thread_ = std::thread([this] { run(); });
  }

  ~Worker() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    notify();
    thread_.join();
    ::close(epoll_);
    ::close(inbox_);
  }

  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void relay(Session& session) {
    Slot slot(session);
    {
      std::lock_guard lock(mutex_);
      arrivals_.push_back(&slot);
    }
    notify();
    std::unique_lock lock(slot.mutex);
    slot.finished.wait(lock, [&slot] { return slot.done; });
  }

 private:
  struct Slot;
  // What an epoll event points at: one of a slot's two sockets, or a control descriptor (slot null).
  struct Tag {
    Slot* slot = nullptr;
    bool upstream = false;
  };
  struct Registration {
    int fd = -1;
    short wanted = 0;      // what the session waits for
    short registered = 0;  // what the epoll set has (0: not in it); a superset of wanted, see watch()
  };
  struct Slot {
    explicit Slot(Session& s) : session(s), clientTag{this, false}, upstreamTag{this, true} {}
    Session& session;
    Tag clientTag;
    Tag upstreamTag;
    Registration client;
    Registration upstream;
    std::optional<std::multimap<Clock::time_point, Slot*>::iterator> deadline;
    std::mutex mutex;
    std::condition_variable finished;
    bool done = false;
  };

  void control(int fd, Tag* tag) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.ptr = tag;
    if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &event) != 0) {
      throw std::system_error(errno, std::generic_category(), "epoll_ctl");
    }
  }

  void notify() {
    const std::uint64_t one = 1;
    (void)::write(inbox_, &one, sizeof one);
  }

  void run() {
    std::array<epoll_event, kMaxEvents> events{};
    std::vector<std::pair<Slot*, Session::Readiness>> ready;
    Clock::time_point lastEvent{};
    for (;;) {
      int timeout = -1;
      if (!deadlines_.empty()) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadlines_.begin()->first - Clock::now());
        timeout = static_cast<int>(std::clamp<long long>(left.count(), 0, 60'000));
      }
      if (slots_.size() == 1 && relaying_.load(std::memory_order_relaxed) == 1 &&
          Clock::now() - lastEvent < kLoneSessionSpin) {
        timeout = 0;
        // Spinning must not take the core from the client or the backend when they share it: other
        // runnable threads on this CPU go first.
        sched_yield();
      }
      const int count = ::epoll_wait(epoll_, events.data(), kMaxEvents, timeout);
      if (count < 0 && errno != EINTR) {
        observability::logEvent(observability::LogLevel::kError, "event_loop_failed",
                                {{"error", std::strerror(errno)}});
        continue;
      }
      ready.clear();
      bool inbox = false;
      bool shutdown = false;
      bool forced = false;
      for (int i = 0; i < count; ++i) {
        auto* tag = static_cast<Tag*>(events[static_cast<std::size_t>(i)].data.ptr);
        const auto revents = static_cast<short>(events[static_cast<std::size_t>(i)].events);
        if (tag == &inboxTag_) {
          inbox = true;
        } else if (tag == &wakeTag_) {
          shutdown = true;
        } else if (tag == &forceTag_) {
          forced = true;
        } else {
          Registration& registration = tag->upstream ? tag->slot->upstream : tag->slot->client;
          const short wanted = static_cast<short>(registration.wanted | POLLHUP | POLLERR);
          if ((revents & ~wanted) != 0) exact(registration, tag);  // an event kept on lazily fired
          if ((revents & wanted) == 0) continue;
          auto it = std::find_if(ready.begin(), ready.end(), [tag](const auto& r) { return r.first == tag->slot; });
          if (it == ready.end()) it = ready.insert(ready.end(), {tag->slot, Session::Readiness{}});
          (tag->upstream ? it->second.upstream : it->second.client) |= static_cast<short>(revents & wanted);
        }
      }
      if (!ready.empty()) lastEvent = Clock::now();
      for (auto& [slot, readiness] : ready) advance(*slot, readiness);
      const auto now = Clock::now();
      std::vector<Slot*> expired;
      for (auto it = deadlines_.begin(); it != deadlines_.end() && it->first <= now; ++it) expired.push_back(it->second);
      for (Slot* slot : expired) {
        if (!slots_.contains(slot)) continue;
        Session::Readiness timedOut = told();
        timedOut.timedOut = true;
        advance(*slot, timedOut);
      }
      if (shutdown || forced) {
        // The eventfds stay readable: each is taken out of the set once seen, and every session told.
        if (shutdown && !shutdownSeen_) {
          shutdownSeen_ = true;
          (void)::epoll_ctl(epoll_, EPOLL_CTL_DEL, wakeFd_, nullptr);
        }
        if (forced && !forcedSeen_) {
          forcedSeen_ = true;
          (void)::epoll_ctl(epoll_, EPOLL_CTL_DEL, forceFd_, nullptr);
        }
        const std::vector<Slot*> everyone(slots_.begin(), slots_.end());
        for (Slot* slot : everyone) advance(*slot, told());
      }
      if (inbox && !adopt()) return;
    }
  }

  // The shutdown state a session is told with every step it gets for it.
  [[nodiscard]] Session::Readiness told() const {
    Session::Readiness readiness;
    readiness.shutdown = shutdownSeen_;
    readiness.forced = forcedSeen_;
    return readiness;
  }

  // Takes the sessions handed over; false when the loop is to stop.
  bool adopt() {
    std::uint64_t value = 0;
    (void)::read(inbox_, &value, sizeof value);
    std::vector<Slot*> arrivals;
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return false;
      arrivals.swap(arrivals_);
    }
    for (Slot* slot : arrivals) {
      slot->client.fd = slot->session.clientFd();
      slot->upstream.fd = slot->session.upstreamFd();
      slots_.insert(slot);
      advance(*slot, told());  // bytes may already be buffered (a Query sent with the startup packet)
    }
    return true;
  }

  void advance(Slot& slot, const Session::Readiness& readiness) {
    const auto interest = slot.session.advance(readiness);
    if (!interest) {
      finish(slot);
      return;
    }
    watch(slot.client, &slot.clientTag, interest->client);
    watch(slot.upstream, &slot.upstreamTag, interest->upstream);
    const bool same = slot.deadline.has_value() == interest->deadline.has_value() &&
                      (!slot.deadline || (*slot.deadline)->first == *interest->deadline);
    if (!same) {
      if (slot.deadline) deadlines_.erase(*slot.deadline);
      slot.deadline.reset();
      if (interest->deadline) slot.deadline = deadlines_.emplace(*interest->deadline, &slot);
    }
  }

  // Level-triggered. A session's interest changes with every query (the client is read when idle,
  // only watched for hanging up while its query runs); changing the epoll set each time would cost two
  // epoll_ctl calls a query. So events no longer wanted stay registered, and the registration is made
  // exact only if one of them fires (a client sending while its query runs).
  void watch(Registration& registration, Tag* tag, short events) {
    registration.wanted = events;
    if (events == 0 ? registration.registered != 0 : (events & ~registration.registered) != 0) {
      exact(registration, tag);
    }
  }

  void exact(Registration& registration, Tag* tag) {
    const short events = registration.wanted;
    if (events == registration.registered) return;
    epoll_event event{};
    event.events = static_cast<std::uint32_t>(static_cast<unsigned short>(events));
    event.data.ptr = tag;
    const int op = events == 0 ? EPOLL_CTL_DEL : registration.registered == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (::epoll_ctl(epoll_, op, registration.fd, &event) != 0) {
      observability::logEvent(observability::LogLevel::kError, "event_loop_failed",
                              {{"error", std::string("epoll_ctl: ") + std::strerror(errno)}});
    }
    registration.registered = events;
  }

  void finish(Slot& slot) {
    watch(slot.client, &slot.clientTag, 0);  // out of the set before the session's thread closes them
    watch(slot.upstream, &slot.upstreamTag, 0);
    if (slot.deadline) deadlines_.erase(*slot.deadline);
    slot.deadline.reset();
    slots_.erase(&slot);
    std::lock_guard lock(slot.mutex);
    slot.done = true;
    slot.finished.notify_one();
  }

  int epoll_ = -1;
  int inbox_ = -1;
  const int wakeFd_;
  const int forceFd_;
  const std::atomic<int>& relaying_;  // sessions in relay() on all of the loop's threads
  Tag inboxTag_;
  Tag wakeTag_;
  Tag forceTag_;
  bool shutdownSeen_ = false;
  bool forcedSeen_ = false;

  std::mutex mutex_;  // arrivals_ and stopping_
  std::vector<Slot*> arrivals_;
  bool stopping_ = false;

  // The loop thread's own.
  std::unordered_set<Slot*> slots_;
  std::multimap<Clock::time_point, Slot*> deadlines_;
  std::thread thread_;
};

EventLoop::EventLoop(unsigned threads, int wakeFd, int forceFd) {
  for (unsigned i = 0; i < std::max(threads, 1U); ++i) {
    workers_.push_back(std::make_unique<Worker>(wakeFd, forceFd, relaying_));
  }
}

EventLoop::~EventLoop() = default;

void EventLoop::relay(Session& session) {
  relaying_.fetch_add(1, std::memory_order_relaxed);
  workers_[next_.fetch_add(1, std::memory_order_relaxed) % workers_.size()]->relay(session);
  relaying_.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace pgwire_proxy::session
