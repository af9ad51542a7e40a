// The PostgreSQL side of a session: libpq connects and authenticates, then the relay owns the socket.
#include "upstream/upstream_connection.h"

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <memory>
#include <regex>

#include "protocol/errors.h"

namespace pgwire_proxy::upstream {
namespace {

// Startup parameters that libpq takes as connection keywords rather than as `-c` options.
bool isLibpqKeyword(std::string_view name) {
  return name == "application_name" || name == "client_encoding" || name == "options" ||
         name == "replication";
}

std::string trimTrailingNewlines(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

// libpq builds its connection error text from the server's ErrorResponse; with PQERRORS_VERBOSE the
// primary line reads "FATAL:  28P01: password authentication failed ...". Recover the fields from it.
ProxyError connectionError(const std::string& libpqMessage) {
  static const std::regex primary(R"((FATAL|ERROR|PANIC):  ([0-9A-Z]{5}): ([^\n]*))");
  static const std::regex detail(R"(\nDETAIL:  ([^\n]*))");
  static const std::regex hint(R"(\nHINT:  ([^\n]*))");
  std::smatch last;
  bool found = false;
  for (auto it = std::sregex_iterator(libpqMessage.begin(), libpqMessage.end(), primary);
       it != std::sregex_iterator(); ++it) {
    last = *it;
    found = true;
  }
  if (found) {
    const std::string rest = libpqMessage.substr(static_cast<std::size_t>(last.position(0) + last.length(0)));
    std::smatch d;
    std::smatch h;
    std::string detailText = std::regex_search(rest, d, detail) ? d[1].str() : std::string();
    std::string hintText = std::regex_search(rest, h, hint) ? h[1].str() : std::string();
    return ProxyError(Severity::kFatal, last[2].str(), last[3].str(), std::move(detailText), std::move(hintText));
  }
  return ProxyError(Severity::kFatal, sqlstate::kConnectionFailure,
                    "could not connect to the upstream server: " + trimTrailingNewlines(libpqMessage));
}

using ConninfoPtr = std::unique_ptr<PQconninfoOption, decltype(&PQconninfoFree)>;

ConninfoPtr parseDsn(const std::string& text) {
  char* parseError = nullptr;
  ConninfoPtr dsn(PQconninfoParse(text.c_str(), &parseError), &PQconninfoFree);
  if (!dsn) {
    std::string message = parseError != nullptr ? parseError : "out of memory";
    PQfreemem(parseError);
    throw ProxyError(Severity::kFatal, sqlstate::kConnectionFailure,
                     "invalid upstream connection string: " + trimTrailingNewlines(message));
  }
  return dsn;
}

}  // namespace

DsnNames dsnNames(const std::string& dsn) {
  DsnNames names;
  const ConninfoPtr options = parseDsn(dsn);
  for (PQconninfoOption* o = options.get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr || *o->val == '\0') continue;
    if (std::strcmp(o->keyword, "user") == 0) names.user = o->val;
    if (std::strcmp(o->keyword, "dbname") == 0) names.dbname = o->val;
  }
  return names;
}

void wipe(std::string& secret) noexcept {
  if (!secret.empty()) OPENSSL_cleanse(secret.data(), secret.size());
  secret.clear();
}

std::string auditApplicationName(std::string_view clientApplication, std::string_view clientAddress) {
  constexpr std::size_t kMaxLength = 63;  // NAMEDATALEN - 1
  const std::string prefix = "pgwire-proxy/";
  const std::string suffix = "@" + std::string(clientAddress);
  std::string app(clientApplication);
  const std::size_t room = kMaxLength > prefix.size() + suffix.size() ? kMaxLength - prefix.size() - suffix.size() : 0;
  if (app.size() > room) app.resize(room);
  // PostgreSQL replaces non-printable-ASCII bytes with '?'; do it first so truncation cannot split a character.
  for (char& c : app) {
    if (c < 32 || c > 126) c = '?';
  }
  std::string name = prefix + app + suffix;
  if (name.size() > kMaxLength) name.resize(kMaxLength);
  return name;
}

namespace {

// Splits a libpq `options` string as PostgreSQL does (pg_split_opts): whitespace separates, a
// backslash escapes the next character.
std::vector<std::string> splitOptions(std::string_view options) {
  std::vector<std::string> words;
  std::string word;
  bool inWord = false;
  for (std::size_t i = 0; i < options.size(); ++i) {
    const char c = options[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      if (inWord) words.push_back(std::exchange(word, {}));
      inWord = false;
      continue;
    }
    inWord = true;
    if (c == '\\' && i + 1 < options.size()) {
      word.push_back(options[++i]);
    } else {
      word.push_back(c);
    }
  }
  if (inWord) words.push_back(word);
  return words;
}

// A GUC time value as PostgreSQL reads it: an integer or decimal with an optional unit (ms default).
std::optional<std::chrono::milliseconds> parseGucMilliseconds(std::string_view text) {
  std::size_t at = 0;
  while (at < text.size() && ((text[at] >= '0' && text[at] <= '9') || text[at] == '.')) ++at;
  if (at == 0) return std::nullopt;
  double number = 0;
  try {
    number = std::stod(std::string(text.substr(0, at)));
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::string_view unit = text.substr(at);
  while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  double factor = 0;
  if (unit.empty() || unit == "ms") factor = 1;
  else if (unit == "us") factor = 0.001;
  else if (unit == "s") factor = 1000;
  else if (unit == "min") factor = 60'000;
  else if (unit == "h") factor = 3'600'000;
  else if (unit == "d") factor = 86'400'000;
  else return std::nullopt;
  return std::chrono::milliseconds(static_cast<std::int64_t>(number * factor + 0.5));
}

}  // namespace

std::optional<std::chrono::milliseconds> statementTimeoutIn(std::string_view options) {
  std::optional<std::chrono::milliseconds> found;
  bool invalid = false;
  const auto words = splitOptions(options);
  for (std::size_t i = 0; i < words.size(); ++i) {
    std::string setting;
    if (words[i] == "-c" && i + 1 < words.size()) {
      setting = words[++i];
    } else if (words[i].starts_with("-c")) {
      setting = words[i].substr(2);
    } else if (words[i].starts_with("--")) {
      setting = words[i].substr(2);
    } else {
      continue;
    }
    const auto equals = setting.find('=');
    if (equals == std::string::npos) continue;
    std::string name = setting.substr(0, equals);
    for (char& c : name) {
      if (c == '-') c = '_';
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    if (name != "statement_timeout") continue;
    found = parseGucMilliseconds(setting.substr(equals + 1));
    invalid = !found;
  }
  if (invalid) return std::nullopt;
  return found;
}

std::string quoteLiteral(std::string_view value) {
  std::string literal = "E'";
  for (const char c : value) {
    if (c == '\'' || c == '\\') literal += c;
    literal += c;
  }
  literal += '\'';
  return literal;
}

std::string escapeOptionValue(std::string_view value) {
  std::string escaped;
  escaped.reserve(value.size());
  for (char c : value) {
    if (c == ' ' || c == '\\' || c == '\t' || c == '\n' || c == '\r') escaped.push_back('\\');
    escaped.push_back(c);
  }
  return escaped;
}

namespace {

// The value of `key` among the parameters; null when absent.
template <typename Params>
auto valueOf(Params& params, std::string_view key) -> decltype(&params.front().second) {
  for (auto& [k, v] : params) {
    if (k == key) return &v;
  }
  return nullptr;
}

}  // namespace

bool asksForTlsLikePrefer(const Parameters& params) {
  const std::string* host = valueOf(params, "host");
  const std::string* hostaddr = valueOf(params, "hostaddr");
  const bool hasHost = host != nullptr && !host->empty();
  const bool hasAddress = hostaddr != nullptr && !hostaddr->empty();
  if (!hasHost && !hasAddress) return false;
  if ((hasHost && host->find(',') != std::string::npos) || (hasAddress && hostaddr->find(',') != std::string::npos)) {
    return false;
  }
  if (!hasAddress && (host->front() == '/' || host->front() == '@')) return false;
  std::string_view mode = "prefer";
  if (const std::string* sslmode = valueOf(params, "sslmode"); sslmode != nullptr && !sslmode->empty()) {
    mode = *sslmode;
  } else if (const std::string* requiressl = valueOf(params, "requiressl"); requiressl != nullptr && *requiressl == "1") {
    mode = "require";
  } else if (const char* env = std::getenv("PGSSLMODE"); env != nullptr && *env != '\0') {
    mode = env;
  }
  return mode == "prefer";
}

UpstreamConnection::UpstreamConnection(const config::ServerConfig& config, const ConnectRequest& request)
    : tlsDeclines_(request.tlsDeclines), dsnKey_(request.dsn.empty() ? config.upstreamDsn : request.dsn) {
  const ConninfoPtr dsn = parseDsn(dsnKey_);

  // Start from the DSN's own settings; then add what the client asked for and what the proxy enforces.
  Parameters params;
  // The password (the DSN's or the client's) is wiped from this copy whatever happens below.
  struct WipeOnExit {
    Parameters& params;
    ~WipeOnExit() {
      for (auto& [key, value] : params) {
        if (key == "password") wipe(value);
      }
    }
  } wipeOnExit{params};
  std::string options;
  bool namesUser = false;
  bool namesDatabase = false;
  for (PQconninfoOption* o = dsn.get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr || *o->val == '\0') continue;
    if (std::strcmp(o->keyword, "options") == 0) {
      options = o->val;
    } else {
      namesUser = namesUser || std::strcmp(o->keyword, "user") == 0;
      namesDatabase = namesDatabase || std::strcmp(o->keyword, "dbname") == 0;
      params.emplace_back(o->keyword, o->val);
    }
  }
  auto set = [&params](const std::string& key, const std::string& value) {
    if (std::string* existing = valueOf(params, key)) {
      *existing = value;
    } else {
      params.emplace_back(key, value);
    }
  };
  // The DSN's names win; where it names none the client's are used (not libpq's PGUSER/PGDATABASE).
  // Passthrough connects as the client with the client's password, whatever the DSN names.
  if (request.asClient) {
    set("user", request.user);
    set("password", request.password);
  } else if (!namesUser && !request.user.empty()) {
    set("user", request.user);
  }
  if (!namesDatabase && !request.database.empty()) set("dbname", request.database);
  auto appendOption = [&options](const std::string& item) {
    if (!options.empty()) options += ' ';
    options += item;
  };
  for (const auto& [name, value] : request.clientParameters) {
    if (name == "options") {
      appendOption(value);
    } else if (name == "client_encoding") {
      set("client_encoding", value);
    } else if (!isLibpqKeyword(name)) {
      appendOption("-c " + escapeOptionValue(name) + "=" + escapeOptionValue(value));
    }
  }
  // The proxy's guardrails come last so a client's startup options cannot override them, except
  // that a client's own lower statement_timeout stands (the lower of the two wins).
  statementTimeout_ = config.queryTimeout;
  const auto clientTimeout = statementTimeoutIn(options);
  if (clientTimeout && clientTimeout->count() > 0 &&
      (config.queryTimeout.count() == 0 || *clientTimeout < config.queryTimeout)) {
    statementTimeout_ = *clientTimeout;
  } else if (config.queryTimeout.count() > 0) {
    appendOption("-c statement_timeout=" + std::to_string(config.queryTimeout.count()));
  }
  if (config.idleInTransactionTimeout.count() > 0) {
    appendOption("-c idle_in_transaction_session_timeout=" +
                 std::to_string(config.idleInTransactionTimeout.count()));
  }
  if (!options.empty()) set("options", options);
  // The relay speaks plaintext or TLS on libpq's socket; GSSAPI encryption it cannot.
  set("gssencmode", "disable");
  if (tlsDeclines_ != nullptr && asksForTlsLikePrefer(params)) {
    tlsProbe_ = TlsProbe::kAsking;
    if (tlsDeclines_->declinedRecently(dsnKey_, TlsDeclines::Clock::now())) {
      set("sslmode", "disable");
      tlsProbe_ = TlsProbe::kSkipped;
    }
  }
  set("application_name", request.auditApplicationName);

  std::vector<const char*> keywords;
  std::vector<const char*> values;
  for (const auto& [k, v] : params) {
    keywords.push_back(k.c_str());
    values.push_back(v.c_str());
  }
  keywords.push_back(nullptr);
  values.push_back(nullptr);

  conn_ = PQconnectStartParams(keywords.data(), values.data(), 0);
  if (conn_ == nullptr) throw ProxyError(Severity::kFatal, sqlstate::kConnectionFailure, "out of memory");
  // Verbose errors carry the SQLSTATE in the message text, the only place libpq exposes it at connect.
  PQsetErrorVerbosity(conn_, PQERRORS_VERBOSE);

  if (PQstatus(conn_) == CONNECTION_BAD) {
    ProxyError error = connectionError(PQerrorMessage(conn_));
    wipePassword();
    PQfinish(conn_);
    conn_ = nullptr;
    throw error;
  }
}

ConnectWait UpstreamConnection::firstWait() const { return ConnectWait{PQsocket(conn_), POLLOUT}; }

bool UpstreamConnection::firstWaitOver() const {
  pollfd probe{PQsocket(conn_), POLLOUT, 0};
  return probe.fd >= 0 && ::poll(&probe, 1, 0) > 0;
}

namespace {

// libpq 15's struct pg_cancel (libpq-int.h) begins so; the layout is checked against the connection
// (the backend pid must match) before the key is trusted.
struct LibpqCancelPrefix {
  struct {
    sockaddr_storage addr;
    socklen_t salen;
  } raddr;
  int be_pid;
  int be_key;
};

}  // namespace

std::optional<ConnectWait> UpstreamConnection::continueConnect() {
  auto fail = [this](ProxyError error) {
    wipePassword();
    PQfinish(conn_);
    conn_ = nullptr;
    throw error;
  };
  if (conn_ == nullptr) throw ProxyError(Severity::kFatal, sqlstate::kConnectionFailure, "no upstream connection");
  pollStatus_ = PQconnectPoll(conn_);
  // Once the TCP connect is done and again after the server declines SSL, libpq asks to wait until the
  // socket is writable before it writes a few bytes (the SSLRequest, the startup packet). A connected
  // socket that has sent only those has an empty send buffer: it is writable now, so the step runs at
  // once instead of after another trip through the loop (an epoll_ctl and an epoll_wait each time).
  for (int step = 0; step < 2 && pollStatus_ == PGRES_POLLING_WRITING && PQstatus(conn_) == CONNECTION_MADE; ++step) {
    pollStatus_ = PQconnectPoll(conn_);
  }
  switch (pollStatus_) {
    case PGRES_POLLING_OK:
      noteTlsOutcome(true);
      break;
    case PGRES_POLLING_FAILED:
      noteTlsOutcome(false);
      fail(connectionError(PQerrorMessage(conn_)));
      break;
    case PGRES_POLLING_READING:
      return ConnectWait{PQsocket(conn_), POLLIN};
    default:
      return ConnectWait{PQsocket(conn_), POLLOUT};
  }
  wipePassword();
  // Connected: libpq's own writes (Terminate at the end) must never wait on a wedged upstream.
  (void)PQsetnonblocking(conn_, 1);
  cancel_ = PQgetCancel(conn_);
  if (cancel_ != nullptr && PQlibVersion() >= 150000 && PQlibVersion() < 170000) {
    LibpqCancelPrefix prefix{};
    std::memcpy(&prefix, cancel_, sizeof prefix);
    const auto family = prefix.raddr.addr.ss_family;
    if (prefix.be_pid == PQbackendPID(conn_) && prefix.raddr.salen > 0 &&
        prefix.raddr.salen <= sizeof(sockaddr_storage) && (family == AF_INET || family == AF_INET6 || family == AF_UNIX)) {
      CancelData data;
      data.address = prefix.raddr.addr;
      data.addressLength = prefix.raddr.salen;
      data.processId = prefix.be_pid;
      data.secretKey = prefix.be_key;
      cancelData_ = data;
    }
  }
  return std::nullopt;
}

void UpstreamConnection::noteTlsOutcome(bool connected) noexcept {
  try {
    if (tlsProbe_ == TlsProbe::kAsking && connected) {
      if (PQsslInUse(conn_) != 0) {
        tlsDeclines_->forget(dsnKey_);
      } else {
        tlsDeclines_->noteDeclined(dsnKey_, TlsDeclines::Clock::now());
      }
    } else if (tlsProbe_ == TlsProbe::kSkipped && !connected) {
      tlsDeclines_->forget(dsnKey_);  // perhaps the server wants TLS now: the next connect asks
    }
  } catch (...) {  // bad_alloc noting a decline: the next connect asks again, as libpq would
  }
  tlsProbe_ = TlsProbe::kNotApplicable;
}

ProxyError UpstreamConnection::timeoutError(const config::ServerConfig& config) {
  return ProxyError(Severity::kFatal, sqlstate::kConnectionFailure,
                    "could not connect to the upstream server: timeout expired after " +
                        config::formatDuration(config.connectTimeout));
}

void UpstreamConnection::wipePassword() noexcept {
  // PQpass returns libpq's own (mutable) storage: the DSN's or the client's password. It is not read
  // again once the connect has ended (no PQreset here).
  if (conn_ == nullptr) return;
  if (char* password = PQpass(conn_); password != nullptr && *password != '\0') {
    OPENSSL_cleanse(password, std::strlen(password));
  }
}

UpstreamConnection::~UpstreamConnection() {
  {
    std::lock_guard lock(cancelMutex_);
    if (cancel_ != nullptr) PQfreeCancel(cancel_);
    cancel_ = nullptr;
  }
  if (conn_ != nullptr) PQfinish(conn_);  // sends Terminate when the socket is still open
}

int UpstreamConnection::socket() const { return PQsocket(conn_); }

int UpstreamConnection::backendPid() const { return PQbackendPID(conn_); }

ssl_st* UpstreamConnection::sslObject() const {
  return PQsslInUse(conn_) != 0 ? static_cast<ssl_st*>(PQsslStruct(conn_, "OpenSSL")) : nullptr;
}

const ReportedParameters& UpstreamConnection::reported() const {
  if (!reported_) reported_.emplace([this](const char* name) { return PQparameterStatus(conn_, name); });
  return *reported_;
}

void UpstreamConnection::noteParameter(std::string_view name, std::string_view value) {
  (void)reported();
  reported_->note(name, value);
}

bool UpstreamConnection::cancel(std::string& error) const {
  std::lock_guard lock(cancelMutex_);
  if (cancel_ == nullptr) {
    error = "no cancel key";
    return false;
  }
  char buffer[256] = {};
  if (PQcancel(cancel_, buffer, sizeof buffer) == 0) {
    error = trimTrailingNewlines(buffer);
    return false;
  }
  return true;
}

void UpstreamConnection::abandon() {
  // Shut the socket down so PQfinish's Terminate goes nowhere and the server sees the close at once.
  if (conn_ != nullptr && PQsocket(conn_) >= 0) ::shutdown(PQsocket(conn_), SHUT_RDWR);
}

}  // namespace pgwire_proxy::upstream
