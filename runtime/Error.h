//===- Error.h - the one runtime error type ---------------------*- C++ -*-===//
//
// Every failure the runtime reports to a user (bad artifact, bad weights, bad flags, bad data)
// is a tnlm::Error whose message names the file, tensor or flag at fault. Tools catch it at
// the top, print it, and exit non-zero; nothing aborts on user input.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_ERROR_H
#define TNLM_RUNTIME_ERROR_H

#include <stdexcept>
#include <string>

namespace tnlm {

class Error : public std::runtime_error {
public:
  explicit Error(const std::string &message) : std::runtime_error(message) {}
};

} // namespace tnlm

#endif // TNLM_RUNTIME_ERROR_H
