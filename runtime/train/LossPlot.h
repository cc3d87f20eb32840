//===- LossPlot.h - loss-curve PNGs for tnlm-train ---------------*- C++ -*-===//
//
// Draws train and validation loss against the step with gnuplot (Debian: gnuplot-nox), run as
// a subprocess: the points and a script go to temporary files next to the PNG, gnuplot writes
// "<png>.tmp", and that is renamed over the PNG only when complete, so a viewer never sees a
// half-written image. A plot is a side product of training: nothing here throws on a missing
// gnuplot or a failed drawing; the result says what happened instead.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_TRAIN_LOSSPLOT_H
#define TNLM_RUNTIME_TRAIN_LOSSPLOT_H

#include <cstdint>
#include <string>
#include <vector>

namespace tnlm::train {

struct LossPoint {
  int64_t step = 0;
  double loss = 0.0;
};

struct LossPlotOptions {
  std::string title = "loss";
  /// A program name looked up in PATH, or a path.
  std::string gnuplot = "gnuplot";
  bool logScaleY = false;
  int width = 1000;
  int height = 600;
  /// gnuplot is killed after this long (the drawing is then reported as failed).
  double timeoutSeconds = 30.0;
};

enum class PlotStatus {
  Drawn,
  NoGnuplot, // the program was not found: install gnuplot-nox
  NoPoints,  // no finite loss to draw yet
  Failed,    // gnuplot ran and failed, or a temporary file could not be written
};

struct PlotResult {
  PlotStatus status = PlotStatus::Failed;
  /// Empty when drawn; otherwise one line starting "not drawn: ", e.g. "not drawn: gnuplot
  /// not found (apt-get install gnuplot-nox)".
  std::string message;
  /// Set by LossCurve::write: the status or message differs from the previous write's, so the
  /// caller prints `message` (when not empty) only then instead of at every write.
  bool changed = true;

  bool drawn() const { return status == PlotStatus::Drawn; }
};

/// The path gnuplot would be started from ("" when absent): `program` itself when it holds a
/// '/', else the first executable of that name in PATH.
std::string findGnuplot(const std::string &program = "gnuplot");

/// Draws `train` (a line) and `val` (a line with points) to pngPath. Non-finite losses are
/// left out (a diverged step would break the axis range). Never throws on I/O or gnuplot
/// failures.
PlotResult writeLossPlot(const std::string &pngPath, const std::vector<LossPoint> &train,
                         const std::vector<LossPoint> &val, const LossPlotOptions &options = {});

/// A run's loss history and its PNG, redrawn on demand:
///   LossCurve curve("run/loss.png");
///   curve.addTrain(step, loss); ...
///   PlotResult r = curve.write();
///   if (r.changed && !r.message.empty()) log(r.message);  // printed once, not every eval
class LossCurve {
public:
  explicit LossCurve(std::string pngPath, LossPlotOptions options = {});

  void addTrain(int64_t step, double loss) { train_.push_back({step, loss}); }
  void addVal(int64_t step, double loss) { val_.push_back({step, loss}); }
  const std::vector<LossPoint> &train() const { return train_; }
  const std::vector<LossPoint> &val() const { return val_; }
  const std::string &path() const { return path_; }

  /// Redraws the PNG with every point so far (see writeLossPlot); `changed` compares with the
  /// previous call (true on the first).
  PlotResult write();

private:
  std::string path_;
  LossPlotOptions options_;
  std::vector<LossPoint> train_, val_;
  bool written_ = false;
  PlotStatus lastStatus_ = PlotStatus::Drawn;
  std::string lastMessage_;
};

} // namespace tnlm::train

#endif // TNLM_RUNTIME_TRAIN_LOSSPLOT_H
