// Structured logging: one line per event with typed fields, as `key=value` text or JSON, to stderr
// or a file. Call sites name an event and its fields; the format is the operator's choice.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <mutex>
#include <string>
#include <string_view>
#include <variant>

namespace pgwire_proxy::observability {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kOff = 4 };
enum class LogFormat { kText, kJson };

struct LogField {
  using Value = std::variant<std::string_view, std::int64_t, std::uint64_t, double, bool>;
  LogField(std::string_view k, std::string_view v) : key(k), value(v) {}
  LogField(std::string_view k, const std::string& v) : key(k), value(std::string_view(v)) {}
  LogField(std::string_view k, const char* v) : key(k), value(std::string_view(v)) {}
  LogField(std::string_view k, std::int64_t v) : key(k), value(v) {}
  LogField(std::string_view k, int v) : key(k), value(static_cast<std::int64_t>(v)) {}
  LogField(std::string_view k, std::uint64_t v) : key(k), value(v) {}
  LogField(std::string_view k, double v) : key(k), value(v) {}
  LogField(std::string_view k, bool v) : key(k), value(v) {}

  std::string_view key;
  Value value;
};

class Logger {
 public:
  static Logger& instance();

  void setLevel(LogLevel level) noexcept { level_.store(level, std::memory_order_relaxed); }
  void setFormat(LogFormat format) noexcept { format_.store(format, std::memory_order_relaxed); }
  // Appends to `path` from now on ("" = stderr). Throws std::runtime_error when it cannot be opened.
  void setFile(const std::string& path);
  [[nodiscard]] bool enabled(LogLevel level) const noexcept {
    return level >= level_.load(std::memory_order_relaxed);
  }

  // One line: timestamp, level, event, then the fields in order.
  void log(LogLevel level, std::string_view event, std::initializer_list<LogField> fields);
  // The line as it would be written (for tests).
  [[nodiscard]] std::string format(LogLevel level, std::string_view event,
                                   std::initializer_list<LogField> fields) const;

 private:
  std::atomic<LogLevel> level_{LogLevel::kInfo};
  std::atomic<LogFormat> format_{LogFormat::kText};
  std::mutex mutex_;
  std::FILE* file_ = nullptr;  // null: stderr
};

[[nodiscard]] bool parseLogLevel(std::string_view text, LogLevel& level) noexcept;
[[nodiscard]] bool parseLogFormat(std::string_view text, LogFormat& format) noexcept;

inline void logEvent(LogLevel level, std::string_view event, std::initializer_list<LogField> fields = {}) {
  Logger::instance().log(level, event, fields);
}

}  // namespace pgwire_proxy::observability
