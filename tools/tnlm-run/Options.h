//===- Options.h - a small command-line parser for runtime tools -*- C++ -*-===//
//
// The runtime links no LLVM, so its tools cannot use llvm::cl. This parser takes
// `--name=value`, `--name value` and `--flag`; every option is declared with help text,
// unknown options and missing values are errors naming the flag.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TOOLS_OPTIONS_H
#define TNLM_TOOLS_OPTIONS_H

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tnlm {

/// The value `text` of flag --name as an integer / a finite number in [min, max] (strtoll /
/// strtod, the whole text, no overflow); else tnlm::Error naming the flag and the range.
int64_t parseIntegerFlag(const std::string &name, const std::string &text, int64_t min,
                         int64_t max);
double parseNumberFlag(const std::string &name, const std::string &text, double min, double max);

class Options {
public:
  Options(std::string tool, std::string usage) : tool_(std::move(tool)), usage_(std::move(usage)) {}

  void flag(const std::string &name, const std::string &help);
  void value(const std::string &name, const std::string &valueName, const std::string &help);
  /// A value that may be given several times (all() returns them in order).
  void repeated(const std::string &name, const std::string &valueName, const std::string &help);

  /// Parses argv; throws tnlm::Error on an unknown option or a missing value. Returns false
  /// if --help was given (help already printed).
  bool parse(int argc, char **argv);

  bool has(const std::string &name) const { return given_.count(name) != 0; }
  std::string get(const std::string &name, const std::string &dflt = "") const;
  /// Every value of a repeated option, in the order given.
  std::vector<std::string> all(const std::string &name) const;
  /// Integer value of a flag; throws tnlm::Error naming the flag if it is not an integer in
  /// [min, max].
  int64_t getInt(const std::string &name, int64_t dflt, int64_t min, int64_t max) const;
  /// Floating-point value of a flag; throws tnlm::Error naming the flag if it is not a
  /// finite number in [min, max].
  double getDouble(const std::string &name, double dflt, double min, double max) const;
  const std::vector<std::string> &positional() const { return positional_; }
  void printHelp() const;

private:
  struct Decl {
    std::string name, valueName, help;
    bool takesValue;
    bool repeats = false;
  };
  std::string tool_, usage_;
  std::vector<Decl> decls_;
  std::map<std::string, std::string> given_;
  std::map<std::string, std::vector<std::string>> repeatedValues_;
  std::vector<std::string> positional_;
  const Decl *find(const std::string &name) const;
};

} // namespace tnlm

#endif // TNLM_TOOLS_OPTIONS_H
