//===- MemoryPlanner.cpp - static arena planning --------------------------===//
//
// Every buffer has a live interval [firstStep, lastStep]. Buffers are placed largest first;
// each goes to the lowest offset where it overlaps no already-placed buffer whose interval
// intersects its own (greedy-by-size, the approach of TFLite's arena planner). Offsets are
// 64-byte aligned for vector loads.
//
//===----------------------------------------------------------------------===//
#include "codegen/KernelPlan.h"

#include "llvm/Support/FormatVariadic.h"

#include <algorithm>
#include <numeric>

namespace mlir::tnlm {

namespace {
constexpr int64_t kAlign = 64;
int64_t alignUp(int64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }
bool overlapInTime(const PlanBuffer &a, const PlanBuffer &b) {
  return a.firstStep <= b.lastStep && b.firstStep <= a.lastStep;
}
} // namespace

void planMemory(KernelPlan &plan) {
  const int64_t rows = plan.maxRows();
  std::vector<size_t> order(plan.buffers.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return plan.buffers[a].bytes(rows) > plan.buffers[b].bytes(rows);
  });
  std::vector<size_t> placed;
  int64_t peak = 0;
  for (size_t id : order) {
    PlanBuffer &buf = plan.buffers[id];
    int64_t size = alignUp(buf.bytes(rows));
    // Occupied ranges of time-overlapping buffers, sorted by offset.
    std::vector<std::pair<int64_t, int64_t>> busy;
    for (size_t other : placed)
      if (overlapInTime(buf, plan.buffers[other]))
        busy.emplace_back(plan.buffers[other].offset,
                          plan.buffers[other].offset + alignUp(plan.buffers[other].bytes(rows)));
    std::sort(busy.begin(), busy.end());
    int64_t offset = 0;
    for (auto [begin, end] : busy) {
      if (offset + size <= begin)
        break;
      offset = std::max(offset, end);
    }
    buf.offset = offset;
    peak = std::max(peak, offset + size);
    placed.push_back(id);
  }
  plan.arenaBytes = peak;
}

void keepGradWeightInputs(KernelPlan &plan, int64_t window) {
  const int64_t last = static_cast<int64_t>(plan.steps.size()) - 1;
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    if (plan.steps[i].kind != KernelKind::LinearGradWeight)
      continue;
    for (const PlanOperand &o : plan.steps[i].inputs)
      if (o.kind == OperandKind::Arena)
        plan.buffers[o.index].lastStep = std::max(plan.buffers[o.index].lastStep,
                                                  std::min(last, static_cast<int64_t>(i) + window));
  }
}

void keepGatedProductInputs(KernelPlan &plan) {
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    const PlanStep &m = plan.steps[i];
    if (m.kind != KernelKind::Mul || m.inputs.size() != 2 ||
        m.inputs[0].kind != OperandKind::Arena || !m.inputs[0].sameStorage(m.inputs[1]) ||
        m.inputs[1].colOffset != m.inputs[0].colOffset + m.inputs[0].cols)
      continue;
    // The pair's GEMMs: the Linear steps before it that write that buffer.
    for (size_t j = 0; j < i; ++j) {
      const PlanStep &l = plan.steps[j];
      if (l.kind != KernelKind::Linear || l.outputs.empty() || l.inputs.empty() ||
          !l.outputs[0].sameStorage(m.inputs[0]) || l.inputs[0].kind != OperandKind::Arena)
        continue;
      PlanBuffer &x = plan.buffers[l.inputs[0].index];
      x.lastStep = std::max(x.lastStep, static_cast<int64_t>(i));
    }
  }
}

int64_t peakLiveBytes(const KernelPlan &plan) {
  int64_t peak = 0;
  for (size_t step = 0; step < plan.steps.size(); ++step) {
    int64_t live = 0;
    for (const PlanBuffer &b : plan.buffers)
      if (b.firstStep <= static_cast<int64_t>(step) && static_cast<int64_t>(step) <= b.lastStep)
        live += alignUp(b.bytes(plan.maxRows()));
    peak = std::max(peak, live);
  }
  return peak;
}

void printPlan(const KernelPlan &plan, llvm::raw_ostream &os) {
  auto operand = [&](const PlanOperand &o) {
    std::string s;
    switch (o.kind) {
    case OperandKind::Arena:
      s = llvm::formatv("%b{0}@{1}", o.index, plan.buffers[o.index].offset).str();
      break;
    case OperandKind::Param:
      s = "$" + plan.params[o.index].name;
      break;
    case OperandKind::Input:
      s = "%in" + std::to_string(o.index);
      break;
    case OperandKind::State:
      s = "&" + plan.state[o.index].name;
      break;
    }
    if (o.colOffset != 0 || o.ld != o.cols)
      s += llvm::formatv("[:, {0}:{1}] ld={2}", o.colOffset, o.colOffset + o.cols, o.ld).str();
    return s;
  };
  os << "kernel plan @" << plan.function << " (max batch " << plan.maxBatch << ", max seq "
     << plan.maxSeq << "): " << plan.steps.size() << " steps, " << plan.buffers.size()
     << " buffers, arena " << plan.arenaBytes << " bytes\n";
  for (auto [i, s] : llvm::enumerate(plan.steps)) {
    os << llvm::formatv("  {0,3}: ", i);
    for (auto [j, o] : llvm::enumerate(s.outputs))
      os << (j ? ", " : "") << operand(o) << " ["
         << (o.rows == kRowsPerCall    ? std::string("rows")
             : o.rows == kRowsPerBatch ? std::string("batch")
                                       : std::to_string(o.rows))
         << " x " << o.cols << "]";
    os << " = " << kernelName(s.kind) << "(";
    for (auto [j, o] : llvm::enumerate(s.inputs))
      os << (j ? ", " : "") << operand(o);
    os << ")";
    if (!s.f32Attrs.empty() || !s.i64Attrs.empty()) {
      os << " {";
      for (float f : s.f32Attrs)
        os << " " << f;
      for (int64_t v : s.i64Attrs)
        os << " " << v;
      os << " }";
    }
    os << "  // " << s.name << "\n";
  }
  for (const PlanIO &out : plan.outputs)
    os << "  return " << out.name << " = %b" << out.buffer << "@" << plan.buffers[out.buffer].offset
       << "\n";
}

} // namespace mlir::tnlm
