// The event loop: a few threads, each with an epoll set, step the tasks they own (sessions from the
// first byte to the last, proxy-initiated cancels) as their sockets become ready. Nothing on a loop
// thread blocks; the number of threads is set by configuration, never by the number of connections.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <vector>

#include "session/loop_task.h"

namespace pgwire_proxy::session {

// The CPUs the calling thread may run on (a process's affinity, which taskset or a container's cpuset
// sets, is its threads'), ascending; the machine's online CPUs, numbered from 0, when the kernel will
// not say.
[[nodiscard]] std::vector<int> allowedCpus();

class EventLoop {
 public:
  // `threads` loop threads (at least 1). wakeFd / forceFd: the server's shutdown eventfds (may be -1).
  // With `pinTo`, loop thread i runs only on CPU pinTo[i % size] (--pin-loops).
  EventLoop(unsigned threads, int wakeFd, int forceFd, const std::vector<int>& pinTo = {});
  // Stops and joins the threads, destroying the tasks still running.
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Hands a task to one of the loop threads (round robin); safe from any thread.
  void adopt(std::unique_ptr<LoopTask> task);
  // Gives every loop thread a task of its own (the listeners: each loop accepts).
  void adoptOnEach(const std::function<std::unique_ptr<LoopTask>()>& make);
  // From a task on loop `here` (its thread only): the new task starts on `here` unless another loop
  // has fewer tasks, so a loop that accepts keeps what it accepted without a hand-over while the
  // loops stay balanced.
  void adoptNear(LoopHandle& here, std::unique_ptr<LoopTask> task);
  // Tasks on all loop threads (sessions in any phase, cancels in flight).
  [[nodiscard]] int tasks() const noexcept { return tasks_.load(std::memory_order_relaxed); }

 private:
  class Worker;
  std::atomic<int> tasks_{0};  // before the workers: they update it until they are joined
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<unsigned> next_{0};
};

}  // namespace pgwire_proxy::session
