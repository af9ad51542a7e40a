// Structured, line-oriented logging to stderr: one line per event, key=value fields.
#pragma once

#include <atomic>
#include <mutex>
#include <string_view>

namespace pgwire_proxy::observability {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kOff = 4 };

class Logger {
 public:
  static Logger& instance();

  void setLevel(LogLevel level) noexcept { level_.store(level, std::memory_order_relaxed); }
  [[nodiscard]] bool enabled(LogLevel level) const noexcept {
    return level >= level_.load(std::memory_order_relaxed);
  }
  // Writes "TIMESTAMP LEVEL message\n" atomically with respect to other log lines.
  void log(LogLevel level, std::string_view message);

 private:
  std::atomic<LogLevel> level_{LogLevel::kInfo};
  std::mutex mutex_;
};

// Parses debug/info/warning/error/off; returns false for anything else.
[[nodiscard]] bool parseLogLevel(std::string_view text, LogLevel& level) noexcept;

inline void logDebug(std::string_view m) { Logger::instance().log(LogLevel::kDebug, m); }
inline void logInfo(std::string_view m) { Logger::instance().log(LogLevel::kInfo, m); }
inline void logWarning(std::string_view m) { Logger::instance().log(LogLevel::kWarning, m); }
inline void logError(std::string_view m) { Logger::instance().log(LogLevel::kError, m); }

}  // namespace pgwire_proxy::observability
