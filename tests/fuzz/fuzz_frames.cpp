// libFuzzer target: the frame decoder and every parser the proxy runs on client and upstream bytes.
#include <cstddef>
#include <cstdint>
#include <span>

#include "protocol/errors.h"
#include "protocol/frame.h"
#include "protocol/messages.h"

using namespace pgwire_proxy;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const char> bytes(reinterpret_cast<const char*>(data), size);
  // As a startup-phase packet.
  try {
    if (const auto body = protocol::decodeStartupPacket(bytes)) (void)protocol::parseStartupPacket(*body);
  } catch (const ProxyError&) {
  }
  // As a stream of typed messages, each parsed the ways the proxy parses them.
  std::span<const char> rest = bytes;
  try {
    while (const auto frame = protocol::decodeFrame(rest, 1 << 20)) {
      try {
        switch (frame->type()) {
          case 'Q': (void)protocol::parseQuery(frame->body()); break;
          case 'E':
          case 'N': (void)protocol::parseErrorFields(frame->body()); break;
          default: break;
        }
      } catch (const ProxyError&) {
      }
      rest = rest.subspan(frame->bytes.size());
    }
  } catch (const ProxyError&) {
  }
  return 0;
}
