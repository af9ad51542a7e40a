// The server's TLS settings as an OpenSSL context: loaded and checked at startup, swapped on reload.
#pragma once

#include <memory>
#include <mutex>
#include <string>

struct ssl_ctx_st;
struct ssl_st;

namespace pgwire_proxy::session {

struct TlsSettings {
  std::string certFile;  // PEM certificate chain
  std::string keyFile;   // PEM private key; 0600 (or root-owned 0640) like PostgreSQL demands
  std::string caFile;    // when set, clients must present a certificate signed by this CA
};

// An immutable SSL_CTX: TLS 1.2 at least, no compression or renegotiation, forward-secret AEAD
// ciphers for TLS 1.2 (TLS 1.3's defaults are already that).
class TlsContext {
 public:
  // Throws config::ConfigError naming the file and what is wrong with it.
  explicit TlsContext(const TlsSettings& settings);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // A new server-side SSL object for one connection (holds its own reference to the context).
  [[nodiscard]] ssl_st* newConnection() const;

 private:
  ssl_ctx_st* ctx_ = nullptr;
};

// The current context; reload() builds a new one from the same settings (re-reading the files) and
// swaps it in for new connections, connected clients keep theirs.
class TlsContextHolder {
 public:
  explicit TlsContextHolder(TlsSettings settings);
  [[nodiscard]] std::shared_ptr<const TlsContext> current() const;
  // Throws ConfigError and keeps the old context when the files are bad.
  void reload();

 private:
  const TlsSettings settings_;
  mutable std::mutex mutex_;
  std::shared_ptr<const TlsContext> current_;
};

}  // namespace pgwire_proxy::session
