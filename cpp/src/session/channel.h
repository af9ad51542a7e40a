// A byte channel over a non-blocking socket: plaintext, or TLS through an OpenSSL SSL object.
// The session polls the descriptor itself; a channel only says what to wait for.
#pragma once

#include <poll.h>

#include <cstddef>
#include <optional>
#include <span>
#include <string>

struct ssl_st;

namespace pgwire_proxy::session {

class Channel {
 public:
  virtual ~Channel() = default;

  [[nodiscard]] virtual int fd() const noexcept = 0;
  // Bytes read (> 0), 0 at end of stream, nullopt when nothing can be read now. Throws IoError.
  [[nodiscard]] virtual std::optional<std::size_t> read(std::span<char> into) = 0;
  // Bytes written; 0 when nothing can be written now. Throws IoError.
  [[nodiscard]] virtual std::size_t write(std::span<const char> data) = 0;
  // Poll events to wait for before retrying a read or a write that made no progress
  // (TLS may need to write to read, or read to write).
  [[nodiscard]] virtual short readEvents() const noexcept;
  [[nodiscard]] virtual short writeEvents() const noexcept;
  // Bytes already received and decrypted: read() returns them without the socket being readable.
  [[nodiscard]] virtual bool hasPendingInput() const noexcept { return false; }
  [[nodiscard]] virtual bool encrypted() const noexcept { return false; }
};

class PlainChannel final : public Channel {
 public:
  explicit PlainChannel(int fd) noexcept : fd_(fd) {}
  [[nodiscard]] int fd() const noexcept override { return fd_; }
  [[nodiscard]] std::optional<std::size_t> read(std::span<char> into) override;
  [[nodiscard]] std::size_t write(std::span<const char> data) override;

 private:
  int fd_;
};

// TLS over a socket. Owns the SSL object when it made it (the client side); borrows libpq's for the
// upstream link (libpq frees it).
class TlsChannel final : public Channel {
 public:
  TlsChannel(ssl_st* ssl, int fd, bool owned) noexcept : ssl_(ssl), fd_(fd), owned_(owned) {}
  ~TlsChannel() override;
  TlsChannel(const TlsChannel&) = delete;
  TlsChannel& operator=(const TlsChannel&) = delete;

  [[nodiscard]] int fd() const noexcept override { return fd_; }
  [[nodiscard]] std::optional<std::size_t> read(std::span<char> into) override;
  [[nodiscard]] std::size_t write(std::span<const char> data) override;
  [[nodiscard]] short readEvents() const noexcept override { return readWants_; }
  [[nodiscard]] short writeEvents() const noexcept override { return writeWants_; }
  [[nodiscard]] bool hasPendingInput() const noexcept override;
  [[nodiscard]] bool encrypted() const noexcept override { return true; }

  // One step of the server-side handshake: true when done, false when it must wait for
  // readEvents(). Throws IoError with OpenSSL's reason when the handshake fails.
  [[nodiscard]] bool acceptStep();
  [[nodiscard]] ssl_st* ssl() const noexcept { return ssl_; }
  // "TLSv1.3 TLS_AES_256_GCM_SHA384" for logs.
  [[nodiscard]] std::string description() const;

 private:
  // Maps an SSL_ERROR_* after a call that made no progress onto the poll events to wait for.
  void setWants(int sslError, short& wants);

  ssl_st* ssl_;
  int fd_;
  bool owned_;
  short readWants_ = POLLIN;
  short writeWants_ = POLLOUT;
};

// OpenSSL's queued errors as one line (and clears the queue).
[[nodiscard]] std::string takeOpenSslErrors();

}  // namespace pgwire_proxy::session
