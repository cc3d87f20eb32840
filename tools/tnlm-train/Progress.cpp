//===- Progress.cpp - tnlm-train's progress output ------------------------===//
#include "tools/tnlm-train/Progress.h"

#include <cmath>
#include <cstdio>

#include <unistd.h>

namespace tnlm::train {

std::string formatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0)
    return "?";
  long long s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  return buf;
}

Progress::Progress(bool quiet, int64_t every)
    : quiet_(quiet), tty_(::isatty(STDERR_FILENO)), every_(every) {}

void Progress::update(int64_t step, int64_t steps, double loss, double valLoss, bool evaluated,
                      double lr, double tokensPerSecond, double etaSeconds) {
  if (quiet_)
    return;
  char val[32] = "";
  if (!std::isnan(valLoss))
    std::snprintf(val, sizeof val, " val %.4f", valLoss);
  char tps[32];
  if (tokensPerSecond >= 1e6)
    std::snprintf(tps, sizeof tps, "%.2fM", tokensPerSecond / 1e6);
  else if (tokensPerSecond >= 1e3)
    std::snprintf(tps, sizeof tps, "%.1fk", tokensPerSecond / 1e3);
  else
    std::snprintf(tps, sizeof tps, "%.0f", tokensPerSecond);
  char line[256];
  if (tty_) {
    const int width = 20;
    int filled = static_cast<int>(width * static_cast<double>(step) / std::max<int64_t>(1, steps));
    std::string bar(filled, '#');
    bar += std::string(width - filled, '.');
    std::snprintf(line, sizeof line,
                  "\r[%s] step %lld/%lld loss %.4f%s lr %.2e %s tok/s ETA %s\033[K", bar.c_str(),
                  static_cast<long long>(step), static_cast<long long>(steps), loss, val, lr, tps,
                  formatDuration(etaSeconds).c_str());
    std::fputs(line, stderr);
    std::fflush(stderr);
    open_ = true;
    return;
  }
  if (step % every_ != 0 && step != steps && !evaluated)
    return;
  std::snprintf(line, sizeof line, "step %lld/%lld loss %.4f%s lr %.2e %s tok/s ETA %s\n",
                static_cast<long long>(step), static_cast<long long>(steps), loss, val, lr, tps,
                formatDuration(etaSeconds).c_str());
  std::fputs(line, stderr);
}

void Progress::note(const std::string &message) {
  if (quiet_)
    return;
  if (open_)
    std::fputs("\n", stderr);
  std::fprintf(stderr, "%s\n", message.c_str());
  open_ = false;
}

void Progress::finish() {
  if (open_)
    std::fputs("\n", stderr);
  open_ = false;
}

} // namespace tnlm::train
