// pgwire_proxy._core: a thin pybind11 shell over the core Server, its stats and its query capture.
// The GIL is released while the server starts and stops; no Python code ever runs on proxy threads.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <memory>

#include "config/options.h"
#include "config/server_config.h"
#include "faults/fault_rules.h"
#include "observability/session_observer.h"
#include "observability/stats.h"
#include "server/config_loader.h"
#include "server/server.h"

namespace py = pybind11;
using namespace pgwire_proxy;

namespace {

double epochSeconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

// The Python API's vocabulary: ok, error, cancelled (user cancel or timeout), limit (rows or bytes), denied.
std::string_view coarseOutcome(observability::QueryOutcome outcome) {
  using observability::QueryOutcome;
  switch (outcome) {
    case QueryOutcome::kTimeout: return "cancelled";
    case QueryOutcome::kLimitRows:
    case QueryOutcome::kLimitBytes: return "limit";
    default: return observability::outcomeName(outcome);
  }
}

py::dict toDict(const observability::QueryRecord& r) {
  py::dict d;
  d["sql"] = r.sql;
  d["session_id"] = r.sessionId;
  d["started_at"] = epochSeconds(r.started);
  d["duration"] = r.seconds;
  d["rows"] = r.rows;
  d["bytes"] = r.bytes;
  d["command_tag"] = r.commandTag.empty() ? py::object(py::none()) : py::object(py::str(r.commandTag));
  d["sqlstate"] = r.sqlstate.empty() ? py::object(py::none()) : py::object(py::str(r.sqlstate));
  d["outcome"] = std::string(coarseOutcome(r.outcome));
  d["injected"] = r.injected.empty() ? py::object(py::none()) : py::object(py::str(r.injected));
  return d;
}

using Counter = std::map<std::string, std::uint64_t>;

// `now` less `base`, key by key; a key counted only before the baseline is left out, so that after
// resetStats() the maps look as a fresh proxy's do (keys a fresh proxy lists with 0 stay).
Counter since(const Counter& now, const Counter& base) {
  Counter out;
  for (const auto& [key, value] : now) {
    const auto it = base.find(key);
    const std::uint64_t before = it == base.end() ? 0 : it->second;
    if (value == before && before != 0) continue;
    out[key] = value - before;
  }
  return out;
}

py::list toList(const std::vector<observability::QueryRecord>& records) {
  py::list list;
  for (const auto& r : records) list.append(toDict(r));
  return list;
}

// One proxy: its config, its server, and the observers that count and capture for Python.
class Proxy {
 public:
  Proxy(const config::OptionValues& options, std::size_t captureSize, const std::string& captureBytes)
      : stats_(std::make_shared<observability::StatsCollector>(
            captureSize, static_cast<std::size_t>(config::parseSize(captureBytes, "capture_bytes")))),
        server_(std::make_unique<server::Server>(server::loadConfig(options), stats_)) {}

  void start() {
    if (started_) throw std::runtime_error("the proxy was already started (a Proxy starts once; make a new one)");
    py::gil_scoped_release release;
    server_->start();
    started_ = true;
  }

  void stop(double timeoutSeconds) {
    py::gil_scoped_release release;
    server_->stop(std::chrono::milliseconds(static_cast<std::int64_t>(timeoutSeconds * 1000)));
  }

  [[nodiscard]] bool running() const { return started_ && !server_->stopped(); }
  [[nodiscard]] std::uint16_t port() const { return server_->port(); }
  [[nodiscard]] std::string host() const { return server_->host(); }

  // The same counters the metrics endpoint serves, plus errors by full SQLSTATE and breaches by limit;
  // counted since the start or the last resetStats() (active_sessions is the live number).
  py::dict stats() const {
    const auto c = server_->metrics().counts();
    const Counter cancels = since(c.cancelsByResult, base_.counts.cancelsByResult);
    std::uint64_t cancelRequests = 0;
    for (const auto& [result, n] : cancels) cancelRequests += n;
    const auto matched = cancels.find("matched");
    py::dict d;
    d["connections_total"] = c.connectionsAccepted - base_.counts.connectionsAccepted;
    d["connections_rejected"] = c.connectionsRejected - base_.counts.connectionsRejected;
    d["active_sessions"] = c.connectionsActive;
    d["queries_total"] = c.queries - base_.counts.queries;
    d["rows_total"] = c.rows - base_.counts.rows;
    d["bytes_total"] = c.bytes - base_.counts.bytes;
    d["cancel_requests"] = cancelRequests;
    d["cancels_matched"] = matched == cancels.end() ? 0 : matched->second;
    d["cancels_by_result"] = cancels;
    d["errors_by_sqlstate"] = since(stats_->errorsBySqlstate(), base_.errorsBySqlstate);
    d["errors_by_class"] = since(c.errorsByClass, base_.counts.errorsByClass);
    d["limit_breaches"] = since(stats_->guardrailsByLimit(), base_.guardrailsByLimit);
    d["faults_injected"] = since(c.faultsByAction, base_.counts.faultsByAction);
    d["auth_failures"] = since(c.authFailuresByReason, base_.counts.authFailuresByReason);
    d["queries_by_outcome"] = since(c.queriesByOutcome, base_.counts.queriesByOutcome);
    return d;
  }

  // stats() counts from here on (the metrics endpoint's counters, monotonic, are not touched).
  void resetStats() {
    base_.counts = server_->metrics().counts();
    base_.errorsBySqlstate = stats_->errorsBySqlstate();
    base_.guardrailsByLimit = stats_->guardrailsByLimit();
  }

  // Fault rules: `settings` are the --faults file's key=value pairs (match, action, sqlstate ...).
  std::uint64_t addFault(const std::map<std::string, std::string>& settings) {
    faults::RuleSpec spec;
    try {
      for (const auto& [key, value] : settings) faults::applySetting(spec, key, value);
      return server_->faults().add(std::move(spec));
    } catch (const config::ConfigError& error) {
      throw py::value_error(error.what());
    }
  }
  bool removeFault(std::uint64_t id) { return server_->faults().remove(id); }
  void clearFaults() { server_->faults().clear(); }
  py::list faultList() const {
    py::list list;
    for (const auto& rule : server_->faults().rules()) {
      py::dict d;
      d["id"] = rule->id();
      d["action"] = std::string(faults::actionName(rule->spec().action));
      d["when"] = std::string(faults::whenName(rule->spec().when));
      d["match"] = rule->spec().pattern;
      d["matches"] = rule->matches();
      d["hits"] = rule->hits();
      list.append(d);
    }
    return list;
  }
  py::object faultCounts(std::uint64_t id) const {
    for (const auto& rule : server_->faults().rules()) {
      if (rule->id() == id) return py::make_tuple(rule->matches(), rule->hits());
    }
    return py::none();
  }

  std::uint16_t metricsPort() const { return server_->metricsPort(); }
  std::string metricsText() const { return server_->metrics().render(); }

  py::list sessions() const {
    py::list list;
    for (const auto& s : stats_->sessions()) {
      py::dict d;
      d["id"] = s.id;
      d["backend_pid"] = s.processId;
      d["client_address"] = s.clientAddress;
      d["application_name"] = s.applicationName;
      d["state"] = s.state;
      d["connected_at"] = epochSeconds(s.connectedAt);
      d["queries"] = s.queries;
      list.append(d);
    }
    return list;
  }

  py::list queries() const { return toList(stats_->queries()); }
  py::list queriesSince(std::uint64_t sequence) const { return toList(stats_->queriesSince(sequence)); }
  std::uint64_t captureSequence() const { return stats_->captureSequence(); }
  void clearQueries() { stats_->clearQueries(); }
  std::size_t capturedBytes() const { return stats_->capturedBytes(); }

 private:
  std::shared_ptr<observability::StatsCollector> stats_;
  std::unique_ptr<server::Server> server_;
  bool started_ = false;
  // The counts at the last resetStats() (zeros before any); only touched with the GIL held.
  struct Baseline {
    observability::Metrics::Counts counts{};
    Counter errorsBySqlstate, guardrailsByLimit;
  } base_;
};

py::list optionSpecs() {
  py::list list;
  for (const auto& spec : config::optionSpecs()) {
    py::dict d;
    d["name"] = spec.name;
    d["takes_value"] = spec.argument != nullptr;
    d["repeatable"] = spec.repeatable;
    d["help"] = spec.help;
    list.append(d);
  }
  return list;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "The pgwire-proxy core, in-process. Use pgwire_proxy.Proxy rather than this module.";
  m.def("option_specs", &optionSpecs, "Every option of the proxy: name (kebab-case), takes_value, repeatable, help.");
  py::class_<Proxy>(m, "Proxy")
      .def(py::init<const config::OptionValues&, std::size_t, const std::string&>(), py::arg("options"),
           py::arg("capture_size"), py::arg("capture_bytes"),
           "Validates the options (kebab-case names to lists of strings); raises ValueError naming a bad one.")
      .def("start", &Proxy::start, "Binds and starts accepting; returns once the socket listens.")
      .def("stop", &Proxy::stop, py::arg("timeout"),
           "Stops accepting and ends every session, waiting up to `timeout` seconds before cutting sockets.")
      .def_property_readonly("running", &Proxy::running)
      .def_property_readonly("port", &Proxy::port)
      .def_property_readonly("host", &Proxy::host)
      .def_property_readonly("metrics_port", &Proxy::metricsPort)
      .def("metrics_text", &Proxy::metricsText, "The Prometheus exposition the metrics endpoint serves.")
      .def("stats", &Proxy::stats, "The counters since start or the last reset_stats().")
      .def("reset_stats", &Proxy::resetStats, "stats() counts from now on (the metrics' counters are not reset).")
      .def("sessions", &Proxy::sessions)
      .def("queries", &Proxy::queries)
      .def("queries_since", &Proxy::queriesSince, py::arg("sequence"))
      .def("capture_sequence", &Proxy::captureSequence)
      .def("clear_queries", &Proxy::clearQueries)
      .def("captured_bytes", &Proxy::capturedBytes, "The bytes the kept records' texts hold (what capture_bytes bounds).")
      .def("add_fault", &Proxy::addFault, py::arg("settings"),
           "Adds a fault rule from --faults-file settings; returns its id. ValueError for a bad rule.")
      .def("remove_fault", &Proxy::removeFault, py::arg("id"))
      .def("clear_faults", &Proxy::clearFaults)
      .def("faults", &Proxy::faultList)
      .def("fault_counts", &Proxy::faultCounts, py::arg("id"),
           "(matches, hits) of a rule still in force, None once removed.");
}
