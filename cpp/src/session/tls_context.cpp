// The server's TLS settings as an OpenSSL context: loaded and checked at startup, swapped on reload.
#include "session/tls_context.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "config/private_file.h"

#include "config/server_config.h"
#include "session/channel.h"

namespace pgwire_proxy::session {
namespace {

using config::ConfigError;

constexpr const char* kTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

void checkReadable(const std::string& option, const std::string& path) {
  if (::access(path.c_str(), R_OK) != 0) {
    throw ConfigError(option + ": cannot read \"" + path + "\": " + std::strerror(errno));
  }
}

}  // namespace

TlsContext::TlsContext(const TlsSettings& settings) {
  checkReadable("tls-cert", settings.certFile);
  checkReadable("tls-key", settings.keyFile);
  config::checkPrivateFile("tls-key", settings.keyFile, "private key file");
  if (!settings.caFile.empty()) checkReadable("tls-ca", settings.caFile);

  ERR_clear_error();
  ctx_ = SSL_CTX_new(TLS_server_method());
  if (ctx_ == nullptr) throw ConfigError("tls: cannot create an OpenSSL context: " + takeOpenSslErrors());
  auto fail = [this](const std::string& message) {
    SSL_CTX_free(ctx_);
    ctx_ = nullptr;
    throw ConfigError(message + ": " + takeOpenSslErrors());
  };
  SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx_, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                SSL_OP_NO_TICKET);
  SSL_CTX_set_mode(ctx_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_OFF);
  if (SSL_CTX_set_cipher_list(ctx_, kTls12Ciphers) != 1) fail("tls: cannot set the cipher list");
  if (SSL_CTX_use_certificate_chain_file(ctx_, settings.certFile.c_str()) != 1) {
    fail("tls-cert: cannot load a certificate from \"" + settings.certFile + "\"");
  }
  if (SSL_CTX_use_PrivateKey_file(ctx_, settings.keyFile.c_str(), SSL_FILETYPE_PEM) != 1) {
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
      fail("tls-key: \"" + settings.keyFile + "\" does not match the certificate in \"" + settings.certFile + "\"");
    }
    fail("tls-key: cannot load a private key from \"" + settings.keyFile + "\"");
  }
  if (SSL_CTX_check_private_key(ctx_) != 1) {
    fail("tls-key: \"" + settings.keyFile + "\" does not match the certificate in \"" + settings.certFile + "\"");
  }
  if (!settings.caFile.empty()) {
    if (SSL_CTX_load_verify_locations(ctx_, settings.caFile.c_str(), nullptr) != 1) {
      fail("tls-ca: cannot load CA certificates from \"" + settings.caFile + "\"");
    }
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(settings.caFile.c_str());
    if (names == nullptr) fail("tls-ca: no CA names in \"" + settings.caFile + "\"");
    SSL_CTX_set_client_CA_list(ctx_, names);
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
}

TlsContext::~TlsContext() {
  if (ctx_ != nullptr) SSL_CTX_free(ctx_);
}

ssl_st* TlsContext::newConnection() const {
  SSL* ssl = SSL_new(ctx_);
  if (ssl == nullptr) throw std::runtime_error("SSL_new failed: " + takeOpenSslErrors());
  return ssl;
}

TlsContextHolder::TlsContextHolder(TlsSettings settings)
    : settings_(std::move(settings)), current_(std::make_shared<const TlsContext>(settings_)) {}

std::shared_ptr<const TlsContext> TlsContextHolder::current() const {
  std::lock_guard lock(mutex_);
  return current_;
}

void TlsContextHolder::reload() {
  auto fresh = std::make_shared<const TlsContext>(settings_);  // throws before anything changes
  std::lock_guard lock(mutex_);
  current_ = std::move(fresh);
}

}  // namespace pgwire_proxy::session
