// The relay's event loop: a few threads, each with an epoll set, step the sessions' relays (see
// Session::advance) as their sockets become ready. A busy loop thread serves many sessions per wake-up,
// where a thread per session would be woken for every message.
//
// Startup (TLS, the startup packet, the upstream connection) stays on the session's own thread, which
// then waits in relay() until the session's relay has ended; so a session's lifetime, its errors and
// its epilogue stay where they were, and only the hot path moves here.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

namespace pgwire_proxy::session {

class Session;

class EventLoop {
 public:
  // `threads` loop threads (at least 1). wakeFd / forceFd: the server's shutdown eventfds (may be -1).
  EventLoop(unsigned threads, int wakeFd, int forceFd);
  // Stops and joins the threads; every relay() must have returned.
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Runs `session`'s relay on a loop thread; returns once it has ended (Session::advance said so).
  void relay(Session& session);

 private:
  class Worker;
  std::atomic<int> relaying_{0};  // before the workers: they read it until they are joined
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<unsigned> next_{0};
};

}  // namespace pgwire_proxy::session
