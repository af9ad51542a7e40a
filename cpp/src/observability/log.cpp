// Structured logging: one line per event with typed fields, as `key=value` text or JSON.
#include "observability/log.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <stdexcept>

namespace pgwire_proxy::observability {
namespace {

constexpr std::string_view kLevelNames[] = {"DEBUG", "INFO", "WARNING", "ERROR"};

std::string timestamp() {
  const auto now = std::chrono::system_clock::now();
  const auto seconds = std::chrono::system_clock::to_time_t(now);
  const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char stamp[48];
  const auto n = std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(stamp + n, sizeof stamp - n, ".%03dZ", static_cast<int>(millis));
  return stamp;
}

void appendJsonString(std::string& out, std::string_view text) {
  out += '"';
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", static_cast<unsigned>(c));
          out += escaped;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

// Text values: bare when they need no quoting, else double-quoted with \" and \\ escaped and line
// breaks flattened, so one event is always one line.
void appendTextString(std::string& out, std::string_view text) {
  bool bare = !text.empty();
  for (const char c : text) bare = bare && c > ' ' && c != '"' && c != '\\' && c != '=' && c != 127;
  if (bare) {
    out += text;
    return;
  }
  out += '"';
  for (const char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += (c == '\n' || c == '\r' || c == '\t') ? ' ' : c;
  }
  out += '"';
}

void appendValue(std::string& out, const LogField::Value& value, bool json) {
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string_view>) {
          json ? appendJsonString(out, v) : appendTextString(out, v);
        } else if constexpr (std::is_same_v<T, bool>) {
          out += v ? "true" : "false";
        } else if constexpr (std::is_same_v<T, double>) {
          char buffer[32];
          std::snprintf(buffer, sizeof buffer, "%.6f", v);
          out += buffer;
        } else {
          out += std::to_string(v);
        }
      },
      value);
}

}  // namespace

Logger& Logger::instance() {
  static Logger logger;
  return logger;
}

void Logger::setFile(const std::string& path) {
  std::FILE* file = nullptr;
  if (!path.empty()) {
    file = std::fopen(path.c_str(), "ae");
    if (file == nullptr) throw std::runtime_error("log-file: cannot open \"" + path + "\": " + std::strerror(errno));
  }
  std::lock_guard lock(mutex_);
  if (file_ != nullptr) std::fclose(file_);
  file_ = file;
}

std::string Logger::format(LogLevel level, std::string_view event, std::initializer_list<LogField> fields) const {
  const bool json = format_.load(std::memory_order_relaxed) == LogFormat::kJson;
  const auto levelName = kLevelNames[static_cast<int>(level)];
  std::string line;
  line.reserve(128);
  if (json) {
    line += "{\"ts\":\"" + timestamp() + "\",\"level\":\"";
    line += levelName;
    line += "\",\"event\":";
    appendJsonString(line, event);
    for (const auto& field : fields) {
      line += ',';
      appendJsonString(line, field.key);
      line += ':';
      appendValue(line, field.value, true);
    }
    line += '}';
  } else {
    line += timestamp();
    line += ' ';
    line += levelName;
    line += " event=";
    line += event;
    for (const auto& field : fields) {
      line += ' ';
      line += field.key;
      line += '=';
      appendValue(line, field.value, false);
    }
  }
  line += '\n';
  return line;
}

void Logger::log(LogLevel level, std::string_view event, std::initializer_list<LogField> fields) {
  if (!enabled(level) || level == LogLevel::kOff) return;
  const std::string line = format(level, event, fields);
  std::lock_guard lock(mutex_);
  if (file_ != nullptr) {
    std::fwrite(line.data(), 1, line.size(), file_);
    std::fflush(file_);
    return;
  }
  // One write per line so concurrent writers sharing stderr do not interleave within a line.
  std::size_t done = 0;
  while (done < line.size()) {
    const ssize_t written = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (written <= 0) break;
    done += static_cast<std::size_t>(written);
  }
}

bool parseLogLevel(std::string_view text, LogLevel& level) noexcept {
  if (text == "debug") level = LogLevel::kDebug;
  else if (text == "info") level = LogLevel::kInfo;
  else if (text == "warning") level = LogLevel::kWarning;
  else if (text == "error") level = LogLevel::kError;
  else if (text == "off") level = LogLevel::kOff;
  else return false;
  return true;
}

bool parseLogFormat(std::string_view text, LogFormat& format) noexcept {
  if (text == "text") format = LogFormat::kText;
  else if (text == "json") format = LogFormat::kJson;
  else return false;
  return true;
}

}  // namespace pgwire_proxy::observability
