//===- Options.cpp - a small command-line parser for runtime tools --------===//
#include "tools/tnlm-run/Options.h"

#include "runtime/Error.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace tnlm {

void Options::flag(const std::string &name, const std::string &help) {
  decls_.push_back({name, "", help, false});
}

void Options::value(const std::string &name, const std::string &valueName,
                    const std::string &help) {
  decls_.push_back({name, valueName, help, true});
}

void Options::repeated(const std::string &name, const std::string &valueName,
                       const std::string &help) {
  decls_.push_back({name, valueName, help, true, true});
}

std::vector<std::string> Options::all(const std::string &name) const {
  auto it = repeatedValues_.find(name);
  return it == repeatedValues_.end() ? std::vector<std::string>() : it->second;
}

const Options::Decl *Options::find(const std::string &name) const {
  for (const Decl &d : decls_)
    if (d.name == name)
      return &d;
  return nullptr;
}

bool Options::parse(int argc, char **argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      printHelp();
      return false;
    }
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    bool hasValue = false;
    size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      hasValue = true;
    }
    const Decl *d = find(name);
    if (!d)
      throw Error("unknown option '--" + name + "' (see " + tool_ + " --help)");
    if (d->takesValue && !hasValue) {
      if (i + 1 >= argc)
        throw Error("option '--" + name + "' needs a value: --" + name + "=" + d->valueName);
      value = argv[++i];
    } else if (!d->takesValue && hasValue) {
      throw Error("option '--" + name + "' takes no value");
    }
    if (given_.count(name) && !d->repeats)
      throw Error("option '--" + name + "' given twice");
    given_[name] = value;
    if (d->repeats)
      repeatedValues_[name].push_back(value);
  }
  return true;
}

std::string Options::get(const std::string &name, const std::string &dflt) const {
  auto it = given_.find(name);
  return it == given_.end() ? dflt : it->second;
}

int64_t parseIntegerFlag(const std::string &name, const std::string &text, int64_t min,
                         int64_t max) {
  char *end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || v < min || v > max)
    throw Error("option '--" + name + "': expected an integer in [" + std::to_string(min) + ", " +
                std::to_string(max) + "], got '" + text + "'");
  return v;
}

double parseNumberFlag(const std::string &name, const std::string &text, double min,
                       double max) {
  auto shortNumber = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", v);
    return std::string(buf);
  };
  char *end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v) || v < min ||
      v > max)
    throw Error("option '--" + name + "': expected " +
                (min < -1e29 && max > 1e29
                     ? std::string("a finite number")
                     : "a number in [" + shortNumber(min) + ", " + shortNumber(max) + "]") +
                ", got '" + text + "'");
  return v;
}

int64_t Options::getInt(const std::string &name, int64_t dflt, int64_t min, int64_t max) const {
  auto it = given_.find(name);
  return it == given_.end() ? dflt : parseIntegerFlag(name, it->second, min, max);
}

double Options::getDouble(const std::string &name, double dflt, double min, double max) const {
  auto it = given_.find(name);
  return it == given_.end() ? dflt : parseNumberFlag(name, it->second, min, max);
}

void Options::printHelp() const {
  std::printf("USAGE: %s\n\nOPTIONS:\n", usage_.c_str());
  for (const Decl &d : decls_) {
    std::string left = "--" + d.name + (d.takesValue ? "=<" + d.valueName + ">" : "") +
                       (d.repeats ? " ..." : "");
    std::printf("  %-26s %s\n", left.c_str(), d.help.c_str());
  }
  std::printf("  %-26s %s\n", "--help", "Print this help");
}

} // namespace tnlm
