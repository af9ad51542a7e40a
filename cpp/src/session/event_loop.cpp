// The event loop: epoll threads stepping the tasks they own.
#include "session/event_loop.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>

#include "observability/log.h"

namespace pgwire_proxy::session {
namespace {

constexpr int kMaxEvents = 64;

// What an epoll event carries: a task's id and which of its two sockets ((id << 1) | upstream), or
// one of the loop's own descriptors. Task ids start at 1 and never come near these.
constexpr std::uint64_t kInboxKey = ~std::uint64_t{0};
constexpr std::uint64_t kWakeKey = kInboxKey - 1;
constexpr std::uint64_t kForceKey = kInboxKey - 2;
constexpr std::uint64_t socketKey(std::uint64_t taskId, bool upstream) { return (taskId << 1) | (upstream ? 1U : 0U); }

// epoll's event bits are poll's on Linux; the tasks speak poll.
static_assert(EPOLLIN == POLLIN && EPOLLOUT == POLLOUT && EPOLLRDHUP == POLLRDHUP && EPOLLHUP == POLLHUP &&
              EPOLLERR == POLLERR);

}  // namespace

class EventLoop::Worker final : public LoopHandle {
 public:
  Worker(unsigned index, int wakeFd, int forceFd, std::atomic<int>& tasks, std::atomic<std::uint64_t>& ids, int cpu)
      : wakeFd_(wakeFd), forceFd_(forceFd), tasks_(tasks), ids_(ids) {
    epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
    inbox_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (epoll_ < 0 || inbox_ < 0) throw std::system_error(errno, std::generic_category(), "epoll/eventfd");
    control(inbox_, kInboxKey);
    if (wakeFd_ >= 0) control(wakeFd_, kWakeKey);
    if (forceFd_ >= 0) control(forceFd_, kForceKey);
    thread_ = std::thread([this] { run(); });
    // ps -L, top -H and /proc/PID/task/*/comm show which threads are the loops.
    (void)::pthread_setname_np(thread_.native_handle(), ("pgwire-loop-" + std::to_string(index)).c_str());
    if (cpu >= 0) pin(cpu);
  }

  ~Worker() override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    notify();
    thread_.join();
    closing_ = true;
    // Tasks still here end now (their destructors close what they hold), after the thread is gone.
    for (auto& [id, slot] : slots_) {
      unwatch(*slot);
      slot->task.reset();
      tasks_.fetch_sub(1, std::memory_order_relaxed);
    }
    slots_.clear();
    for (auto& task : arrivals_) {
      task.reset();
      tasks_.fetch_sub(1, std::memory_order_relaxed);
    }
    ::close(epoll_);
    ::close(inbox_);
  }

  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Tasks on this loop, for adoptNear's choice (any thread reads it).
  [[nodiscard]] int load() const noexcept { return load_.load(std::memory_order_relaxed); }

  // Any thread.
  void adopt(std::unique_ptr<LoopTask> task) {
    tasks_.fetch_add(1, std::memory_order_relaxed);
    load_.fetch_add(1, std::memory_order_relaxed);
    {
      std::lock_guard lock(mutex_);
      arrivals_.push_back(std::move(task));
    }
    notify();
  }

  void spawn(std::unique_ptr<LoopTask> task) override {
    if (closing_) return;  // the loop is going away: a cancel on the way out is dropped with it
    tasks_.fetch_add(1, std::memory_order_relaxed);
    load_.fetch_add(1, std::memory_order_relaxed);
    start(std::move(task));
  }

  void wake(std::uint64_t taskId) override {
    {
      std::lock_guard lock(mutex_);
      wakeups_.push_back(taskId);
    }
    notify();
  }

 private:
  struct Registration {
    int fd = -1;
    short wanted = 0;      // what the task waits for
    short registered = 0;  // what the epoll set has (0: not in it); a superset of wanted, see watch()
    // The descriptor may have been closed and its number reopened since it was registered (libpq's
    // connect): the next exact() asks the kernel even if nothing changed, MOD first (still the same
    // socket: the usual case), ADD if the kernel forgot it.
    bool stale = false;
    bool exclusive = false;  // added with EPOLLEXCLUSIVE, which MOD refuses: changed by DEL and ADD
  };
  struct Slot {
    Slot(std::unique_ptr<LoopTask> t, std::uint64_t i) : task(std::move(t)), id(i) {}
    std::unique_ptr<LoopTask> task;
    std::uint64_t id;
    Registration client;
    Registration upstream;
    std::uint32_t upstreamEpoch = 0;
    // The deadline the task asked for, and the entry in deadlines_ (never later than it; see advance).
    std::optional<Clock::time_point> deadline;
    std::optional<std::multimap<Clock::time_point, std::uint64_t>::iterator> registeredDeadline;
  };

  void control(int fd, std::uint64_t key) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.u64 = key;
    if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &event) != 0) {
      throw std::system_error(errno, std::generic_category(), "epoll_ctl");
    }
  }

  // Right after the thread starts, before the loop has a task: it moves at its next wake-up at most.
  void pin(int cpu) {
    cpu_set_t* set = CPU_ALLOC(cpu + 1);
    if (set == nullptr) return;
    const std::size_t size = CPU_ALLOC_SIZE(cpu + 1);
    CPU_ZERO_S(size, set);
    CPU_SET_S(static_cast<std::size_t>(cpu), size, set);
    const int error = ::pthread_setaffinity_np(thread_.native_handle(), size, set);
    CPU_FREE(set);
    if (error != 0) {
      observability::logEvent(observability::LogLevel::kWarning, "loop_not_pinned",
                              {{"cpu", cpu}, {"error", std::strerror(error)}});
    }
  }

  void notify() {
    const std::uint64_t one = 1;
    (void)::write(inbox_, &one, sizeof one);
  }

  void run() {
    std::array<epoll_event, kMaxEvents> events{};
    std::vector<std::pair<Slot*, Readiness>> ready;
    for (;;) {
      int timeout = -1;
      if (!deadlines_.empty()) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadlines_.begin()->first - Clock::now());
        timeout = static_cast<int>(std::clamp<long long>(left.count(), 0, 60'000));
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
        const std::uint64_t key = events[static_cast<std::size_t>(i)].data.u64;
        const auto revents = static_cast<short>(events[static_cast<std::size_t>(i)].events);
        if (key == kInboxKey) {
          inbox = true;
        } else if (key == kWakeKey) {
          shutdown = true;
        } else if (key == kForceKey) {
          forced = true;
        } else {
          // By id, not by pointer: a registration the loop could not remove (its descriptor closed
          // while another process's copy kept the socket open, see settle) may name a task that has
          // ended. Its events find no slot and are dropped.
          const auto found = slots_.find(key >> 1);
          if (found == slots_.end()) continue;
          Slot* slot = found->second.get();
          const bool upstream = (key & 1U) != 0;
          Registration& registration = upstream ? slot->upstream : slot->client;
          const short wanted = static_cast<short>(registration.wanted | POLLHUP | POLLERR);
          if ((revents & ~wanted) != 0) exact(registration, key);  // an event kept on lazily fired
          if ((revents & wanted) == 0) continue;
          auto it = std::find_if(ready.begin(), ready.end(), [slot](const auto& r) { return r.first == slot; });
          if (it == ready.end()) it = ready.insert(ready.end(), {slot, told()});
          (upstream ? it->second.upstream : it->second.client) |= static_cast<short>(revents & wanted);
        }
      }
      // A step ends only its own task (finish), so the other slots gathered here are still alive.
      for (auto& [slot, readiness] : ready) advance(*slot, readiness);
      if (!deadlines_.empty()) expire(Clock::now());
      if (shutdown || forced) {
        // The eventfds stay readable: each is taken out of the set once seen, and every task told.
        if (shutdown && !shutdownSeen_) {
          shutdownSeen_ = true;
          (void)::epoll_ctl(epoll_, EPOLL_CTL_DEL, wakeFd_, nullptr);
        }
        if (forced && !forcedSeen_) {
          forcedSeen_ = true;
          (void)::epoll_ctl(epoll_, EPOLL_CTL_DEL, forceFd_, nullptr);
        }
        std::vector<std::uint64_t> everyone;
        everyone.reserve(slots_.size());
        for (const auto& [id, slot] : slots_) everyone.push_back(id);
        for (const std::uint64_t id : everyone) advance(id, told());
      }
      if (inbox && !takeInbox()) return;
    }
  }

  // The shutdown state a task is told with every step it gets.
  [[nodiscard]] Readiness told() const {
    Readiness readiness;
    readiness.shutdown = shutdownSeen_;
    readiness.forced = forcedSeen_;
    return readiness;
  }

  // Takes the tasks handed over and the wake-ups; false when the loop is to stop.
  bool takeInbox() {
    std::uint64_t value = 0;
    (void)::read(inbox_, &value, sizeof value);
    std::vector<std::unique_ptr<LoopTask>> arrivals;
    std::vector<std::uint64_t> wakeups;
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return false;
      arrivals.swap(arrivals_);
      wakeups.swap(wakeups_);
    }
    for (auto& task : arrivals) start(std::move(task));
    for (const std::uint64_t id : wakeups) {
      Readiness woken = told();
      woken.woken = true;
      advance(id, woken);
    }
    return true;
  }

  void start(std::unique_ptr<LoopTask> task) {
    const std::uint64_t id = ids_.fetch_add(1, std::memory_order_relaxed) + 1;
    task->attach(*this, id);
    auto [it, inserted] = slots_.emplace(id, std::make_unique<Slot>(std::move(task), id));
    (void)inserted;
    advance(*it->second, told());  // bytes may already be waiting
  }

  // Steps the tasks whose deadline has passed. An entry is only a lower bound (see advance): a task
  // whose own deadline is later is not stepped, its entry moves there; one with none loses it.
  void expire(Clock::time_point now) {
    expired_.clear();
    for (auto it = deadlines_.begin(); it != deadlines_.end() && it->first <= now; ++it) expired_.push_back(it->second);
    for (const std::uint64_t id : expired_) {
      const auto found = slots_.find(id);
      if (found == slots_.end()) continue;  // it ended earlier in this round
      Slot& slot = *found->second;
      if (!slot.registeredDeadline || (*slot.registeredDeadline)->first > now) continue;
      deadlines_.erase(*slot.registeredDeadline);
      slot.registeredDeadline.reset();
      if (!slot.deadline) continue;
      if (*slot.deadline > now) {
        slot.registeredDeadline = deadlines_.emplace(*slot.deadline, slot.id);
        continue;
      }
      Readiness timedOut = told();
      timedOut.timedOut = true;
      advance(slot, timedOut);  // registers the deadline it asks for next
    }
  }

  void advance(std::uint64_t id, const Readiness& readiness) {
    const auto found = slots_.find(id);
    if (found == slots_.end()) return;  // it ended earlier in this round
    advance(*found->second, readiness);
  }

  // Steps the slot's task and takes its interest; a task that ended is destroyed with its slot.
  void advance(Slot& slot, const Readiness& readiness) {
    const auto interest = slot.task->advance(readiness);
    if (!interest) {
      finish(slot.id);
      return;
    }
    slot.client.exclusive = interest->exclusive;
    watch(slot.client, socketKey(slot.id, false), interest->clientFd, interest->client);
    if (interest->upstreamEpoch != slot.upstreamEpoch) {
      slot.upstreamEpoch = interest->upstreamEpoch;
      if (interest->upstreamFd == slot.upstream.fd && slot.upstream.registered != 0) {
        slot.upstream.stale = true;  // the same socket still (MOD), or a new one of its number (ADD)
      } else {
        forget(slot.upstream);
      }
    }
    watch(slot.upstream, socketKey(slot.id, true), interest->upstreamFd, interest->upstream);
    // A session's deadline moves with every query (the backstop starts anew), and re-keying the
    // multimap each time costs a tree erase and insert per query. So an entry only moves earlier: a
    // later deadline, or none, leaves it where it is, and expire() moves or drops it when it comes.
    slot.deadline = interest->deadline;
    if (slot.deadline && (!slot.registeredDeadline || *slot.deadline < (*slot.registeredDeadline)->first)) {
      if (slot.registeredDeadline) deadlines_.erase(*slot.registeredDeadline);
      slot.registeredDeadline = deadlines_.emplace(*slot.deadline, slot.id);
    }
  }

  // Level-triggered. A session's interest changes with every query (the client is read when idle,
  // only watched for hanging up while its query runs); changing the epoll set each time would cost two
  // epoll_ctl calls a query. So events no longer wanted stay registered, and the registration is made
  // exact only if one of them fires (a client sending while its query runs). A new descriptor (libpq
  // connects again, or closed one and got the same number) is registered afresh.
  void watch(Registration& registration, std::uint64_t key, int fd, short events) {
    if (fd != registration.fd || fd < 0) {
      if (registration.registered != 0 && registration.fd >= 0) {
        (void)::epoll_ctl(epoll_, EPOLL_CTL_DEL, registration.fd, nullptr);  // may be closed already
      }
      Registration fresh;
      fresh.fd = fd;
      fresh.exclusive = registration.exclusive;  // set by advance() for this interest
      registration = fresh;
      if (fd < 0) return;
      takeLeftOver(registration);
    }
    registration.wanted = events;
    if (registration.stale || (events == 0 ? registration.registered != 0 : (events & ~registration.registered) != 0)) {
      exact(registration, key);
    }
  }

  // Forgets what was registered without touching the set: the old descriptor was closed (libpq
  // replaced it) and its number may belong to another task by now. The kernel dropped it from the
  // set, or keeps it while another process's copy holds the socket open: then its events still carry
  // this slot's key, and make the registration exact, or find no slot once the task has ended.
  static void forget(Registration& registration) { registration = Registration{}; }

  void exact(Registration& registration, std::uint64_t key) {
    const short events = registration.wanted;
    const bool stale = std::exchange(registration.stale, false);
    if (events == registration.registered && !stale) return;
    epoll_event event{};
    event.events = static_cast<std::uint32_t>(static_cast<unsigned short>(events));
    event.data.u64 = key;
    if (registration.exclusive && events != 0) {
      if (registration.registered != 0) (void)::epoll_ctl(epoll_, EPOLL_CTL_DEL, registration.fd, nullptr);
      registration.registered = 0;
      event.events |= EPOLLEXCLUSIVE;
    }
    int op = events == 0 ? EPOLL_CTL_DEL : registration.registered == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    int result = ::epoll_ctl(epoll_, op, registration.fd, &event);
    // The kernel forgets a closed descriptor on its own, and a reused number may still be in the set.
    if (result != 0 && errno == EEXIST && op == EPOLL_CTL_ADD) result = ::epoll_ctl(epoll_, op = EPOLL_CTL_MOD, registration.fd, &event);
    if (result != 0 && errno == ENOENT && op == EPOLL_CTL_MOD) result = ::epoll_ctl(epoll_, op = EPOLL_CTL_ADD, registration.fd, &event);
    if (result != 0 && !(op == EPOLL_CTL_DEL && (errno == ENOENT || errno == EBADF))) {
      observability::logEvent(observability::LogLevel::kError, "event_loop_failed",
                              {{"error", std::string("epoll_ctl: ") + std::strerror(errno)}});
    }
    registration.registered = events;
  }

  void unwatch(Slot& slot) {
    watch(slot.client, socketKey(slot.id, false), -1, 0);  // out of the set before the task closes them
    watch(slot.upstream, socketKey(slot.id, true), -1, 0);
    forgetDeadline(slot);
  }

  void forgetDeadline(Slot& slot) {
    if (slot.registeredDeadline) deadlines_.erase(*slot.registeredDeadline);
    slot.registeredDeadline.reset();
    slot.deadline.reset();
  }

  // An ended task's registrations, before it is destroyed (LoopTask::handsOn). A descriptor it
  // hands to a task it spawns here (a session's upstream going on to its reset) is left over: that
  // task takes the registration over with one MOD instead of a DEL and an ADD, and finish() removes
  // it if nobody did; no epoll_wait runs meanwhile, so no event can name the ended slot. Any other
  // leaves the set now, while it is still this task's: one that lives on may go to another thread
  // the moment the destructor parks it (the pool), and one the destructor closes would stay in the
  // set if anything else still refers to its socket, as a child forked at that moment does until it
  // execs (the in-process proxy's test process starts psql and pgbench): the kernel drops a
  // registration only with the socket's last descriptor, and reports its events meanwhile.
  void settle(const LoopTask& task, Registration& registration) {
    if (registration.fd >= 0 && registration.registered != 0) {
      if (!registration.exclusive && task.handsOn(registration.fd)) {
        leftOver_.push_back(registration);
      } else {
        (void)::epoll_ctl(epoll_, EPOLL_CTL_DEL, registration.fd, nullptr);
      }
    }
    forget(registration);
  }

  // A descriptor newly watched that an ended task handed on: the set has it (with the ended slot's
  // key), so the first exact() is a MOD. An exclusive registration (the listener's) is not
  // handed over: exact() changes those by DEL and ADD.
  void takeLeftOver(Registration& registration) {
    const auto it = std::find_if(leftOver_.begin(), leftOver_.end(),
                                 [&](const Registration& r) { return r.fd == registration.fd && !r.exclusive; });
    if (it == leftOver_.end()) return;
    registration.registered = it->registered;
    registration.stale = true;  // the kernel is told this slot's key even if the events are the same
    leftOver_.erase(it);
  }

  // Removes what ended tasks handed on and nobody took. Still this thread's: nothing else had it.
  void dropLeftOver() {
    for (const Registration& registration : leftOver_) (void)::epoll_ctl(epoll_, EPOLL_CTL_DEL, registration.fd, nullptr);
    leftOver_.clear();
  }

  void finish(std::uint64_t id) {
    // Nested in another task's destructor (a task it spawned ended at its first step): what that one
    // handed on leaves the set now, before the destructor below can close it and another thread
    // reuse its number.
    dropLeftOver();
    const auto found = slots_.find(id);
    std::unique_ptr<Slot> slot = std::move(found->second);
    slots_.erase(found);
    settle(*slot->task, slot->client);
    settle(*slot->task, slot->upstream);
    forgetDeadline(*slot);
    slot->task.reset();  // may spawn (a cancel on the way out, an upstream's reset): slots_ is consistent again
    dropLeftOver();  // handed on, but the spawned task did not watch it
    tasks_.fetch_sub(1, std::memory_order_relaxed);
    load_.fetch_sub(1, std::memory_order_relaxed);
  }

  int epoll_ = -1;
  int inbox_ = -1;
  const int wakeFd_;
  const int forceFd_;
  std::atomic<int>& tasks_;          // on all of the loop's threads
  std::atomic<std::uint64_t>& ids_;  // task ids, unique across the loop's threads
  std::atomic<int> load_{0};         // this loop's tasks (its share of tasks_)
  bool shutdownSeen_ = false;
  bool forcedSeen_ = false;
  bool closing_ = false;  // the destructor is ending the tasks left

  std::mutex mutex_;  // arrivals_, wakeups_ and stopping_
  std::vector<std::unique_ptr<LoopTask>> arrivals_;
  std::vector<std::uint64_t> wakeups_;
  bool stopping_ = false;

  // The loop thread's own.
  std::unordered_map<std::uint64_t, std::unique_ptr<Slot>> slots_;
  std::multimap<Clock::time_point, std::uint64_t> deadlines_;  // a lower bound of each slot's deadline
  std::vector<std::uint64_t> expired_;                         // expire()'s, kept for its storage
  std::vector<Registration> leftOver_;                         // finish()'s, see settle()
  std::thread thread_;
};

namespace {
std::atomic<std::uint64_t> gTaskIds{0};
}  // namespace

std::vector<int> allowedCpus() {
  // A set big enough for the kernel's mask (EINVAL: too small; 1024 CPUs fit the first try).
  for (int room = 1024; room <= (1 << 20); room *= 2) {
    cpu_set_t* set = CPU_ALLOC(room);
    if (set == nullptr) break;
    const std::size_t size = CPU_ALLOC_SIZE(room);
    CPU_ZERO_S(size, set);
    if (::sched_getaffinity(0, size, set) == 0) {
      std::vector<int> cpus;
      for (int cpu = 0; cpu < room; ++cpu) {
        if (CPU_ISSET_S(static_cast<std::size_t>(cpu), size, set)) cpus.push_back(cpu);
      }
      CPU_FREE(set);
      if (!cpus.empty()) return cpus;
      break;
    }
    CPU_FREE(set);
    if (errno != EINVAL) break;
  }
  std::vector<int> cpus(std::max(1U, std::thread::hardware_concurrency()));
  for (std::size_t i = 0; i < cpus.size(); ++i) cpus[i] = static_cast<int>(i);
  return cpus;
}

EventLoop::EventLoop(unsigned threads, int wakeFd, int forceFd, const std::vector<int>& pinTo) {
  for (unsigned i = 0; i < std::max(threads, 1U); ++i) {
    const int cpu = pinTo.empty() ? -1 : pinTo[i % pinTo.size()];
    workers_.push_back(std::make_unique<Worker>(i, wakeFd, forceFd, tasks_, gTaskIds, cpu));
  }
}

EventLoop::~EventLoop() = default;

void EventLoop::adopt(std::unique_ptr<LoopTask> task) {
  workers_[next_.fetch_add(1, std::memory_order_relaxed) % workers_.size()]->adopt(std::move(task));
}

void EventLoop::adoptOnEach(const std::function<std::unique_ptr<LoopTask>()>& make) {
  for (auto& worker : workers_) worker->adopt(make());
}

void EventLoop::adoptNear(LoopHandle& here, std::unique_ptr<LoopTask> task) {
  Worker* local = nullptr;
  Worker* least = nullptr;
  for (auto& worker : workers_) {
    if (worker.get() == &here) local = worker.get();
    if (least == nullptr || worker->load() < least->load()) least = worker.get();
  }
  if (local != nullptr && local->load() <= least->load()) {
    local->spawn(std::move(task));
  } else {
    least->adopt(std::move(task));
  }
}

}  // namespace pgwire_proxy::session
