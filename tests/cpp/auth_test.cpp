// SCRAM-SHA-256 on the server's side: RFC 7677's test vector, whole exchanges as libpq sends them
// (with and without channel binding), failures in PostgreSQL's words, and the auth file.
#include <boost/test/unit_test.hpp>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "auth/auth_file.h"
#include "auth/scram.h"
#include "config/server_config.h"

using namespace pgwire_proxy::auth;
using pgwire_proxy::config::ConfigError;
using Kind = ScramServer::Step::Kind;

namespace {

std::string hmacOf(std::string_view key, std::string_view data) {
  unsigned char out[32];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
       data.size(), out, &length);
  return {reinterpret_cast<char*>(out), length};
}

std::string sha256Of(std::string_view data) {
  unsigned char out[32];
  unsigned int length = 0;
  EVP_Digest(data.data(), data.size(), out, &length, EVP_sha256(), nullptr);
  return {reinterpret_cast<char*>(out), length};
}

// The client's side, as libpq computes it (fe-auth-scram.c): written here from RFC 5802 on purpose,
// not through the server's code.
struct Client {
  explicit Client(std::string pw) : password(std::move(pw)) {}
  std::string password;
  std::string nonce = "rOprNGfwEbeRWgbNEkqO";
  std::string gs2 = "n,,";
  std::string bindingData;  // appended to the gs2 header in c= (channel binding)

  [[nodiscard]] std::string first() const { return gs2 + bare(); }
  [[nodiscard]] std::string bare() const { return "n=,r=" + nonce; }  // libpq leaves the name empty

  // The client-final-message for the server-first-message `serverFirst`.
  [[nodiscard]] std::string final(const std::string& serverFirst, std::string* expectedServerFinal = nullptr) const {
    const auto part = [&](char name) {
      const auto at = serverFirst.find(std::string(1, name) + "=");
      const auto end = serverFirst.find(',', at);
      return serverFirst.substr(at + 2, end == std::string::npos ? std::string::npos : end - at - 2);
    };
    const std::string salt = *base64Decode(part('s'));
    const int iterations = std::stoi(part('i'));
    unsigned char salted[32];
    PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                      reinterpret_cast<const unsigned char*>(salt.data()), static_cast<int>(salt.size()), iterations,
                      EVP_sha256(), 32, salted);
    const std::string saltedText(reinterpret_cast<char*>(salted), 32);
    const std::string clientKey = hmacOf(saltedText, "Client Key");
    const std::string withoutProof = "c=" + base64Encode(gs2 + bindingData) + ",r=" + part('r');
    const std::string authMessage = bare() + "," + serverFirst + "," + withoutProof;
    const std::string signature = hmacOf(sha256Of(clientKey), authMessage);
    std::string proof(32, '\0');
    for (std::size_t i = 0; i < 32; ++i) proof[i] = static_cast<char>(clientKey[i] ^ signature[i]);
    if (expectedServerFinal != nullptr) {
      *expectedServerFinal = "v=" + base64Encode(hmacOf(hmacOf(saltedText, "Server Key"), authMessage));
    }
    return withoutProof + ",p=" + base64Encode(proof);
  }
};

const std::string kMockKey = "mock-key-for-tests";

ScramServer::Step exchange(ScramServer& server, const Client& client, std::string_view mechanism = kScramSha256,
                           std::string* expectedServerFinal = nullptr) {
  const auto first = server.initialResponse(mechanism, client.first());
  if (first.kind != Kind::kContinue) return first;
  return server.response(client.final(first.data, expectedServerFinal));
}

std::string errorOf(const ScramServer::Step& step) {
  BOOST_REQUIRE(step.kind == Kind::kFailure);
  BOOST_REQUIRE(step.error.has_value());
  return step.error->sqlstate() + " " + std::string(step.error->message()) +
         (step.error->detail().empty() ? "" : " / " + step.error->detail());
}

std::string writeFile(const std::string& text, mode_t mode = 0600) {
  char name[] = "/tmp/pgwp-auth-XXXXXX";
  const int fd = ::mkstemp(name);
  BOOST_REQUIRE(fd >= 0);
  ::close(fd);
  std::ofstream(name) << text;
  ::chmod(name, mode);
  return name;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(scram)

BOOST_AUTO_TEST_CASE(rfc7677_test_vector) {
  // RFC 7677, section 3: user "user", password "pencil".
  const ScramSecret secret = makeScramSecret("pencil", *base64Decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096);
  ScramServer server("user", secret, {}, kMockKey);
  server.useServerNonce("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
  const auto first = server.initialResponse(kScramSha256, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
  BOOST_REQUIRE(first.kind == Kind::kContinue);
  BOOST_TEST(first.data == "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
  const auto final = server.response(
      "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
  BOOST_REQUIRE(final.kind == Kind::kSuccess);
  BOOST_TEST(final.data == "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

BOOST_AUTO_TEST_CASE(verifiers_round_trip_as_postgresql_stores_them) {
  const ScramSecret secret = makeScramSecret("pencil", *base64Decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096);
  const std::string text = formatScramVerifier(secret);
  BOOST_TEST(text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
  const auto parsed = parseScramVerifier(text);
  BOOST_REQUIRE(parsed.has_value());
  BOOST_TEST((parsed->storedKey == secret.storedKey));
  BOOST_TEST((parsed->serverKey == secret.serverKey));
  for (const char* bad : {"", "SCRAM-SHA-256$", "SCRAM-SHA-256$4096:abc$def:ghi", "md5abc",
                          "SCRAM-SHA-256$x:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA"}) {
    BOOST_TEST(!parseScramVerifier(bad).has_value(), bad);
  }
}

BOOST_AUTO_TEST_CASE(a_libpq_shaped_exchange_succeeds_with_the_right_password) {
  ScramServer server("alice", makeScramSecret("right pw"), {}, kMockKey);
  Client client{"right pw"};
  client.nonce = "Qm9Ha2VkTm9uY2VPZjI0Q2hh";  // libpq: 18 random bytes in base64
  std::string expected;
  const auto final = exchange(server, client, kScramSha256, &expected);
  BOOST_REQUIRE(final.kind == Kind::kSuccess);
  BOOST_TEST(final.data == expected);  // the client can check the server too
}

BOOST_AUTO_TEST_CASE(a_wrong_password_and_an_unknown_user_fail_alike) {
  ScramServer wrong("alice", makeScramSecret("right pw"), {}, kMockKey);
  const auto failed = exchange(wrong, Client{"wrong pw"});
  BOOST_TEST(errorOf(failed) == "28P01 password authentication failed for user \"alice\"");
  BOOST_TEST(static_cast<int>(failed.reason) == static_cast<int>(Failure::kWrongPassword));
  BOOST_TEST((failed.error->severity() == pgwire_proxy::Severity::kFatal));

  ScramServer unknown("nobody", std::nullopt, {}, kMockKey);
  const auto mock = exchange(unknown, Client{"any pw"});
  BOOST_TEST(errorOf(mock) == "28P01 password authentication failed for user \"nobody\"");
  BOOST_TEST(static_cast<int>(mock.reason) == static_cast<int>(Failure::kUnknownUser));

  // The mock salt is the same at every attempt, so it does not give the unknown name away.
  const auto salt = [](const ScramServer::Step& step) { return step.data.substr(step.data.find(",s=")); };
  ScramServer again("nobody", std::nullopt, {}, kMockKey);
  ScramServer other("somebody", std::nullopt, {}, kMockKey);
  const Client client{"x"};
  const auto a = ScramServer("nobody", std::nullopt, {}, kMockKey).initialResponse(kScramSha256, client.first());
  const auto b = again.initialResponse(kScramSha256, client.first());
  const auto c = other.initialResponse(kScramSha256, client.first());
  BOOST_TEST(salt(a) == salt(b));
  BOOST_TEST(salt(a) != salt(c));
  BOOST_TEST(salt(a).ends_with(",i=4096"));
}

BOOST_AUTO_TEST_CASE(channel_binding_over_tls) {
  const std::string binding(32, '\x5a');  // the certificate hash the session would compute
  BOOST_TEST((ScramServer::mechanisms(true) == std::vector<std::string>({"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"})));
  BOOST_TEST((ScramServer::mechanisms(false) == std::vector<std::string>({"SCRAM-SHA-256"})));

  Client plus{"right pw"};
  plus.gs2 = "p=tls-server-end-point,,";
  plus.bindingData = binding;
  ScramServer server("alice", makeScramSecret("right pw"), binding, kMockKey);
  BOOST_TEST((exchange(server, plus, kScramSha256Plus).kind == Kind::kSuccess));

  // Another certificate's hash (a man in the middle) fails the binding check.
  Client relayed = plus;
  relayed.bindingData = std::string(32, '\x01');
  ScramServer bound("alice", makeScramSecret("right pw"), binding, kMockKey);
  const auto failed = exchange(bound, relayed, kScramSha256Plus);
  BOOST_TEST(errorOf(failed) == "28000 SCRAM channel binding check failed");
  BOOST_TEST(static_cast<int>(failed.reason) == static_cast<int>(Failure::kChannelBinding));

  // Over TLS a client may still choose plain SCRAM-SHA-256 (libpq's channel_binding=disable) ...
  ScramServer plain("alice", makeScramSecret("right pw"), binding, kMockKey);
  BOOST_TEST((exchange(plain, Client{"right pw"}).kind == Kind::kSuccess));
  // ... but not claim it thinks the server cannot bind.
  Client downgrade{"right pw"};
  downgrade.gs2 = "y,,";
  ScramServer tls("alice", makeScramSecret("right pw"), binding, kMockKey);
  BOOST_TEST(errorOf(exchange(tls, downgrade)).starts_with("28000 SCRAM channel binding negotiation error"));
  // Without TLS, -PLUS is not on offer.
  ScramServer noTls("alice", makeScramSecret("right pw"), {}, kMockKey);
  BOOST_TEST(errorOf(exchange(noTls, plus, kScramSha256Plus)) ==
             "08P01 client selected an invalid SASL authentication mechanism");
  // y,, without TLS is fine: the client supports binding and the server does not offer it.
  ScramServer yes("alice", makeScramSecret("right pw"), {}, kMockKey);
  BOOST_TEST((exchange(yes, downgrade).kind == Kind::kSuccess));
}

BOOST_AUTO_TEST_CASE(malformed_messages_in_postgresqls_words) {
  const auto firstError = [](std::optional<std::string_view> message, std::string_view mechanism = kScramSha256) {
    ScramServer server("alice", makeScramSecret("pw"), {}, kMockKey);
    return errorOf(server.initialResponse(mechanism, message));
  };
  BOOST_TEST(firstError(std::nullopt) == "08P01 malformed SCRAM message / The message is empty.");
  BOOST_TEST(firstError("SCRAM") == "08P01 malformed SCRAM message / Unexpected channel-binding flag \"'S'\".");
  BOOST_TEST(firstError("n,a=bob,n=,r=x") == "0A000 client uses authorization identity, but it is not supported");
  BOOST_TEST(firstError("n,,r=x") == "08P01 malformed SCRAM message / Expected attribute \"n\" but found \"'r'\".");
  BOOST_TEST(firstError("n,,n=,r=x", "MD5") == "08P01 client selected an invalid SASL authentication mechanism");
  BOOST_TEST(firstError(std::string_view("n,,n=,r=a\0b", 11)) ==
             "08P01 malformed SCRAM message / Message length does not match input length.");

  const auto finalError = [](const std::string& final) {
    ScramServer server("alice", makeScramSecret("pw"), {}, kMockKey);
    const auto first = server.initialResponse(kScramSha256, "n,,n=,r=abc");
    BOOST_REQUIRE(first.kind == Kind::kContinue);
    const std::string nonce = first.data.substr(2, first.data.find(',') - 2);
    std::string text = final;
    if (const auto at = text.find("NONCE"); at != std::string::npos) text.replace(at, 5, nonce);
    return errorOf(server.response(text));
  };
  const std::string proof = base64Encode(std::string(32, 'x'));
  BOOST_TEST(finalError("c=biws,r=wrong,p=" + proof) == "08P01 invalid SCRAM response / Nonce does not match.");
  BOOST_TEST(finalError("c=eSws,r=NONCE,p=" + proof) ==
             "08P01 unexpected SCRAM channel-binding attribute in client-final-message");
  BOOST_TEST(finalError("c=biws,r=NONCE,p=short") ==
             "08P01 malformed SCRAM message / Malformed proof in client-final-message.");
  BOOST_TEST(finalError("c=biws,r=NONCE,p=" + proof + ",x=1") ==
             "08P01 malformed SCRAM message / Garbage found at the end of client-final-message.");
  BOOST_TEST(finalError("c=biws,r=NONCE,p=" + proof).starts_with("28P01 password authentication failed"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(auth_file)

BOOST_AUTO_TEST_CASE(userlist_format_with_verifiers_and_plain_passwords) {
  const ScramSecret stored = makeScramSecret("pencil");
  const std::string path = writeFile("; a PgBouncer userlist.txt\n"
                                     "# comments either way\n\n"
                                     "\"alice\" \"" + formatScramVerifier(stored) + "\"\n"
                                     "  \"bob \"\"the quote\"\"\" \"plain pw\" anything after is ignored\n");
  const Credentials credentials = Credentials::read(path);
  BOOST_TEST(credentials.size() == 2U);
  BOOST_TEST((credentials.find("alice")->storedKey == stored.storedKey));
  BOOST_TEST(!credentials.find("carol").has_value());
  // A plain password becomes a verifier: an exchange with it succeeds, with another fails.
  ScramServer right("bob \"the quote\"", credentials.find("bob \"the quote\""), {}, kMockKey);
  BOOST_TEST((exchange(right, Client{"plain pw"}).kind == Kind::kSuccess));
  ScramServer wrong("bob \"the quote\"", credentials.find("bob \"the quote\""), {}, kMockKey);
  BOOST_TEST((exchange(wrong, Client{"pencil"}).kind == Kind::kFailure));
  std::remove(path.c_str());
}

BOOST_AUTO_TEST_CASE(a_malformed_line_fails_naming_file_and_line) {
  const auto failure = [](const std::string& text, mode_t mode = 0600) {
    const std::string path = writeFile(text, mode);
    std::string message;
    try {
      (void)Credentials::read(path);
    } catch (const ConfigError& error) {
      message = error.what();
    }
    std::string withoutPath = message;
    if (const auto at = withoutPath.find(path); at != std::string::npos) withoutPath.replace(at, path.size(), "FILE");
    std::remove(path.c_str());
    return withoutPath;
  };
  BOOST_TEST(failure("\"a\" \"pw\"\nalice pw\n").starts_with("auth-file: FILE:2: expected \"user\" \"secret\""));
  BOOST_TEST(failure("\"a\" \"pw\"\n\n\"b\"\n").starts_with("auth-file: FILE:3: expected a second double-quoted"));
  BOOST_TEST(failure("\"a\" \"unterminated\n").starts_with("auth-file: FILE:1:"));
  BOOST_TEST(failure("\"a\" \"SCRAM-SHA-256$4096:xx$yy:zz\"\n").starts_with("auth-file: FILE:1: malformed SCRAM"));
  BOOST_TEST(failure("\"a\" \"md5" + std::string(32, 'a') + "\"\n").starts_with("auth-file: FILE:1: an md5 secret"));
  BOOST_TEST(failure("\"a\" \"x\"\n\"a\" \"y\"\n").starts_with("auth-file: FILE:2: user \"a\" is listed twice"));
  BOOST_TEST(failure("\"a\" \"\"\n").starts_with("auth-file: FILE:1: empty secret"));
  BOOST_TEST(failure("\"a\" \"pw\"\n", 0644).find("has group or world access") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
