// A byte channel over a non-blocking socket: plaintext, or TLS through an OpenSSL SSL object.
#include "session/channel.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "session/socket_io.h"

namespace pgwire_proxy::session {

short Channel::readEvents() const noexcept { return POLLIN; }
short Channel::writeEvents() const noexcept { return POLLOUT; }

std::optional<std::size_t> PlainChannel::read(std::span<char> into) { return readSome(fd_, into); }

std::size_t PlainChannel::write(std::span<const char> data) { return writeSome(fd_, data); }

std::string takeOpenSslErrors() {
  std::string text;
  while (const unsigned long code = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof buffer);
    if (!text.empty()) text += "; ";
    text += buffer;
  }
  return text;
}

TlsChannel::~TlsChannel() {
  if (owned_ && ssl_ != nullptr) {
    (void)SSL_shutdown(ssl_);  // best effort close_notify; the socket is non-blocking
    SSL_free(ssl_);
  }
}

void TlsChannel::setWants(int sslError, short& wants) {
  switch (sslError) {
    case SSL_ERROR_WANT_READ:
      wants = POLLIN;
      return;
    case SSL_ERROR_WANT_WRITE:
      wants = POLLOUT;
      return;
    case SSL_ERROR_SYSCALL: {
      const int savedErrno = errno;
      const std::string queued = takeOpenSslErrors();
      if (savedErrno == 0 && queued.empty()) throw IoError("TLS connection closed without close_notify");
      throw IoError("TLS I/O failed: " + (queued.empty() ? std::string(std::strerror(savedErrno)) : queued));
    }
    default:
      throw IoError("TLS error: " + takeOpenSslErrors());
  }
}

std::optional<std::size_t> TlsChannel::read(std::span<char> into) {
  readWants_ = POLLIN;
  ERR_clear_error();
  std::size_t count = 0;
  const int rc = SSL_read_ex(ssl_, into.data(), into.size(), &count);
  if (rc == 1) return count;
  const int error = SSL_get_error(ssl_, rc);
  if (error == SSL_ERROR_ZERO_RETURN) return std::size_t{0};  // close_notify: end of stream
  if (error == SSL_ERROR_SYSCALL && errno == 0 && ERR_peek_error() == 0) return std::size_t{0};  // bare EOF
  setWants(error, readWants_);
  return std::nullopt;
}

std::size_t TlsChannel::write(std::span<const char> data) {
  writeWants_ = POLLOUT;
  ERR_clear_error();
  std::size_t count = 0;
  const int rc = SSL_write_ex(ssl_, data.data(), data.size(), &count);
  if (rc == 1) return count;
  setWants(SSL_get_error(ssl_, rc), writeWants_);
  return 0;
}

bool TlsChannel::hasPendingInput() const noexcept { return SSL_pending(ssl_) > 0; }

bool TlsChannel::acceptStep() {
  readWants_ = POLLIN;
  ERR_clear_error();
  const int rc = SSL_accept(ssl_);
  if (rc == 1) return true;
  const int error = SSL_get_error(ssl_, rc);
  if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
    setWants(error, readWants_);
    return false;
  }
  const std::string queued = takeOpenSslErrors();
  throw IoError("TLS handshake failed: " + (queued.empty() ? std::string("connection closed") : queued));
}

std::string TlsChannel::description() const {
  const char* cipher = SSL_get_cipher_name(ssl_);
  return std::string(SSL_get_version(ssl_)) + " " + (cipher != nullptr ? cipher : "");
}

}  // namespace pgwire_proxy::session
