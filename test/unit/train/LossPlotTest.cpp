//===- LossPlotTest.cpp - loss-curve PNGs through gnuplot ------------------===//
#include "runtime/train/LossPlot.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

using namespace tnlm::train;
namespace fs = std::filesystem;

namespace {

constexpr const char *kNotFound = "not drawn: gnuplot not found (apt-get install gnuplot-nox)";

class LossPlot : public ::testing::Test {
protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "tnlm-lossplot-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir = pattern;
  }
  void TearDown() override { fs::remove_all(dir); }

  // Everything in the folder, to check that no temporary file is left behind.
  std::vector<std::string> files() const {
    std::vector<std::string> out;
    for (const auto &e : fs::directory_iterator(dir))
      out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

  fs::path dir;
};

// A curve like a real run's: a noisy decay for train, a smooth one evaluated every 50 steps.
void fakeRun(std::vector<LossPoint> &train, std::vector<LossPoint> &val) {
  for (int step = 1; step <= 500; ++step)
    train.push_back({step, 1.2 + 4.3 * std::exp(-step / 80.0) + 0.08 * std::sin(step * 1.7)});
  for (int step = 50; step <= 500; step += 50)
    val.push_back({step, 1.3 + 4.2 * std::exp(-step / 90.0)});
}

bool startsWithPngSignature(const fs::path &file) {
  static const unsigned char kSig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::ifstream in(file, std::ios::binary);
  char buf[8];
  return in.read(buf, 8) && std::memcmp(buf, kSig, 8) == 0;
}

TEST_F(LossPlot, DrawsAPngOrSaysWhyNot) {
  std::vector<LossPoint> train, val;
  fakeRun(train, val);
  train.push_back({501, std::nan("")});    // left out, not an error
  fs::path png = dir / "loss curve's.png"; // a space and a quote in the path
  LossPlotOptions options;
  options.title = "tiny: byte model, it's training";
  PlotResult r = writeLossPlot(png.string(), train, val, options);
  if (findGnuplot().empty()) {
    // No gnuplot on this machine: the clear status, no file, no exception.
    EXPECT_EQ(r.status, PlotStatus::NoGnuplot);
    EXPECT_EQ(r.message, kNotFound);
    EXPECT_TRUE(files().empty());
    return;
  }
  ASSERT_TRUE(r.drawn()) << r.message;
  EXPECT_TRUE(r.message.empty());
  EXPECT_TRUE(startsWithPngSignature(png));
  EXPECT_GT(fs::file_size(png), 2000u);
  EXPECT_EQ(files(), std::vector<std::string>{"loss curve's.png"});
  if (const char *keep = std::getenv("TNLM_KEEP_LOSS_PNG")) // to look at it
    fs::copy_file(png, keep, fs::copy_options::overwrite_existing);
}

TEST_F(LossPlot, TrainOnlyAndRedrawReplacesThePng) {
  fs::path png = dir / "loss.png";
  std::vector<LossPoint> train = {{1, 5.5}, {2, 5.1}, {3, 4.0}};
  if (findGnuplot().empty()) {
    EXPECT_EQ(writeLossPlot(png.string(), train, {}).message, kNotFound);
    return;
  }
  PlotResult r = writeLossPlot(png.string(), train, {});
  ASSERT_TRUE(r.drawn()) << r.message;
  auto first = fs::file_size(png);
  r = writeLossPlot(png.string(), {}, {{10, 3.0}}); // validation only, one point
  ASSERT_TRUE(r.drawn()) << r.message;
  EXPECT_TRUE(startsWithPngSignature(png));
  EXPECT_NE(fs::file_size(png), first);
  EXPECT_EQ(files(), std::vector<std::string>{"loss.png"});
}

TEST_F(LossPlot, MissingGnuplotIsAStatusNotAnException) {
  LossPlotOptions options;
  options.gnuplot = (dir / "no-such-gnuplot").string();
  PlotResult r = writeLossPlot((dir / "loss.png").string(), {{1, 2.0}}, {}, options);
  EXPECT_EQ(r.status, PlotStatus::NoGnuplot);
  EXPECT_EQ(r.message, "not drawn: gnuplot not found at '" + options.gnuplot +
                           "' (apt-get install gnuplot-nox)");
  EXPECT_TRUE(files().empty());
  options.gnuplot = "tnlm-no-such-program";
  EXPECT_EQ(findGnuplot(options.gnuplot), "");
  EXPECT_EQ(writeLossPlot((dir / "loss.png").string(), {{1, 2.0}}, {}, options).status,
            PlotStatus::NoGnuplot);
}

TEST_F(LossPlot, NoFinitePointsIsNotDrawn) {
  PlotResult r = writeLossPlot((dir / "loss.png").string(), {{1, std::nan("")}}, {});
  EXPECT_EQ(r.status, PlotStatus::NoPoints);
  EXPECT_EQ(r.message.rfind("not drawn: ", 0), 0u) << r.message;
  EXPECT_TRUE(files().empty());
}

TEST_F(LossPlot, FailureNamesThePngAndLeavesNoTemporaries) {
  // The folder does not exist, so the data file cannot be written.
  std::string png = (dir / "missing" / "loss.png").string();
  LossPlotOptions options;
  options.gnuplot = "/bin/sh"; // never started: writing the data fails first
  PlotResult r = writeLossPlot(png, {{1, 2.0}}, {}, options);
  EXPECT_EQ(r.status, PlotStatus::Failed);
  EXPECT_NE(r.message.find(png), std::string::npos) << r.message;
  EXPECT_TRUE(files().empty());
}

TEST_F(LossPlot, FailingOrHangingProgramIsReported) {
  // Stand-ins for a broken gnuplot: one that fails with a message, one that never finishes.
  auto script = [&](const std::string &name, const std::string &body) {
    fs::path p = dir / name;
    std::ofstream(p) << "#!/bin/sh\n" << body << "\n";
    fs::permissions(p, fs::perms::owner_all);
    return p.string();
  };
  LossPlotOptions options;
  options.gnuplot = script("failing", "echo 'line 7: no such terminal' >&2\nexit 3");
  options.timeoutSeconds = 0.3;
  std::string png = (dir / "loss.png").string();
  PlotResult r = writeLossPlot(png, {{1, 2.0}}, {}, options);
  EXPECT_EQ(r.status, PlotStatus::Failed);
  EXPECT_NE(r.message.find("exited with status 3: line 7: no such terminal"), std::string::npos)
      << r.message;
  options.gnuplot = script("hanging", "exec /bin/sleep 30");
  r = writeLossPlot(png, {{1, 2.0}}, {}, options);
  EXPECT_EQ(r.status, PlotStatus::Failed);
  EXPECT_NE(r.message.find("killed"), std::string::npos) << r.message;
  EXPECT_EQ(files(), (std::vector<std::string>{"failing", "hanging"}));
}

TEST_F(LossPlot, CurveReportsAStatusOnceUntilItChanges) {
  LossPlotOptions options;
  options.gnuplot = (dir / "no-such-gnuplot").string();
  LossCurve curve((dir / "loss.png").string(), options);
  PlotResult r = curve.write();
  EXPECT_EQ(r.status, PlotStatus::NoPoints);
  EXPECT_TRUE(r.changed);
  curve.addTrain(1, 5.0);
  curve.addVal(1, 5.2);
  r = curve.write();
  EXPECT_EQ(r.status, PlotStatus::NoGnuplot);
  EXPECT_TRUE(r.changed); // print this one
  curve.addTrain(2, 4.0);
  r = curve.write();
  EXPECT_EQ(r.status, PlotStatus::NoGnuplot);
  EXPECT_FALSE(r.changed); // already printed
  EXPECT_EQ(curve.train().size(), 2u);
  EXPECT_EQ(curve.val().size(), 1u);
}

} // namespace
