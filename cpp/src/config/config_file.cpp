// Options from a file: Poco's properties or ini format, keys named as the command-line options.
#include "config/config_file.h"

#include <Poco/AutoPtr.h>
#include <Poco/Exception.h>
#include <Poco/Util/AbstractConfiguration.h>
#include <Poco/Util/IniFileConfiguration.h>
#include <Poco/Util/PropertyFileConfiguration.h>

#include <fstream>

namespace pgwire_proxy::config {
namespace {

void collect(const Poco::Util::AbstractConfiguration& config, const std::string& prefix,
             std::vector<std::pair<std::string, std::string>>& out) {
  Poco::Util::AbstractConfiguration::Keys keys;
  config.keys(prefix, keys);
  for (const auto& key : keys) {
    const std::string full = prefix.empty() ? key : prefix + "." + key;
    try {
      out.emplace_back(full, config.getRawString(full));
    } catch (const Poco::NotFoundException&) {
      // a section or a prefix of longer keys, not a value itself
    }
    collect(config, full, out);
  }
}

const OptionSpec* findSpec(const std::string& name) {
  for (const auto& spec : optionSpecs()) {
    if (name == spec.name) return &spec;
  }
  return nullptr;
}

}  // namespace

OptionValues readConfigFile(const std::string& path) {
  if (!std::ifstream(path)) throw ConfigError("config: cannot read \"" + path + "\"");
  std::vector<std::pair<std::string, std::string>> entries;
  try {
    if (path.size() >= 4 && path.compare(path.size() - 4, 4, ".ini") == 0) {
      Poco::AutoPtr<Poco::Util::IniFileConfiguration> ini(new Poco::Util::IniFileConfiguration(path));
      collect(*ini, "", entries);
    } else {
      Poco::AutoPtr<Poco::Util::PropertyFileConfiguration> properties(
          new Poco::Util::PropertyFileConfiguration(path));
      collect(*properties, "", entries);
    }
  } catch (const Poco::Exception& error) {
    throw ConfigError("config: cannot parse \"" + path + "\": " + error.displayText());
  }
  OptionValues values;
  for (auto& [key, value] : entries) {
    std::string name = key;
    if (name.starts_with("pgwire-proxy.")) name = name.substr(13);  // the optional ini section
    std::string base = name.substr(0, name.find('.'));
    const OptionSpec* spec = findSpec(base);
    if (spec == nullptr || base == "config") {
      throw ConfigError("config: unknown key \"" + key + "\" in \"" + path + "\"");
    }
    if (base != name && !spec->repeatable) {
      throw ConfigError("config: key \"" + key + "\" in \"" + path + "\": " + base + " takes one value");
    }
    values[base].push_back(value);
  }
  return values;
}

OptionValues mergeOptions(const OptionValues& file, const OptionValues& commandLine) {
  OptionValues merged = file;
  for (const auto& [name, list] : commandLine) merged[name] = list;
  return merged;
}

}  // namespace pgwire_proxy::config
