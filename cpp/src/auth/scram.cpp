// SCRAM-SHA-256 on the server's side, as PostgreSQL runs it (src/backend/libpq/auth-scram.c): the
// same checks in the same order, with PostgreSQL's messages, over OpenSSL's primitives.
#include "auth/scram.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <charconv>
#include <cstdio>
#include <limits>
#include <stdexcept>

namespace pgwire_proxy::auth {
namespace {

Key hmac(std::span<const unsigned char> key, std::string_view data) {
  Key out{};
  unsigned int length = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
           data.size(), out.data(), &length) == nullptr ||
      length != out.size()) {
    throw std::runtime_error("HMAC-SHA-256 failed");
  }
  return out;
}

Key sha256(std::span<const unsigned char> data) {
  Key out{};
  unsigned int length = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &length, EVP_sha256(), nullptr) != 1 || length != out.size()) {
    throw std::runtime_error("SHA-256 failed");
  }
  return out;
}

std::string_view asText(const Key& key) { return {reinterpret_cast<const char*>(key.data()), key.size()}; }

// PostgreSQL's sanitize_char: a printable character quoted, anything else in hex.
std::string sanitizeChar(char c) {
  char buffer[8];
  if (c >= 0x21 && c <= 0x7e) {
    std::snprintf(buffer, sizeof buffer, "'%c'", c);
  } else {
    std::snprintf(buffer, sizeof buffer, "0x%02x", static_cast<unsigned char>(c));
  }
  return buffer;
}

ProxyError malformed(const std::string& detail) {
  return ProxyError(Severity::kFatal, sqlstate::kProtocolViolation, "malformed SCRAM message", detail);
}

// A cursor over a SCRAM message; the end of the text reads as '\0', as in PostgreSQL's C strings.
class Cursor {
 public:
  explicit Cursor(std::string_view text) : text_(text) {}
  [[nodiscard]] char peek() const { return at_ < text_.size() ? text_[at_] : '\0'; }
  void skip() { ++at_; }
  [[nodiscard]] std::size_t position() const { return at_; }
  [[nodiscard]] std::string_view rest() const { return text_.substr(std::min(at_, text_.size())); }

  // read_attr_value: "<attr>=<value>" up to the next ',' (consumed).
  std::string_view attribute(char attr) {
    if (peek() != attr) {
      throw malformed(std::string("Expected attribute \"") + attr + "\" but found \"" + sanitizeChar(peek()) + "\".");
    }
    skip();
    if (peek() != '=') throw malformed(std::string("Expected character \"=\" for attribute \"") + attr + "\".");
    skip();
    return value();
  }
  // read_any_attr: any "<ALPHA>=<value>".
  std::string_view anyAttribute(char& attr) {
    attr = peek();
    if (attr == '\0') throw malformed("Attribute expected, but found end of string.");
    if (!((attr >= 'A' && attr <= 'Z') || (attr >= 'a' && attr <= 'z'))) {
      throw malformed("Attribute expected, but found invalid character \"" + sanitizeChar(attr) + "\".");
    }
    skip();
    if (peek() != '=') throw malformed(std::string("Expected character \"=\" for attribute \"") + attr + "\".");
    skip();
    return value();
  }

 private:
  std::string_view value() {
    const std::size_t begin = at_;
    while (at_ < text_.size() && text_[at_] != ',') ++at_;
    const std::string_view result = text_.substr(begin, at_ - begin);
    if (at_ < text_.size()) ++at_;  // the ','
    return result;
  }

  std::string_view text_;
  std::size_t at_ = 0;
};

// is_scram_printable: %x21-2B / %x2D-7E.
bool printable(std::string_view text) {
  for (const char c : text) {
    if (c < 0x21 || c > 0x7e || c == ',') return false;
  }
  return true;
}

}  // namespace

void fillRandom(void* data, std::size_t size) {
  if (size > static_cast<std::size_t>(std::numeric_limits<int>::max())) throw std::length_error("fillRandom: too many bytes");
  if (size > 0 && RAND_bytes(static_cast<unsigned char*>(data), static_cast<int>(size)) != 1) {
    throw std::runtime_error("RAND_bytes failed");
  }
}

std::string randomBytes(std::size_t count) {
  std::string bytes(count, '\0');
  fillRandom(bytes.data(), count);
  return bytes;
}

std::string base64Encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int length = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                     reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(length));
  return out;
}

std::optional<std::string> base64Decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::size_t padding = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const bool alphabet = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
    if (c == '=') {
      if (i + 2 < text.size()) return std::nullopt;  // only at the end, at most two
      ++padding;
    } else if (!alphabet || padding > 0) {
      return std::nullopt;
    }
  }
  std::string out(3 * (text.size() / 4) + 1, '\0');
  const int length = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                     reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (length < 0 || static_cast<std::size_t>(length) < padding) return std::nullopt;
  out.resize(static_cast<std::size_t>(length) - padding);
  return out;
}

ScramSecret makeScramSecret(std::string_view password, std::string_view salt, int iterations) {
  ScramSecret secret;
  secret.iterations = iterations;
  secret.salt.assign(salt);
  Key salted{};
  if (PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                        reinterpret_cast<const unsigned char*>(salt.data()), static_cast<int>(salt.size()), iterations,
                        EVP_sha256(), static_cast<int>(salted.size()), salted.data()) != 1) {
    throw std::runtime_error("PBKDF2-HMAC-SHA-256 failed");
  }
  const Key clientKey = hmac(salted, "Client Key");
  secret.storedKey = sha256(clientKey);
  secret.serverKey = hmac(salted, "Server Key");
  OPENSSL_cleanse(salted.data(), salted.size());
  return secret;
}

ScramSecret makeScramSecret(std::string_view password) {
  return makeScramSecret(password, randomBytes(kSaltLength), kDefaultIterations);
}

std::optional<ScramSecret> parseScramVerifier(std::string_view text) {
  const std::string_view prefix = "SCRAM-SHA-256$";
  if (!text.starts_with(prefix)) return std::nullopt;
  text.remove_prefix(prefix.size());
  const auto colon = text.find(':');
  const auto dollar = text.find('$');
  if (colon == std::string_view::npos || dollar == std::string_view::npos || colon > dollar) return std::nullopt;
  ScramSecret secret;
  const std::string_view iterations = text.substr(0, colon);
  const auto [end, ec] = std::from_chars(iterations.data(), iterations.data() + iterations.size(), secret.iterations);
  if (ec != std::errc() || end != iterations.data() + iterations.size() || secret.iterations < 1) return std::nullopt;
  const auto salt = base64Decode(text.substr(colon + 1, dollar - colon - 1));
  const std::string_view keys = text.substr(dollar + 1);
  const auto keyColon = keys.find(':');
  if (!salt || salt->empty() || keyColon == std::string_view::npos) return std::nullopt;
  const auto stored = base64Decode(keys.substr(0, keyColon));
  const auto server = base64Decode(keys.substr(keyColon + 1));
  if (!stored || !server || stored->size() != kKeyLength || server->size() != kKeyLength) return std::nullopt;
  secret.salt = *salt;
  std::copy(stored->begin(), stored->end(), secret.storedKey.begin());
  std::copy(server->begin(), server->end(), secret.serverKey.begin());
  return secret;
}

std::string formatScramVerifier(const ScramSecret& secret) {
  return "SCRAM-SHA-256$" + std::to_string(secret.iterations) + ":" + base64Encode(secret.salt) + "$" +
         base64Encode(asText(secret.storedKey)) + ":" + base64Encode(asText(secret.serverKey));
}

std::string tlsServerEndPoint(ssl_st* ssl) {
  X509* certificate = ssl != nullptr ? SSL_get_certificate(ssl) : nullptr;
  if (certificate == nullptr) return {};
  int algorithm = 0;
  if (X509_get_signature_info(certificate, &algorithm, nullptr, nullptr, nullptr) != 1) return {};
  const EVP_MD* digest = algorithm == NID_md5 || algorithm == NID_sha1 ? EVP_sha256() : EVP_get_digestbynid(algorithm);
  if (digest == nullptr) return {};
  unsigned char hash[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (X509_digest(certificate, digest, hash, &length) != 1) return {};
  return std::string(reinterpret_cast<const char*>(hash), length);
}

ScramServer::ScramServer(std::string user, std::optional<ScramSecret> secret, std::string channelBinding,
                         std::string_view mockKey)
    : user_(std::move(user)), channelBinding_(std::move(channelBinding)) {
  if (secret) {
    secret_ = std::move(*secret);
  } else {
    // PostgreSQL's scram_mock_salt: the same salt for the same name every time, so a prober cannot
    // tell an unknown user by a salt that changes.
    doomed_ = true;
    const std::string seed = user_ + std::string(mockKey);
    const Key digest = sha256({reinterpret_cast<const unsigned char*>(seed.data()), seed.size()});
    secret_.salt.assign(reinterpret_cast<const char*>(digest.data()), kSaltLength);
    secret_.iterations = kDefaultIterations;
    const std::string keys = randomBytes(2 * kKeyLength);
    std::copy(keys.begin(), keys.begin() + kKeyLength, secret_.storedKey.begin());
    std::copy(keys.begin() + kKeyLength, keys.end(), secret_.serverKey.begin());
  }
}

std::vector<std::string> ScramServer::mechanisms(bool tls) {
  if (tls) return {std::string(kScramSha256Plus), std::string(kScramSha256)};
  return {std::string(kScramSha256)};
}

ScramServer::Step ScramServer::fail(ProxyError error, Failure reason) {
  state_ = State::kDone;
  Step step;
  step.kind = Step::Kind::kFailure;
  step.error = std::move(error);
  step.reason = reason;
  return step;
}

ScramServer::Step ScramServer::initialResponse(std::string_view mechanism, std::optional<std::string_view> clientFirst) {
  if (state_ != State::kInitial) throw std::logic_error("SCRAM: initial response out of order");
  try {
    const bool tls = !channelBinding_.empty();
    if (mechanism == kScramSha256Plus && tls) {
      bindingInUse_ = true;
    } else if (mechanism != kScramSha256) {
      throw ProxyError(Severity::kFatal, sqlstate::kProtocolViolation,
                       "client selected an invalid SASL authentication mechanism");
    }
    const std::string_view input = clientFirst.value_or(std::string_view());
    if (input.empty()) throw malformed("The message is empty.");
    if (input.find('\0') != std::string_view::npos) throw malformed("Message length does not match input length.");

    Cursor cursor(input);
    bindingFlag_ = cursor.peek();
    const std::string cbMismatch =
        "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.";
    switch (bindingFlag_) {
      case 'n':
      case 'y':
        if (bindingInUse_) throw malformed(cbMismatch);
        if (bindingFlag_ == 'y' && tls) {
          throw ProxyError(Severity::kFatal, sqlstate::kInvalidAuthorization, "SCRAM channel binding negotiation error",
                           "The client supports SCRAM channel binding but thinks the server does not.  However, "
                           "this server does support channel binding.");
        }
        cursor.skip();
        if (cursor.peek() != ',') {
          throw malformed("Comma expected, but found character \"" + sanitizeChar(cursor.peek()) + "\".");
        }
        cursor.skip();
        break;
      case 'p': {
        if (!bindingInUse_) {
          throw malformed("The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message "
                          "includes channel binding data.");
        }
        const std::string_view type = cursor.attribute('p');
        if (type != "tls-server-end-point") {
          throw ProxyError(Severity::kFatal, sqlstate::kProtocolViolation,
                           "unsupported SCRAM channel-binding type \"" + std::string(type) + "\"");
        }
        break;
      }
      default:
        throw malformed("Unexpected channel-binding flag \"" + sanitizeChar(bindingFlag_) + "\".");
    }
    if (cursor.peek() == 'a') {
      throw ProxyError(Severity::kFatal, sqlstate::kFeatureNotSupported,
                       "client uses authorization identity, but it is not supported");
    }
    if (cursor.peek() != ',') {
      throw malformed("Unexpected attribute \"" + sanitizeChar(cursor.peek()) + "\" in client-first-message.");
    }
    cursor.skip();
    clientFirstBare_.assign(cursor.rest());
    if (cursor.peek() == 'm') {
      throw ProxyError(Severity::kFatal, sqlstate::kFeatureNotSupported, "client requires an unsupported SCRAM extension");
    }
    (void)cursor.attribute('n');  // ignored: the startup packet's user is the one, as in PostgreSQL
    const std::string_view clientNonce = cursor.attribute('r');
    if (!printable(clientNonce)) {
      throw ProxyError(Severity::kFatal, sqlstate::kProtocolViolation, "non-printable characters in SCRAM nonce");
    }
    while (cursor.peek() != '\0') {
      char attr = 0;
      (void)cursor.anyAttribute(attr);
    }

    nonce_ = std::string(clientNonce) +
             (fixedServerNonce_ ? *fixedServerNonce_ : base64Encode(randomBytes(18)));  // PostgreSQL's SCRAM_RAW_NONCE_LEN
    serverFirst_ = "r=" + nonce_ + ",s=" + base64Encode(secret_.salt) + ",i=" + std::to_string(secret_.iterations);
    state_ = State::kFirstSent;
    Step step;
    step.kind = Step::Kind::kContinue;
    step.data = serverFirst_;
    return step;
  } catch (const ProxyError& error) {
    return fail(error, Failure::kProtocol);
  }
}

ScramServer::Step ScramServer::response(std::string_view clientFinal) {
  if (state_ != State::kFirstSent) throw std::logic_error("SCRAM: response out of order");
  try {
    if (clientFinal.empty()) throw malformed("The message is empty.");
    if (clientFinal.find('\0') != std::string_view::npos) throw malformed("Message length does not match input length.");
    Cursor cursor(clientFinal);
    const std::string_view binding = cursor.attribute('c');
    if (bindingInUse_) {
      const std::string expected = base64Encode("p=tls-server-end-point,," + channelBinding_);
      if (binding.size() != expected.size() || CRYPTO_memcmp(binding.data(), expected.data(), expected.size()) != 0) {
        return fail(ProxyError(Severity::kFatal, sqlstate::kInvalidAuthorization, "SCRAM channel binding check failed"),
                    Failure::kChannelBinding);
      }
    } else if (!(binding == "biws" && bindingFlag_ == 'n') && !(binding == "eSws" && bindingFlag_ == 'y')) {
      throw ProxyError(Severity::kFatal, sqlstate::kProtocolViolation,
                       "unexpected SCRAM channel-binding attribute in client-final-message");
    }
    const std::string_view finalNonce = cursor.attribute('r');
    std::size_t proofAt = 0;
    std::string_view proofText;
    for (;;) {
      proofAt = cursor.position();
      char attr = 0;
      proofText = cursor.anyAttribute(attr);
      if (attr == 'p') break;
    }
    const auto proof = base64Decode(proofText);
    if (!proof || proof->size() != kKeyLength) throw malformed("Malformed proof in client-final-message.");
    if (cursor.position() < clientFinal.size()) {
      throw malformed("Garbage found at the end of client-final-message.");
    }
    if (finalNonce != nonce_) {
      throw ProxyError(Severity::kFatal, sqlstate::kProtocolViolation, "invalid SCRAM response", "Nonce does not match.");
    }

    const std::string authMessage =
        clientFirstBare_ + "," + serverFirst_ + "," + std::string(clientFinal.substr(0, proofAt - 1));
    const Key clientSignature = hmac(secret_.storedKey, authMessage);
    Key clientKey{};
    for (std::size_t i = 0; i < kKeyLength; ++i) {
      clientKey[i] = static_cast<unsigned char>(static_cast<unsigned char>((*proof)[i]) ^ clientSignature[i]);
    }
    const Key computed = sha256(clientKey);
    OPENSSL_cleanse(clientKey.data(), clientKey.size());
    const bool match = CRYPTO_memcmp(computed.data(), secret_.storedKey.data(), kKeyLength) == 0;
    if (!match || doomed_) {
      return fail(ProxyError(Severity::kFatal, sqlstate::kInvalidPassword,
                             "password authentication failed for user \"" + user_ + "\""),
                  doomed_ ? Failure::kUnknownUser : Failure::kWrongPassword);
    }
    state_ = State::kDone;
    Step step;
    step.kind = Step::Kind::kSuccess;
    step.data = "v=" + base64Encode(asText(hmac(secret_.serverKey, authMessage)));
    return step;
  } catch (const ProxyError& error) {
    return fail(error, Failure::kProtocol);
  }
}

}  // namespace pgwire_proxy::auth
