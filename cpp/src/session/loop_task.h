// What runs on an event loop: a task steps when its sockets are ready, its deadline passes, the server
// begins shutting down, or another thread wakes it; it says what to wait for next.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>

namespace pgwire_proxy::session {

using Clock = std::chrono::steady_clock;

// What happened since the task's last step. `client`/`upstream`: poll events of its two sockets (a
// task with one socket uses `client`).
struct Readiness {
  short client = 0;
  short upstream = 0;
  bool timedOut = false;  // the deadline it asked for has passed
  bool shutdown = false;  // the server began shutting down (stays set)
  bool forced = false;    // shutdown turned immediate (stays set)
  bool woken = false;     // another thread (or task) asked it to look at its state
};

// What to wait for before the next step. A descriptor may change between steps (libpq's connect
// socket does); -1 or no events: not watched.
struct Interest {
  int clientFd = -1;
  short client = 0;
  int upstreamFd = -1;
  short upstream = 0;
  // Changed by the task whenever the upstream descriptor may have been closed and reopened, even with
  // the same number (libpq's connect attempts): the loop registers it afresh.
  std::uint32_t upstreamEpoch = 0;
  std::optional<Clock::time_point> deadline;
  // The client descriptor is watched by every loop (the listening socket): an event wakes one loop
  // waiting for it, not all (EPOLLEXCLUSIVE).
  bool exclusive = false;
};

class LoopTask;

// What a task may ask of the loop it runs on.
class LoopHandle {
 public:
  virtual ~LoopHandle() = default;
  // Starts another task on the same loop (loop thread only).
  virtual void spawn(std::unique_ptr<LoopTask> task) = 0;
  // Wakes the task with this id soon (Readiness::woken); safe from any thread; ignored once it ended.
  virtual void wake(std::uint64_t taskId) = 0;
};

class LoopTask {
 public:
  virtual ~LoopTask() = default;
  // Set by the loop before the first step: which loop, and the id others wake it by.
  void attach(LoopHandle& loop, std::uint64_t id) noexcept {
    loop_ = &loop;
    taskId_ = id;
  }
  // Does everything possible without blocking; nullopt once the task has ended (the loop then stops
  // watching its descriptors and destroys it). Never throws.
  [[nodiscard]] virtual std::optional<Interest> advance(const Readiness& ready) noexcept = 0;
  // Whether the task's destructor gives one of its descriptors to a task it spawns on this loop,
  // which then takes the registration over; asked once it has ended, before it is destroyed. Any
  // other descriptor (closed by the destructor, or kept open, maybe for another thread: the pool)
  // leaves the loop's set first, while it is still the task's.
  [[nodiscard]] virtual bool handsOn(int fd) const noexcept {
    (void)fd;
    return false;
  }

 protected:
  [[nodiscard]] LoopHandle& loop() const noexcept { return *loop_; }
  [[nodiscard]] std::uint64_t taskId() const noexcept { return taskId_; }

 private:
  LoopHandle* loop_ = nullptr;
  std::uint64_t taskId_ = 0;
};

}  // namespace pgwire_proxy::session
