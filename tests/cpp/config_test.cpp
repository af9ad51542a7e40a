// Parsing and validation of the settings: durations, sizes, integers, the DSN.
#include <boost/test/unit_test.hpp>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>

#include "config/options.h"
#include "config/server_config.h"
#include "upstream/routes.h"
#include "upstream/upstream_connection.h"
#include "upstream/upstream_pool.h"
#include "protocol/messages.h"
#include "protocol/writer.h"
#include "upstream/reported_parameters.h"
#include "upstream/tls_declines.h"

using namespace pgwire_proxy::config;
using std::chrono::milliseconds;

BOOST_AUTO_TEST_SUITE(config_parsing)

BOOST_AUTO_TEST_CASE(durations) {
  BOOST_TEST(parseDuration("500ms", "t").count() == 500);
  BOOST_TEST(parseDuration("30s", "t").count() == 30000);
  BOOST_TEST(parseDuration("30", "t").count() == 30000);
  BOOST_TEST(parseDuration("2min", "t").count() == 120000);
  BOOST_TEST(parseDuration("1h", "t").count() == 3600000);
  BOOST_TEST(parseDuration("0", "t").count() == 0);
  for (const char* bad : {"", "abc", "-1s", "5 parsecs", "1.5s", "30sec", "99999999999999999999", "1000h"}) {
    BOOST_CHECK_THROW((void)parseDuration(bad, "query-timeout"), ConfigError);
  }
  try {
    (void)parseDuration("soon", "query-timeout");
  } catch (const ConfigError& error) {
    BOOST_TEST(std::string(error.what()).find("query-timeout") != std::string::npos);
  }
  BOOST_TEST(formatDuration(milliseconds(30000)) == "30s");
  BOOST_TEST(formatDuration(milliseconds(500)) == "500ms");
  BOOST_TEST(formatDuration(milliseconds(120000)) == "2min");
  BOOST_TEST(formatDuration(milliseconds(0)) == "0");
}

BOOST_AUTO_TEST_CASE(sizes) {
  BOOST_TEST(parseSize("1024", "s") == 1024U);
  BOOST_TEST(parseSize("64kB", "s") == 65536U);
  BOOST_TEST(parseSize("100MB", "s") == 100ULL * 1024 * 1024);
  BOOST_TEST(parseSize("1GB", "s") == 1ULL << 30);
  for (const char* bad : {"", "MB", "10mb", "1.5MB", "-1", "99999999999TB"}) {
    BOOST_CHECK_THROW((void)parseSize(bad, "max-bytes"), ConfigError);
  }
}

BOOST_AUTO_TEST_CASE(routes) {
  const auto config = configFromOptions({{"database", {"app=host=127.0.0.1 dbname=a", "b=host=127.0.0.1"}}});
  BOOST_TEST(config.upstreamDsn.empty());  // routes alone are enough
  BOOST_REQUIRE(config.databases.size() == 2U);
  BOOST_TEST(config.databases[0].first == "app");
  BOOST_TEST(config.databases[0].second == "host=127.0.0.1 dbname=a");
  for (const char* bad : {"app", "=host=x", "app=nonsense=1", "app=host=x gssencmode=require"}) {
    BOOST_CHECK_THROW((void)configFromOptions({{"database", {bad}}}), ConfigError);
  }
  BOOST_CHECK_THROW((void)configFromOptions({{"database", {"a=host=x", "a=host=y"}}}), ConfigError);

  const pgwire_proxy::upstream::RouteTable withFallback(config.databases, "host=fallback");
  BOOST_TEST(withFallback.find("app")->dsn == "host=127.0.0.1 dbname=a");
  BOOST_TEST(withFallback.find("other")->name == "other");
  BOOST_TEST(withFallback.find("other")->dsn == "host=fallback");
  const pgwire_proxy::upstream::RouteTable without(config.databases, "");
  BOOST_TEST(!without.find("other").has_value());
  BOOST_TEST(!without.find("APP").has_value());  // names are exact, as PostgreSQL's database names
}

BOOST_AUTO_TEST_CASE(integers) {
  BOOST_TEST(parseInteger("100", "n", 1, 1000) == 100);
  BOOST_CHECK_THROW((void)parseInteger("0", "n", 1, 1000), ConfigError);
  BOOST_CHECK_THROW((void)parseInteger("10x", "n", 1, 1000), ConfigError);
  BOOST_CHECK_THROW((void)parseInteger("", "n", 1, 1000), ConfigError);
}

BOOST_AUTO_TEST_CASE(validation) {
  ServerConfig config;
  BOOST_CHECK_THROW(config.validate(), ConfigError);  // no DSN
  config.upstreamDsn = "host=127.0.0.1 port=5432 dbname=postgres";
  config.validate();
  config.upstreamDsn = "postgresql://u@localhost:5432/db?sslmode=disable";
  config.validate();
  config.upstreamDsn = "host=x nonsense_keyword=1";
  BOOST_CHECK_THROW(config.validate(), ConfigError);
  config.upstreamDsn = "host='unterminated";
  BOOST_CHECK_THROW(config.validate(), ConfigError);
  config.upstreamDsn = "host=x";
  config.maxConnections = 0;
  BOOST_CHECK_THROW(config.validate(), ConfigError);
}

BOOST_AUTO_TEST_CASE(extended_protocol_mode) {
  OptionValues values{{"upstream-dsn", {"host=127.0.0.1"}}};
  BOOST_CHECK(!configFromOptions(values).extendedProtocolRelay);  // reject is the default
  values["extended-protocol"] = {"relay"};
  BOOST_CHECK(configFromOptions(values).extendedProtocolRelay);
  values["extended-protocol"] = {"reject"};
  BOOST_CHECK(!configFromOptions(values).extendedProtocolRelay);
  values["extended-protocol"] = {"Relay"};
  BOOST_CHECK_EXCEPTION(configFromOptions(values), ConfigError, [](const ConfigError& error) {
    return std::string(error.what()).find("extended-protocol: invalid value \"Relay\"") == 0;
  });
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(upstream_parameters)

BOOST_AUTO_TEST_CASE(audit_application_name_fits_namedatalen) {
  using pgwire_proxy::upstream::auditApplicationName;
  BOOST_TEST(auditApplicationName("psql", "127.0.0.1") == "pgwire-proxy/psql@127.0.0.1");
  BOOST_TEST(auditApplicationName("", "10.1.2.3") == "pgwire-proxy/@10.1.2.3");
  const std::string longName = auditApplicationName(std::string(200, 'a'), "192.168.100.200");
  BOOST_TEST(longName.size() == 63U);
  BOOST_TEST(longName.ends_with("@192.168.100.200"));
  BOOST_TEST(auditApplicationName("caf\xc3\xa9", "::1") == "pgwire-proxy/caf??@::1");
}

BOOST_AUTO_TEST_CASE(a_clients_statement_timeout_is_read_from_its_options) {
  using pgwire_proxy::upstream::statementTimeoutIn;
  using std::chrono::milliseconds;
  BOOST_TEST(!statementTimeoutIn("").has_value());
  BOOST_TEST(!statementTimeoutIn("-c search_path=public").has_value());
  BOOST_TEST(statementTimeoutIn("-c statement_timeout=5s").value() == milliseconds(5000));
  BOOST_TEST(statementTimeoutIn("-cstatement_timeout=250").value() == milliseconds(250));
  BOOST_TEST(statementTimeoutIn("--statement-timeout=2min").value() == milliseconds(120'000));
  BOOST_TEST(statementTimeoutIn("-c statement_timeout=1h -c statement_timeout=1.5s").value() == milliseconds(1500));
  BOOST_TEST(statementTimeoutIn("-c statement_timeout=0").value() == milliseconds(0));
  BOOST_TEST(!statementTimeoutIn("-c statement_timeout=soon").has_value());  // PostgreSQL refuses it
  BOOST_TEST(!statementTimeoutIn("-c application_name=a\\ -c\\ statement_timeout=1").has_value());
}

BOOST_AUTO_TEST_CASE(option_values_are_escaped) {
  using pgwire_proxy::upstream::escapeOptionValue;
  BOOST_TEST(escapeOptionValue("public") == "public");
  BOOST_TEST(escapeOptionValue("a b\\c") == "a\\ b\\\\c");
}

BOOST_AUTO_TEST_SUITE_END()

// --reuse-upstream's key: what makes two clients' connections interchangeable.
BOOST_AUTO_TEST_SUITE(upstream_pool_key)

BOOST_AUTO_TEST_CASE(same_request_same_key_whatever_the_parameter_order) {
  pgwire_proxy::upstream::ConnectRequest a;
  a.dsn = "host=db";
  a.user = "app";
  a.database = "shop";
  a.clientParameters = {{"DateStyle", "ISO"}, {"options", "-c work_mem=8MB"}};
  a.auditApplicationName = "pgwire-proxy/a@127.0.0.1";
  auto b = a;
  b.clientParameters = {{"options", "-c work_mem=8MB"}, {"DateStyle", "ISO"}};
  b.auditApplicationName = "pgwire-proxy/b@10.0.0.1";  // not part of it: the next client's is set on handover
  BOOST_TEST(pgwire_proxy::upstream::poolKey(a) == pgwire_proxy::upstream::poolKey(b));
  BOOST_TEST(!pgwire_proxy::upstream::poolKey(a).empty());
}

BOOST_AUTO_TEST_CASE(anything_else_differs) {
  pgwire_proxy::upstream::ConnectRequest base;
  base.dsn = "host=db";
  base.user = "app";
  base.database = "shop";
  const auto key = pgwire_proxy::upstream::poolKey(base);
  auto other = base;
  other.user = "admin";
  BOOST_TEST(pgwire_proxy::upstream::poolKey(other) != key);
  other = base;
  other.database = "shop2";
  BOOST_TEST(pgwire_proxy::upstream::poolKey(other) != key);
  other = base;
  other.dsn = "host=db2";
  BOOST_TEST(pgwire_proxy::upstream::poolKey(other) != key);
  other = base;
  other.clientParameters = {{"TimeZone", "UTC"}};
  BOOST_TEST(pgwire_proxy::upstream::poolKey(other) != key);
  // Fields cannot run into each other: ("ab", "c") is not ("a", "bc").
  auto left = base;
  left.user = "ab";
  left.database = "c";
  auto right = base;
  right.user = "a";
  right.database = "bc";
  BOOST_TEST(pgwire_proxy::upstream::poolKey(left) != pgwire_proxy::upstream::poolKey(right));
}

BOOST_AUTO_TEST_CASE(passthrough_connections_are_never_shared) {
  pgwire_proxy::upstream::ConnectRequest request;
  request.dsn = "host=db";
  request.user = "app";
  request.asClient = true;
  BOOST_TEST(pgwire_proxy::upstream::poolKey(request).empty());
}

BOOST_AUTO_TEST_CASE(reuse_settings_are_checked) {
  ServerConfig config;
  config.upstreamDsn = "host=127.0.0.1";
  config.reuseUpstream = true;
  config.authMode = AuthMode::kPassthrough;
  BOOST_CHECK_THROW(config.validate(), ConfigError);
  config.authMode = AuthMode::kTrust;
  config.reuseIdleTimeout = milliseconds(0);
  BOOST_CHECK_THROW(config.validate(), ConfigError);
  config.reuseIdleTimeout = milliseconds(1000);
  BOOST_CHECK_NO_THROW(config.validate());
}

BOOST_AUTO_TEST_CASE(quoted_literals) {
  BOOST_TEST(pgwire_proxy::upstream::quoteLiteral("plain") == "E'plain'");
  BOOST_TEST(pgwire_proxy::upstream::quoteLiteral("it's a \\ test") == "E'it''s a \\\\ test'");
}

BOOST_AUTO_TEST_SUITE_END()

// sslmode=prefer's declines, remembered per DSN for a minute.
BOOST_AUTO_TEST_SUITE(upstream_tls_declines)

BOOST_AUTO_TEST_CASE(a_decline_is_remembered_for_its_dsn_for_a_minute) {
  using pgwire_proxy::upstream::TlsDeclines;
  TlsDeclines declines;
  const auto t0 = TlsDeclines::Clock::now();
  BOOST_TEST(!declines.declinedRecently("host=a", t0));
  declines.noteDeclined("host=a", t0);
  BOOST_TEST(declines.declinedRecently("host=a", t0));
  BOOST_TEST(declines.declinedRecently("host=a", t0 + std::chrono::seconds(59)));
  BOOST_TEST(!declines.declinedRecently("host=a", t0 + TlsDeclines::kRemembered));
  BOOST_TEST(!declines.declinedRecently("host=b", t0));
  declines.noteDeclined("host=a", t0 + std::chrono::seconds(50));  // asked again: the minute starts again
  BOOST_TEST(declines.declinedRecently("host=a", t0 + std::chrono::seconds(100)));
}

BOOST_AUTO_TEST_CASE(forget_and_clear_ask_again) {
  using pgwire_proxy::upstream::TlsDeclines;
  TlsDeclines declines;
  const auto t0 = TlsDeclines::Clock::now();
  declines.noteDeclined("host=a", t0);
  declines.noteDeclined("host=b", t0);
  declines.forget("host=a");
  BOOST_TEST(!declines.declinedRecently("host=a", t0));
  BOOST_TEST(declines.declinedRecently("host=b", t0));
  declines.clear();
  BOOST_TEST(!declines.declinedRecently("host=b", t0));
}

BOOST_AUTO_TEST_CASE(only_a_single_tcp_host_with_prefer_is_asked_like_prefer) {
  using pgwire_proxy::upstream::asksForTlsLikePrefer;
  using P = pgwire_proxy::upstream::Parameters;
  const char* inherited = std::getenv("PGSSLMODE");
  const std::optional<std::string> saved = inherited ? std::optional<std::string>(inherited) : std::nullopt;
  ::unsetenv("PGSSLMODE");
  BOOST_TEST(asksForTlsLikePrefer(P{{"host", "127.0.0.1"}}));  // libpq's default
  BOOST_TEST(asksForTlsLikePrefer(P{{"host", "db.example"}, {"sslmode", "prefer"}}));
  BOOST_TEST(asksForTlsLikePrefer(P{{"hostaddr", "10.0.0.1"}}));
  BOOST_TEST(asksForTlsLikePrefer(P{{"host", "/var/run/postgresql"}, {"hostaddr", "10.0.0.1"}}));  // hostaddr connects
  BOOST_TEST(!asksForTlsLikePrefer(P{}));                                   // libpq's Unix socket
  BOOST_TEST(!asksForTlsLikePrefer(P{{"host", "/var/run/postgresql"}}));
  BOOST_TEST(!asksForTlsLikePrefer(P{{"host", "@abstract"}}));
  BOOST_TEST(!asksForTlsLikePrefer(P{{"host", "a,b"}}));
  BOOST_TEST(!asksForTlsLikePrefer(P{{"hostaddr", "10.0.0.1,10.0.0.2"}}));
  for (const char* mode : {"disable", "allow", "require", "verify-ca", "verify-full"}) {
    BOOST_TEST(!asksForTlsLikePrefer(P{{"host", "127.0.0.1"}, {"sslmode", mode}}), mode);
  }
  BOOST_TEST(!asksForTlsLikePrefer(P{{"host", "127.0.0.1"}, {"requiressl", "1"}}));
  ::setenv("PGSSLMODE", "require", 1);
  BOOST_TEST(!asksForTlsLikePrefer(P{{"host", "127.0.0.1"}}));
  BOOST_TEST(asksForTlsLikePrefer(P{{"host", "127.0.0.1"}, {"sslmode", "prefer"}}));  // the DSN's wins
  if (saved) {
    ::setenv("PGSSLMODE", saved->c_str(), 1);
  } else {
    ::unsetenv("PGSSLMODE");
  }
}

BOOST_AUTO_TEST_SUITE_END()

// What a client is told at startup of an upstream's parameters, including after a reused
// connection's reset.
BOOST_AUTO_TEST_SUITE(upstream_reported_parameters)

namespace {

using pgwire_proxy::upstream::ReportedParameters;

ReportedParameters fromServer(std::map<std::string, std::string> values) {
  return ReportedParameters([values = std::move(values)](const char* name) -> const char* {
    const auto found = values.find(name);
    return found == values.end() ? nullptr : found->second.c_str();
  });
}

std::string messages(std::initializer_list<std::pair<std::string_view, std::string_view>> parameters) {
  std::string out;
  pgwire_proxy::protocol::MessageWriter writer(out);
  for (const auto& [name, value] : parameters) pgwire_proxy::protocol::writeParameterStatus(writer, name, value);
  return out;
}

std::string told(const ReportedParameters& reported, std::string_view applicationName) {
  std::string out;
  reported.appendTo(out, applicationName);
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(the_client_gets_its_own_application_name_first_then_the_rest_in_order) {
  const auto reported = fromServer({{"TimeZone", "UTC"}, {"application_name", "pgwire-proxy/a@h"},
                                    {"client_encoding", "UTF8"}, {"server_version", "15.18"}});
  BOOST_TEST(told(reported, "app") == messages({{"application_name", "app"}, {"client_encoding", "UTF8"},
                                                {"server_version", "15.18"}, {"TimeZone", "UTC"}}));
  BOOST_TEST(*reported.applicationName() == "pgwire-proxy/a@h");
  // Asked again (the next client of a reused connection): the same, with that client's name.
  BOOST_TEST(told(reported, "other") == messages({{"application_name", "other"}, {"client_encoding", "UTF8"},
                                                  {"server_version", "15.18"}, {"TimeZone", "UTC"}}));
}

BOOST_AUTO_TEST_CASE(a_value_noted_after_a_reset_is_what_the_next_client_is_told) {
  auto reported = fromServer({{"application_name", "pgwire-proxy/a@h"}, {"DateStyle", "ISO, MDY"}});
  BOOST_TEST(told(reported, "x") == messages({{"application_name", "x"}, {"DateStyle", "ISO, MDY"}}));
  reported.note("DateStyle", "SQL, DMY");  // after the messages were encoded once
  reported.note("TimeZone", "Europe/Paris");  // one the server had not reported
  BOOST_TEST(told(reported, "x") == messages({{"application_name", "x"}, {"DateStyle", "SQL, DMY"},
                                              {"TimeZone", "Europe/Paris"}}));
  reported.note("application_name", "pgwire-proxy/b@h");  // the handover's SET: still the client's own
  BOOST_TEST(*reported.applicationName() == "pgwire-proxy/b@h");
  BOOST_TEST(told(reported, "y") == messages({{"application_name", "y"}, {"DateStyle", "SQL, DMY"},
                                              {"TimeZone", "Europe/Paris"}}));
  reported.note("not_reported_to_clients", "1");
  BOOST_TEST(told(reported, "y") == messages({{"application_name", "y"}, {"DateStyle", "SQL, DMY"},
                                              {"TimeZone", "Europe/Paris"}}));
}

BOOST_AUTO_TEST_CASE(a_server_that_reports_no_application_name_gets_none_sent) {
  const auto reported = fromServer({{"client_encoding", "UTF8"}});
  BOOST_TEST(!reported.applicationName());
  BOOST_TEST(told(reported, "app") == messages({{"client_encoding", "UTF8"}}));
}

BOOST_AUTO_TEST_SUITE_END()
