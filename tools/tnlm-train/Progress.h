//===- Progress.h - tnlm-train's progress output ----------------*- C++ -*-===//
//
// On a terminal (stderr is a tty): one live line redrawn every step (step, loss, validation
// loss, lr, tokens/s, ETA). Otherwise: a plain line every `every` steps and at the end, so
// logs stay readable.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TOOLS_TNLM_TRAIN_PROGRESS_H
#define TNLM_TOOLS_TNLM_TRAIN_PROGRESS_H

#include <cstdint>
#include <string>

namespace tnlm::train {

class Progress {
public:
  Progress(bool quiet, int64_t every);
  /// `evaluated`: valLoss was computed at this step (always printed without a terminal).
  void update(int64_t step, int64_t steps, double loss, double valLoss, bool evaluated, double lr,
              double tokensPerSecond, double etaSeconds);
  /// A message on its own line (the live line is redrawn after it).
  void note(const std::string &message);
  /// Ends the live line.
  void finish();

private:
  bool quiet_, tty_;
  int64_t every_;
  bool open_ = false;
};

/// "2:05" / "1:02:03" for seconds.
std::string formatDuration(double seconds);

} // namespace tnlm::train

#endif // TNLM_TOOLS_TNLM_TRAIN_PROGRESS_H
