// Frame decoding, the bounded reader, the writer and the messages the proxy builds.
#include <boost/test/unit_test.hpp>

#include <functional>
#include <random>
#include <string>

#include "protocol/constants.h"
#include "protocol/errors.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "protocol/reader.h"
#include "protocol/writer.h"

using namespace pgwire_proxy;
using namespace pgwire_proxy::protocol;
using namespace std::string_literals;

BOOST_TEST_DONT_PRINT_LOG_VALUE(pgwire_proxy::protocol::StartupKind)

namespace {

std::string queryFrame(std::string_view sql) {
  std::string out;
  MessageWriter writer(out);
  writer.beginMessage(frontend::kQuery);
  writer.writeCString(sql);
  writer.endMessage();
  return out;
}

std::string startupPacket(std::int32_t version, const std::vector<std::pair<std::string, std::string>>& params) {
  std::string out;
  MessageWriter writer(out);
  writer.beginUntypedMessage();
  writer.writeInt32(version);
  for (const auto& [k, v] : params) {
    writer.writeCString(k);
    writer.writeCString(v);
  }
  writer.writeByte(0);
  writer.endMessage();
  return out;
}

std::string withLength(char type, std::uint32_t length) {
  std::string out(1, type);
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((length >> shift) & 0xff));
  return out;
}

std::string sqlstateOf(const std::function<void()>& action) {
  try {
    action();
  } catch (const ProxyError& error) {
    return error.sqlstate();
  }
  return "none";
}

}  // namespace

BOOST_AUTO_TEST_SUITE(frame_decoding)

BOOST_AUTO_TEST_CASE(query_round_trip) {
  const std::string frame = queryFrame("select 1; select 2");
  const auto decoded = decodeFrame(frame, 1024);
  BOOST_REQUIRE(decoded);
  BOOST_TEST(decoded->type() == 'Q');
  BOOST_TEST(decoded->bytes.size() == frame.size());
  BOOST_TEST(parseQuery(decoded->body()) == "select 1; select 2");
}

BOOST_AUTO_TEST_CASE(split_delivery_needs_every_byte) {
  const std::string frame = queryFrame("select 'split'");
  for (std::size_t n = 0; n < frame.size(); ++n) {
    BOOST_TEST(!decodeFrame(std::span<const char>(frame.data(), n), 1024), "complete after " << n << " bytes");
  }
  BOOST_TEST(decodeFrame(frame, 1024).has_value());
}

BOOST_AUTO_TEST_CASE(two_frames_back_to_back) {
  const std::string a = queryFrame("a");
  const std::string both = a + queryFrame("bb");
  const auto first = decodeFrame(both, 1024);
  BOOST_REQUIRE(first);
  BOOST_TEST(first->bytes.size() == a.size());
  const auto second = decodeFrame(std::span<const char>(both).subspan(a.size()), 1024);
  BOOST_REQUIRE(second);
  BOOST_TEST(parseQuery(second->body()) == "bb");
}

BOOST_AUTO_TEST_CASE(a_frame_run_ends_at_another_type_a_partial_or_bad_frame_and_where_take_says) {
  const std::string q1 = queryFrame("a");
  const std::string q2 = queryFrame("bb");
  const auto takeAll = [](std::size_t) { return true; };
  BOOST_TEST(frameRun(q1 + q2 + withLength('S', 4), 'Q', 1024, takeAll) == q1.size() + q2.size());
  BOOST_TEST(frameRun(q1 + q2.substr(0, q2.size() - 1), 'Q', 1024, takeAll) == q1.size());  // partial
  BOOST_TEST(frameRun(q1 + withLength('Q', 3), 'Q', 1024, takeAll) == q1.size());           // below 4
  BOOST_TEST(frameRun(q1 + withLength('Q', 2000) + std::string(2000, 'x'), 'Q', 1024, takeAll) == q1.size());
  BOOST_TEST(frameRun(withLength('S', 4) + q1, 'Q', 1024, takeAll) == 0U);
  BOOST_TEST(frameRun(std::string(), 'Q', 1024, takeAll) == 0U);
  std::vector<std::size_t> asked;
  const auto takeOne = [&asked](std::size_t size) {
    asked.push_back(size);
    return asked.size() < 2;
  };
  BOOST_TEST(frameRun(q1 + q2 + q1, 'Q', 1024, takeOne) == q1.size());  // the second was refused
  BOOST_TEST(asked == (std::vector<std::size_t>{q1.size(), q2.size()}));
}

BOOST_AUTO_TEST_CASE(every_malformed_length_is_a_protocol_violation) {
  for (std::uint32_t length : {0U, 1U, 2U, 3U}) {
    const std::string bytes = withLength('Q', length);
    BOOST_TEST(sqlstateOf([&] { (void)decodeFrame(bytes, 1024); }) == "08P01", "length " << length);
  }
  BOOST_TEST(sqlstateOf([&] { (void)decodeFrame(withLength('Q', 1025), 1024); }) == "08P01");
  BOOST_TEST(sqlstateOf([&] { (void)decodeFrame(withLength('Q', 0xffffffffU), 1024); }) == "08P01");
  // Exactly at the maximum is accepted (and incomplete here).
  BOOST_TEST(!decodeFrame(withLength('Q', 1024), 1024));
  // The minimum, an empty body, is a complete frame.
  BOOST_TEST(decodeFrame(withLength('S', 4), 1024).has_value());
}

BOOST_AUTO_TEST_CASE(a_malformed_length_is_reported_in_these_words) {
  // The client reads them in its ErrorResponse; decodeHeader's fast path is inline, these are not.
  auto what = [](const std::string& bytes, std::uint32_t maxLength) {
    try {
      (void)decodeHeader(bytes, maxLength);
    } catch (const ProtocolError& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  BOOST_TEST(what(withLength('Q', 3), 1024) == "invalid message length 3 for message type 'Q'");
  BOOST_TEST(what(withLength('P', 1025), 1024) == "message of type 'P' is 1025 bytes long, over the limit of 1024 bytes");
  BOOST_TEST(what(withLength('D', 4), 4) == "no error");
  BOOST_TEST(!decodeHeader("Q\0\0\0"s, 1024).has_value());  // four bytes are not a header yet
  BOOST_TEST(decodeHeader(withLength('D', 0x7fffffffU), 0x7fffffffU)->frameSize() == 0x80000000U);
}

BOOST_AUTO_TEST_CASE(startup_packet_lengths) {
  const std::string packet = startupPacket(kProtocolVersion3, {{"user", "alice"}, {"database", "db"}});
  for (std::size_t n = 0; n < packet.size(); ++n) {
    BOOST_TEST(!decodeStartupPacket(std::span<const char>(packet.data(), n)));
  }
  const auto body = decodeStartupPacket(packet);
  BOOST_REQUIRE(body);
  const StartupPacket parsed = parseStartupPacket(*body);
  BOOST_TEST(parsed.kind == StartupKind::kStartup);
  BOOST_REQUIRE(parsed.parameter("user"));
  BOOST_TEST(*parsed.parameter("user") == "alice");
  BOOST_TEST(*parsed.parameter("database") == "db");
  BOOST_TEST(!parsed.parameter("options"));

  std::string tooShort = "\0\0\0\x07\0\0\0"s;
  BOOST_TEST(sqlstateOf([&] { (void)decodeStartupPacket(tooShort); }) == "08P01");
  std::string tooLong = "\0\0\x27\x11"s;  // 10001
  BOOST_TEST(sqlstateOf([&] { (void)decodeStartupPacket(tooLong); }) == "08P01");
  std::string atLimit = "\0\0\x27\x10"s;  // 10000: waits for the rest
  BOOST_TEST(!decodeStartupPacket(atLimit));
}

BOOST_AUTO_TEST_CASE(special_startup_requests) {
  std::string out;
  MessageWriter writer(out);
  writer.beginUntypedMessage();
  writer.writeInt32(kSslRequestCode);
  writer.endMessage();
  BOOST_TEST(parseStartupPacket(*decodeStartupPacket(out)).kind == StartupKind::kSslRequest);

  out.clear();
  writer.beginUntypedMessage();
  writer.writeInt32(kCancelRequestCode);
  writer.writeInt32(1234);
  writer.writeInt32(-5678);
  writer.endMessage();
  const auto cancel = parseStartupPacket(*decodeStartupPacket(out));
  BOOST_TEST(cancel.kind == StartupKind::kCancelRequest);
  BOOST_TEST(cancel.cancelProcessId == 1234);
  BOOST_TEST(cancel.cancelSecretKey == -5678);

  // A cancel request with a missing word, or a trailing one, is malformed.
  out.clear();
  writer.beginUntypedMessage();
  writer.writeInt32(kCancelRequestCode);
  writer.writeInt32(1);
  writer.endMessage();
  BOOST_TEST(sqlstateOf([&] { (void)parseStartupPacket(*decodeStartupPacket(out)); }) == "08P01");
}

BOOST_AUTO_TEST_CASE(unsupported_protocol_versions) {
  for (std::int32_t version : {2 << 16, 4 << 16, 1234}) {
    const std::string packet = startupPacket(version, {{"user", "u"}});
    BOOST_TEST(sqlstateOf([&] { (void)parseStartupPacket(*decodeStartupPacket(packet)); }) == "0A000");
  }
  // 3.x with a newer minor is accepted (the session answers NegotiateProtocolVersion).
  const std::string newer = startupPacket((3 << 16) | 2, {{"user", "u"}});
  BOOST_TEST(parseStartupPacket(*decodeStartupPacket(newer)).protocolVersion == ((3 << 16) | 2));
}

BOOST_AUTO_TEST_CASE(startup_packet_without_terminator) {
  std::string out;
  MessageWriter writer(out);
  writer.beginUntypedMessage();
  writer.writeInt32(kProtocolVersion3);
  writer.writeCString("user");
  writer.writeBytes("alice");  // no NUL, no final empty name
  writer.endMessage();
  BOOST_TEST(sqlstateOf([&] { (void)parseStartupPacket(*decodeStartupPacket(out)); }) == "08P01");
}

BOOST_AUTO_TEST_CASE(random_bytes_never_crash) {
  std::mt19937 random(42);
  for (int round = 0; round < 20000; ++round) {
    std::string bytes(random() % 64, '\0');
    for (char& c : bytes) c = static_cast<char>(random());
    try {
      if (const auto body = decodeStartupPacket(bytes)) (void)parseStartupPacket(*body);
    } catch (const ProxyError&) {
    }
    try {
      if (const auto frame = decodeFrame(bytes, 1 << 20)) {
        (void)parseErrorFields(frame->body());
      }
    } catch (const ProxyError&) {
    }
    try {
      if (const auto frame = decodeFrame(bytes, 1 << 20)) (void)parseQuery(frame->body());
    } catch (const ProxyError&) {
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(message_reader)

BOOST_AUTO_TEST_CASE(reads_are_bounded) {
  const std::string body = "\x01\x02\x03"s;
  MessageReader reader(body);
  BOOST_TEST(reader.readByte() == 1);
  BOOST_TEST(sqlstateOf([&] { (void)reader.readInt32(); }) == "08P01");
  BOOST_TEST(reader.readInt16() == 0x0203);
  reader.expectEnd();
  BOOST_TEST(sqlstateOf([&] { (void)reader.readByte(); }) == "08P01");
}

BOOST_AUTO_TEST_CASE(leftover_bytes_are_an_error) {
  const std::string body = "select 1\0x"s;
  BOOST_TEST(sqlstateOf([&] { (void)parseQuery(body); }) == "08P01");
  const std::string unterminated = "select 1"s;
  BOOST_TEST(sqlstateOf([&] { (void)parseQuery(unterminated); }) == "08P01");
}

BOOST_AUTO_TEST_CASE(names_are_read_up_to_their_nul_and_errors_say_what_was_wrong) {
  auto what = [](const std::function<void()>& read) {
    try {
      read();
    } catch (const ProtocolError& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  const std::string parse = "stmt\0select $1\0\0\0"s;
  const auto message = parseParseMessage(parse);
  BOOST_TEST(message.statement == "stmt");
  BOOST_TEST(message.sql == "select $1");
  const auto bind = parseBindMessage("\0\0rest"s);  // the unnamed portal and statement
  BOOST_TEST(bind.portal.empty());
  BOOST_TEST(bind.statement.empty());
  BOOST_TEST(parseTargetMessage("Sname\0"s).kind == 'S');
  BOOST_TEST(parseExecutePortal("p1\0\0\0\0\0"s) == "p1");
  BOOST_TEST(what([] { (void)parseParseMessage("stmt\0select"s); }) == "invalid string in message: missing terminator");
  BOOST_TEST(what([] { (void)parseExecutePortal(""s); }) == "invalid string in message: missing terminator");
  BOOST_TEST(what([] { (void)parseTargetMessage(""s); }) == "message too short: needed 1 more bytes, 0 left");
  BOOST_TEST(what([] { (void)parseQuery("q\0xy"s); }) == "invalid message format: 2 unexpected trailing bytes");
  const std::string parameterStatus = "TimeZone\0Asia/Tokyo\0"s;
  const auto status = parseParameterStatus(parameterStatus);
  BOOST_TEST(status.name == "TimeZone");
  BOOST_TEST(status.value == "Asia/Tokyo");
  BOOST_TEST(what([] { (void)parseParameterStatus("TimeZone\0UTC"s); }) == "invalid string in message: missing terminator");
  BOOST_TEST(what([] { (void)parseParameterStatus("a\0b\0c"s); }) == "invalid message format: 1 unexpected trailing bytes");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(built_messages)

BOOST_AUTO_TEST_CASE(error_response_round_trip) {
  std::string out;
  MessageWriter writer(out);
  writeErrorResponse(writer, ProxyError(Severity::kError, sqlstate::kProgramLimitExceeded, "row limit exceeded",
                                        "detail text", "hint text"));
  const auto frame = decodeFrame(out, 1 << 20);
  BOOST_REQUIRE(frame);
  BOOST_TEST(frame->type() == 'E');
  BOOST_TEST(frame->bytes.size() == out.size());
  const ErrorFields fields = parseErrorFields(frame->body());
  BOOST_TEST(fields.get('S') == "ERROR");
  BOOST_TEST(fields.get('V') == "ERROR");
  BOOST_TEST(fields.get('C') == "54000");
  BOOST_TEST(fields.get('M') == "row limit exceeded");
  BOOST_TEST(fields.get('D') == "detail text");
  BOOST_TEST(fields.get('H') == "hint text");
  BOOST_TEST(!fields.isFatal());
}

BOOST_AUTO_TEST_CASE(fatal_error_without_optional_fields) {
  std::string out;
  MessageWriter writer(out);
  writeErrorResponse(writer, ProxyError(Severity::kFatal, sqlstate::kTooManyConnections, "too many connections"));
  const ErrorFields fields = parseErrorFields(decodeFrame(out, 1 << 20)->body());
  BOOST_TEST(fields.isFatal());
  BOOST_TEST(fields.get('D').empty());
  BOOST_TEST(fields.fields.size() == 4U);
}

BOOST_AUTO_TEST_CASE(fixed_messages_have_exact_bytes) {
  std::string out;
  MessageWriter writer(out);
  writeAuthenticationOk(writer);
  BOOST_TEST(out == "R\0\0\0\x08\0\0\0\0"s);
  out.clear();
  writeReadyForQuery(writer, 'T');
  BOOST_TEST(out == "Z\0\0\0\x05T"s);
  out.clear();
  writeBackendKeyData(writer, 0x01020304, -1);
  BOOST_TEST(out == "K\0\0\0\x0c\x01\x02\x03\x04\xff\xff\xff\xff"s);
  out.clear();
  writeParameterStatus(writer, "TimeZone", "UTC");
  BOOST_TEST(out == "S\0\0\0\x11TimeZone\0UTC\0"s);
  out.clear();
  writeNegotiateProtocolVersion(writer, 0, {"_pq_.x"});
  BOOST_TEST(out == "v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.x\0"s);
}

BOOST_AUTO_TEST_SUITE_END()
