// SCRAM-SHA-256 (RFC 5802, RFC 7677) on the server's side, as PostgreSQL runs it: secrets, the
// exchange as a state machine over OpenSSL's primitives, and tls-server-end-point channel binding.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/errors.h"

struct ssl_st;

namespace pgwire_proxy::auth {

inline constexpr std::string_view kScramSha256 = "SCRAM-SHA-256";
inline constexpr std::string_view kScramSha256Plus = "SCRAM-SHA-256-PLUS";
inline constexpr int kDefaultIterations = 4096;  // PostgreSQL's scram_iterations default
inline constexpr std::size_t kSaltLength = 16;   // PostgreSQL's SCRAM_DEFAULT_SALT_LEN
inline constexpr std::size_t kKeyLength = 32;    // SHA-256

using Key = std::array<unsigned char, kKeyLength>;

// What the server keeps of a password (pg_authid.rolpassword's SCRAM-SHA-256$... form).
struct ScramSecret {
  int iterations = kDefaultIterations;
  std::string salt;  // raw bytes
  Key storedKey{};
  Key serverKey{};
};

// "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>" (base64 parts); nullopt when malformed.
[[nodiscard]] std::optional<ScramSecret> parseScramVerifier(std::string_view text);
[[nodiscard]] std::string formatScramVerifier(const ScramSecret& secret);
// PBKDF2-HMAC-SHA-256 of the password (used as given: PostgreSQL's SASLprep leaves ASCII unchanged).
[[nodiscard]] ScramSecret makeScramSecret(std::string_view password, std::string_view salt,
                                          int iterations = kDefaultIterations);
// A secret with a fresh random salt (for a plain-text password of the auth file).
[[nodiscard]] ScramSecret makeScramSecret(std::string_view password);

[[nodiscard]] std::string base64Encode(std::string_view bytes);
// nullopt for anything but canonical padded base64.
[[nodiscard]] std::optional<std::string> base64Decode(std::string_view text);
// Cryptographically random bytes from OpenSSL's DRBG (RAND_bytes: per thread in OpenSSL 3, seeded
// and reseeded from the kernel, so no syscall per call); throws std::runtime_error when it cannot.
void fillRandom(void* data, std::size_t size);
[[nodiscard]] std::string randomBytes(std::size_t count);

// tls-server-end-point channel binding data (RFC 5929): the hash of the server's certificate, with
// the certificate's signature hash (SHA-256 for MD5 and SHA-1), as PostgreSQL computes it. Empty
// when the connection has no certificate.
[[nodiscard]] std::string tlsServerEndPoint(ssl_st* ssl);

// Why an authentication failed (a metric label).
enum class Failure { kNone, kWrongPassword, kUnknownUser, kProtocol, kChannelBinding };

// One client's exchange. Messages in, messages out; the session carries them over the socket.
class ScramServer {
 public:
  // `secret` null: the user is unknown and a mock exchange runs (its salt derived from `user` and
  // `mockKey`, so it stays the same across attempts) which fails as a wrong password does.
  // `channelBinding`: the tls-server-end-point data when the client is on TLS, else empty.
  ScramServer(std::string user, std::optional<ScramSecret> secret, std::string channelBinding,
              std::string_view mockKey);

  // The mechanisms to offer, best first (SCRAM-SHA-256-PLUS only over TLS).
  [[nodiscard]] static std::vector<std::string> mechanisms(bool tls);

  struct Step {
    enum class Kind { kContinue, kSuccess, kFailure } kind = Kind::kFailure;
    std::string data;                 // kContinue: server-first-message; kSuccess: server-final-message
    std::optional<ProxyError> error;  // kFailure: what the client is told (PostgreSQL's words)
    Failure reason = Failure::kNone;
  };
  // SASLInitialResponse: the chosen mechanism and the client-first-message (nullopt: length -1).
  [[nodiscard]] Step initialResponse(std::string_view mechanism, std::optional<std::string_view> clientFirst);
  // SASLResponse: the client-final-message.
  [[nodiscard]] Step response(std::string_view clientFinal);
  // Tests only (RFC 7677's vector): the server's part of the nonce instead of a random one.
  void useServerNonce(std::string nonce) { fixedServerNonce_ = std::move(nonce); }

 private:
  enum class State { kInitial, kFirstSent, kDone };
  [[nodiscard]] Step fail(ProxyError error, Failure reason);

  State state_ = State::kInitial;
  std::string user_;
  ScramSecret secret_;
  bool doomed_ = false;  // unknown user: the exchange runs to its end and fails there
  std::string channelBinding_;
  bool bindingInUse_ = false;
  char bindingFlag_ = 'n';
  std::string clientFirstBare_;
  std::string serverFirst_;
  std::string nonce_;  // client's + server's
  std::optional<std::string> fixedServerNonce_;
};

}  // namespace pgwire_proxy::auth
