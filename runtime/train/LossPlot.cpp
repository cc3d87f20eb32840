//===- LossPlot.cpp - loss-curve PNGs for tnlm-train ----------------------===//
#include "runtime/train/LossPlot.h"

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <signal.h>
#include <spawn.h>
#include <sstream>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char **environ;

namespace tnlm::train {

namespace {

constexpr const char *kInstallHint = "(apt-get install gnuplot-nox)";

bool isExecutableFile(const std::string &path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// A gnuplot single-quoted string: no escapes inside, '' stands for one quote.
std::string gpString(const std::string &s) {
  std::string out = "'";
  for (char c : s)
    out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

PlotResult result(PlotStatus status, std::string message) {
  PlotResult r;
  r.status = status;
  r.message = std::move(message);
  return r;
}

std::vector<LossPoint> finite(const std::vector<LossPoint> &points) {
  std::vector<LossPoint> out;
  for (const LossPoint &p : points)
    if (std::isfinite(p.loss))
      out.push_back(p);
  return out;
}

// The last non-empty line of gnuplot's output, to say why it failed.
std::string lastLine(const std::string &file) {
  std::ifstream in(file);
  std::string line, last;
  while (std::getline(in, line))
    if (line.find_first_not_of(" \t\r") != std::string::npos)
      last = line;
  return last;
}

bool hasPngSignature(const std::string &file) {
  static const unsigned char kSig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::ifstream in(file, std::ios::binary);
  char buf[8];
  return in.read(buf, 8) && std::memcmp(buf, kSig, 8) == 0;
}

// Runs `program script` with stdin from /dev/null and stdout + stderr into logFile. Returns the
// exit status, or -1 with `why` set when it could not be started, was killed or timed out.
int runGnuplot(const std::string &program, const std::string &script, const std::string &logFile,
               double timeoutSeconds, std::string &why) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, logFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char *> argv = {const_cast<char *>(program.c_str()),
                              const_cast<char *>(script.c_str()), nullptr};
  pid_t pid = 0;
  int rc = posix_spawn(&pid, program.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    why = "cannot start " + program + ": " + std::strerror(rc);
    return -1;
  }
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::milliseconds(int64_t(timeoutSeconds * 1000.0));
  int status = 0;
  for (;;) {
    pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid)
      break;
    if (done < 0 && errno != EINTR) {
      why = std::string("waiting for gnuplot: ") + std::strerror(errno);
      return -1;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      char limit[32];
      std::snprintf(limit, sizeof limit, "%g", timeoutSeconds);
      why = std::string("gnuplot took longer than ") + limit + " s (killed)";
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (WIFEXITED(status))
    return WEXITSTATUS(status);
  why = "gnuplot was killed by signal " + std::to_string(WTERMSIG(status));
  return -1;
}

void writePoints(std::ostream &out, const std::vector<LossPoint> &points) {
  char buf[64];
  for (const LossPoint &p : points) {
    std::snprintf(buf, sizeof buf, "%lld %.9g\n", static_cast<long long>(p.step), p.loss);
    out << buf;
  }
}

} // namespace

std::string findGnuplot(const std::string &program) {
  if (program.empty())
    return "";
  if (program.find('/') != std::string::npos)
    return isExecutableFile(program) ? program : "";
  const char *path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + program;
    if (isExecutableFile(candidate))
      return candidate;
  }
  return "";
}

PlotResult writeLossPlot(const std::string &pngPath, const std::vector<LossPoint> &trainIn,
                         const std::vector<LossPoint> &valIn, const LossPlotOptions &options) {
  std::vector<LossPoint> train = finite(trainIn), val = finite(valIn);
  if (train.empty() && val.empty())
    return result(PlotStatus::NoPoints, "not drawn: no finite loss values yet");
  std::string program = findGnuplot(options.gnuplot);
  if (program.empty())
    return result(PlotStatus::NoGnuplot,
                  options.gnuplot == "gnuplot"
                      ? std::string("not drawn: gnuplot not found ") + kInstallHint
                      : "not drawn: gnuplot not found at '" + options.gnuplot + "' " +
                            kInstallHint);

  const std::string dataFile = pngPath + ".data.tmp";
  const std::string scriptFile = pngPath + ".gp.tmp";
  const std::string logFile = pngPath + ".log.tmp";
  const std::string pngTmp = pngPath + ".tmp";
  auto cleanUp = [&] {
    for (const std::string *f : {&dataFile, &scriptFile, &logFile, &pngTmp})
      std::remove(f->c_str());
  };
  auto fail = [&](const std::string &why) {
    cleanUp();
    return result(PlotStatus::Failed, "not drawn: " + pngPath + ": " + why);
  };

  // The data: one block per non-empty series (train, then validation), separated by two blank
  // lines; gnuplot numbers the blocks from 0 ("index i").
  {
    std::ofstream data(dataFile);
    data << "# step loss\n";
    writePoints(data, train);
    if (!train.empty() && !val.empty())
      data << "\n\n";
    writePoints(data, val);
    data.flush();
    if (!data)
      return fail("cannot write " + dataFile);
  }
  {
    std::ofstream gp(scriptFile);
    std::string size = std::to_string(options.width) + "," + std::to_string(options.height);
    // pngcairo draws anti-aliased lines; the libgd png terminal is the fallback.
    gp << "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
       << "  set terminal pngcairo size " << size << " font 'sans,11'\n"
       << "} else {\n"
       << "  set terminal png size " << size << "\n"
       << "}\n"
       << "set output " << gpString(pngTmp) << "\n"
       << "set title " << gpString(options.title) << " noenhanced\n"
       << "set xlabel 'step'\nset ylabel 'loss'\n"
       << "set grid\nset key top right\n";
    if (options.logScaleY)
      gp << "set logscale y\n";
    std::vector<std::string> curves;
    if (!train.empty())
      curves.push_back(gpString(dataFile) + " index 0 using 1:2 with " +
                       (train.size() == 1 ? "points pt 7" : "lines") + // one point: no line
                       " lw 1.5 lc rgb '#1f77b4' title 'train'");
    if (!val.empty())
      curves.push_back(gpString(dataFile) + " index " + (train.empty() ? "0" : "1") +
                       " using 1:2 with linespoints lw 2 pt 7 ps 0.8 lc rgb '#d62728'" +
                       " title 'validation'");
    gp << "plot " << curves[0];
    for (size_t i = 1; i < curves.size(); ++i)
      gp << ", \\\n     " << curves[i];
    gp << "\nset output\n";
    gp.flush();
    if (!gp)
      return fail("cannot write " + scriptFile);
  }

  std::string why;
  int rc = runGnuplot(program, scriptFile, logFile, options.timeoutSeconds, why);
  if (rc != 0) {
    std::string detail = lastLine(logFile);
    if (rc > 0)
      why = "gnuplot exited with status " + std::to_string(rc);
    return fail(why + (detail.empty() ? "" : ": " + detail));
  }
  if (!hasPngSignature(pngTmp))
    return fail("gnuplot wrote no PNG to " + pngTmp);
  std::error_code ec;
  std::filesystem::rename(pngTmp, pngPath, ec);
  if (ec)
    return fail("cannot rename " + pngTmp + " into place: " + ec.message());
  cleanUp();
  return result(PlotStatus::Drawn, "");
}

LossCurve::LossCurve(std::string pngPath, LossPlotOptions options)
    : path_(std::move(pngPath)), options_(std::move(options)) {}

PlotResult LossCurve::write() {
  PlotResult r = writeLossPlot(path_, train_, val_, options_);
  r.changed = !written_ || r.status != lastStatus_ || r.message != lastMessage_;
  written_ = true;
  lastStatus_ = r.status;
  lastMessage_ = r.message;
  return r;
}

} // namespace tnlm::train
