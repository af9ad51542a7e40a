// libFuzzer target: the relay's decision core against a scripted upstream. The input is a mode byte
// (bits 0-1 the row limit, 0x80 the extended protocol, 0x40 the full protocol, 0x20 a 64-byte
// --max-copy-in-bytes), then a script of chunks, each a control byte (0x80: the upstream sends, else
// the client; the low 7 bits a length) and that many bytes. Client bytes are offered as the session
// offers them (a COPY FROM STDIN's CopyData as runs first); the relay must never crash, hang or grow
// without bound whatever arrives.
#include <cstddef>
#include <cstdint>
#include <string>

#include "config/server_config.h"
#include "guardrails/guardrail_set.h"
#include "observability/session_observer.h"
#include "protocol/errors.h"
#include "protocol/frame.h"
#include "session/relay.h"
#include "session/session_detail.h"

using namespace pgwire_proxy;

namespace {

struct Sink final : session::RelayHost {
  std::size_t client = 0;
  std::size_t upstream = 0;
  void toClient(std::span<const char> bytes) override { client += bytes.size(); }
  void toUpstream(std::span<const char> bytes) override { upstream += bytes.size(); }
  void cancelUpstream() override {}
  void setCancellable(bool) override {}
  void upstreamParameter(std::string_view, std::string_view) override {}
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  static observability::SessionObserver observer;
  config::ServerConfig config;
  config.maxRows = data[0] % 4;  // 0: off
  config.maxBytes = 0;
  guardrails::GuardrailHolder rails(std::make_shared<const guardrails::GuardrailSet>(config));
  Sink sink;
  constexpr std::uint32_t kMaxClientMessage = 64 * 1024;
  session::Relay relay({1, observer, rails, nullptr, (data[0] & 0x80) != 0, config::Milliseconds(1000), "u", "d", "a",
                        (data[0] & 0x40) != 0, (data[0] & 0x20) != 0 ? 64U : 0U},
                       sink);
  std::string clientIn;
  std::string upstreamIn;
  try {
    std::size_t at = 1;
    while (at < size) {
      const std::uint8_t control = data[at++];
      const std::size_t length = std::min<std::size_t>(control & 0x7f, size - at);
      const std::string chunk(reinterpret_cast<const char*>(data + at), length);
      at += length;
      if ((control & 0x80) == 0) {
        clientIn += chunk;
      } else {
        upstreamIn += chunk;
        upstreamIn.erase(0, relay.onUpstreamBytes(std::span<const char>(upstreamIn)));
      }
      while (relay.acceptingClient()) {
        if (const std::size_t run = relay.admitCopyInRun(std::span<const char>(clientIn), kMaxClientMessage)) {
          clientIn.erase(0, run);
          continue;
        }
        const auto frame = protocol::decodeFrame(std::span<const char>(clientIn), kMaxClientMessage);
        if (!frame || frame->type() == 'X' || !relay.onClientFrame(*frame)) break;
        clientIn.erase(0, frame->bytes.size());
      }
      relay.onTimer(session::Clock::now());
      // Held whole only what must be: an unconsumed upstream prefix stays one frame's worth.
      if (upstreamIn.size() > 2 * 1024 * 1024) __builtin_trap();
    }
  } catch (const session::UpstreamFailure&) {
  } catch (const ProtocolError&) {
  } catch (const ProxyError&) {
  } catch (const session::detail::SessionEnded&) {
  }
  return 0;
}
