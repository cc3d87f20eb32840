//===- ArtifactTest.cpp - the runtime refuses bad artifacts and weights ---===//
#include "runtime/Artifact.h"
#include "codegen/ArtifactWriter.h"
#include "codegen/KernelPlan.h"
#include "models/Import.h"
#include "runtime/CpuExecutor.h"
#include "runtime/Error.h"
#include "runtime/Safetensors.h"
#include "runtime/Weights.h"

#include "mlir/IR/MLIRContext.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <functional>

namespace {

namespace mt = mlir::tnlm;
namespace sc = tnlm::schema;

// The tiny model's artifact (max batch 2, seq 32), with `mutate` applied to the memory-planned
// plan before it is written: the way to craft artifacts that tnlmc would never produce.
std::vector<uint8_t> tinyArtifact(llvm::StringRef target = "cpu",
                                  const std::function<void(mt::KernelPlan &)> &mutate = {}) {
  mlir::MLIRContext ctx;
  mt::ConfigResult r = mt::loadModelConfig(std::string(TNLM_MODELS_DIR) + "/tiny.json");
  EXPECT_TRUE(r.config) << r.error;
  auto module = mt::importModel(*r.config, &ctx, "tiny.json");
  auto plan = mt::lowerToKernelPlan(*module, "forward", 2, 32);
  EXPECT_TRUE(mlir::succeeded(plan));
  mt::planMemory(*plan);
  if (mutate)
    mutate(*plan);
  return mt::serializeArtifact(*module, {*plan}, target);
}

// A minimal artifact with a given format version and target (nothing else filled in).
std::vector<uint8_t> minimalArtifact(uint32_t version, sc::Target target) {
  flatbuffers::FlatBufferBuilder b;
  sc::FinishSizePrefixedArtifactBuffer(b, sc::CreateArtifact(b, version, target));
  return std::vector<uint8_t>(b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize());
}

std::string errorOf(const std::function<void()> &fn) {
  try {
    fn();
  } catch (const tnlm::Error &e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Artifact, ValidArtifactLoads) {
  tnlm::Artifact a = tnlm::Artifact::fromBytes(tinyArtifact(), "tiny.tnlm", tnlm::Target::Cpu);
  EXPECT_EQ(a.maxBatch(), 2);
  EXPECT_EQ(a.maxSeq(), 32);
  EXPECT_EQ(a.vocabSize(), 256);
  EXPECT_EQ(a.root().params()->size(), 12u);
  EXPECT_EQ(a.root().params()->Get(0)->name()->str(), "model.embed_tokens.weight");
}

TEST(Artifact, OtherTargetIsRefused) {
  std::string e = errorOf([] {
    tnlm::Artifact::fromBytes(tinyArtifact("cuda:sm_90a"), "gpu.tnlm", tnlm::Target::Cpu);
  });
  EXPECT_NE(e.find("gpu.tnlm: artifact was compiled for target cuda:sm_90a but is being run "
                   "on the cpu backend"),
            std::string::npos)
      << e;
}

TEST(Artifact, OtherFormatVersionIsRefused) {
  std::string e = errorOf([] {
    tnlm::Artifact::fromBytes(minimalArtifact(99, sc::Target_CPU), "old.tnlm", tnlm::Target::Cpu);
  });
  EXPECT_NE(e.find("old.tnlm: artifact format version 99 is not supported"), std::string::npos)
      << e;
  // Version 3 (decode GEMVs with a split of K instead of a ring of weight stages) asks for a
  // recompile.
  e = errorOf([] {
    tnlm::Artifact::fromBytes(minimalArtifact(3, sc::Target_CPU), "v3.tnlm", tnlm::Target::Cpu);
  });
  EXPECT_NE(e.find("v3.tnlm: artifact format version 3 is not supported by this runtime "
                   "(expects 4 to 6); recompile it with tnlmc"),
            std::string::npos)
      << e;
  // Version 4 (before the Lightning kernels' SiLU' fold) passes the version check (this
  // minimal one then fails the structure's, as version 5's does).
  e = errorOf([] {
    tnlm::Artifact::fromBytes(minimalArtifact(4, sc::Target_CPU), "v4.tnlm", tnlm::Target::Cpu);
  });
  EXPECT_EQ(e.find("format version"), std::string::npos) << e;
  EXPECT_EQ(e, errorOf([] {
              tnlm::Artifact::fromBytes(minimalArtifact(5, sc::Target_CPU), "v4.tnlm",
                                        tnlm::Target::Cpu);
            }));
}

TEST(Artifact, TruncatedAndCorruptedAreRefused) {
  std::vector<uint8_t> good = tinyArtifact();
  for (size_t keep : {size_t(0), size_t(6), good.size() / 2, good.size() - 1}) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + keep);
    std::string e = errorOf([&] { tnlm::Artifact::fromBytes(cut, "cut.tnlm", tnlm::Target::Cpu); });
    EXPECT_EQ(e.rfind("cut.tnlm: ", 0), 0u) << keep << ": " << e;
  }
  // Overwrite the root offset so it points past the end: the verifier must catch it.
  std::vector<uint8_t> bad = good;
  bad[4] = bad[5] = bad[6] = 0x7f;
  EXPECT_NE(errorOf([&] {
              tnlm::Artifact::fromBytes(bad, "bad.tnlm", tnlm::Target::Cpu);
            }).find("corrupted artifact"),
            std::string::npos);
  std::vector<uint8_t> noId = good;
  noId[8] = 'X';
  EXPECT_NE(errorOf([&] {
              tnlm::Artifact::fromBytes(noId, "x.tnlm", tnlm::Target::Cpu);
            }).find("not a tnlm artifact"),
            std::string::npos);
  EXPECT_NE(errorOf([] {
              tnlm::Artifact::load("/nonexistent.tnlm", tnlm::Target::Cpu);
            }).find("/nonexistent.tnlm: cannot open artifact"),
            std::string::npos);
}

// Every byte flipped in turn: the loader either accepts (a value changed) or throws
// tnlm::Error; it never crashes. Accepted artifacts must still pass the structural checks,
// so the executor cannot index out of range.
TEST(Artifact, ByteFlipsNeverCrashTheLoader) {
  std::vector<uint8_t> good = tinyArtifact();
  int refused = 0;
  for (size_t i = 0; i < good.size(); i += 3) {
    std::vector<uint8_t> bad = good;
    bad[i] ^= 0xA5;
    try {
      tnlm::Artifact::fromBytes(bad, "flip.tnlm", tnlm::Target::Cpu);
    } catch (const tnlm::Error &) {
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
}

// Accepted mutants must also run: the structural checks are what keeps the executor in range
// (under AddressSanitizer this test is the fuzz harness for it).
TEST(Artifact, AcceptedByteFlipsRunInBounds) {
  std::vector<uint8_t> good = tinyArtifact();
  tnlm::ParamValues params =
      tnlm::randomWeights(tnlm::Artifact::fromBytes(good, "good", tnlm::Target::Cpu), 1);
  std::vector<int32_t> ids(64);
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<int32_t>(i * 7 % 256);
  int ran = 0;
  for (size_t i = 0; i < good.size(); i += 5) {
    std::vector<uint8_t> bad = good;
    bad[i] ^= 0x5A;
    try {
      tnlm::Artifact a = tnlm::Artifact::fromBytes(bad, "flip.tnlm", tnlm::Target::Cpu);
      tnlm::CpuExecutor exec(a, params);
      exec.forward(ids.data(), 2, 32);
      ++ran;
    } catch (const tnlm::Error &) {
    }
  }
  EXPECT_GT(ran, 0);
}

// Crafted plans that tnlmc never writes, each refused with a message naming the problem.
struct Mutation {
  const char *what;
  std::function<void(mt::KernelPlan &)> apply;
  const char *expected;
};

TEST(Artifact, CraftedOutOfRangePlansAreRefused) {
  auto stepOf = [](mt::KernelPlan &p, mt::KernelKind k) -> mt::PlanStep & {
    for (mt::PlanStep &s : p.steps)
      if (s.kind == k)
        return s;
    return p.steps.front();
  };
  // The lm head's linear (the plan's last step) turned into a fused lm head loss: h, W, labels.
  auto lmHeadLoss = [](mt::KernelPlan &p) -> mt::PlanStep & {
    mt::PlanStep &head = p.steps.back();
    head.kind = mt::KernelKind::LmHeadLoss;
    head.inputs.push_back(mt::PlanOperand{mt::OperandKind::Input, 0, 0, 1, 1, "i32"});
    head.i64Attrs = {-100};
    return head;
  };
  const Mutation mutations[] = {
      {"rows overflow", [](mt::KernelPlan &p) { p.maxSeq = int64_t(1) << 62; },
       "exceeds 2147483647 rows"},
      {"output into a parameter",
       [&](mt::KernelPlan &p) {
         stepOf(p, mt::KernelKind::SrmsNorm).outputs[0] =
             mt::PlanOperand{mt::OperandKind::Param, 3, 0, 64, 64, "f32"};
       },
       "output #0 of the wrong kind (expected Arena)"},
      {"activation input from a parameter",
       [&](mt::KernelPlan &p) {
         stepOf(p, mt::KernelKind::Linear).inputs[0] =
             mt::PlanOperand{mt::OperandKind::Param, 3, 0, 64, 64, "f32"};
       },
       "input #0 of the wrong kind (expected Arena)"},
      {"embedding table wider than the tensor",
       [&](mt::KernelPlan &p) {
         auto &t = stepOf(p, mt::KernelKind::Embedding).inputs[1];
         t.cols = t.ld = 128;
       },
       "views parameter 'model.embed_tokens.weight' with a column offset or width"},
      {"parameter column offset",
       [&](mt::KernelPlan &p) {
         auto &w = stepOf(p, mt::KernelKind::Linear).inputs[1];
         w.colOffset = 100000;
         w.ld = 100064;
       },
       "with a column offset or width other than the tensor's"},
      {"bf16 activation on the cpu",
       [&](mt::KernelPlan &p) { p.steps.back().outputs[0].dtype = "bf16"; },
       "an activation of a dtype this target does not store"},
      {"arena offset that wraps",
       [&](mt::KernelPlan &p) {
         p.buffers[stepOf(p, mt::KernelKind::SrmsNorm).outputs[0].index].offset = -16;
       },
       "reads or writes past the end of the arena"},
      {"result outside the arena", [](mt::KernelPlan &p) { p.arenaBytes = 1024; },
       "has a result outside the arena"},
      {"huge row stride",
       [&](mt::KernelPlan &p) { stepOf(p, mt::KernelKind::Silu).inputs[0].ld = int64_t(1) << 40; },
       "an operand with an invalid view"},
      {"a fused lm head loss writing logits, not a loss", [&](mt::KernelPlan &p) { lmHeadLoss(p); },
       "must write a [1, 1] f32 loss"},
      {"a fused lm head loss reading one row per slot",
       [&](mt::KernelPlan &p) {
         mt::PlanStep &head = lmHeadLoss(p);
         head.inputs[0].rows = mt::kRowsPerBatch; // sized for max batch rows, read for batch·seq
         head.outputs[0].rows = 1, head.outputs[0].cols = head.outputs[0].ld = 1;
       },
       "has an lm head input that is not one activation row per position"},
      {"a fused lm head loss with a loss gradient but no dh and dW",
       [&](mt::KernelPlan &p) {
         mt::PlanStep &head = lmHeadLoss(p);
         head.inputs.push_back(head.outputs[0]); // (any arena operand as dloss)
         head.outputs[0].rows = 1, head.outputs[0].cols = head.outputs[0].ld = 1;
       },
       "has a loss gradient without dh and dW"},
      {"attention dims that wrap",
       [&](mt::KernelPlan &p) {
         stepOf(p, mt::KernelKind::DecayAttention).i64Attrs[1] = (int64_t(1) << 62) + 1;
       },
       "invalid attention attributes"},
  };
  for (const Mutation &m : mutations) {
    std::vector<uint8_t> bytes = tinyArtifact("cpu", m.apply);
    std::string e = errorOf([&] { tnlm::Artifact::fromBytes(bytes, "m.tnlm", tnlm::Target::Cpu); });
    EXPECT_NE(e.find(m.expected), std::string::npos) << m.what << ": " << e;
    EXPECT_EQ(e.rfind("m.tnlm: invalid artifact: ", 0), 0u) << m.what << ": " << e;
  }
}

class WeightsTest : public ::testing::Test {
protected:
  // One folder per test and process: ctest runs the tests of this fixture in parallel.
  std::string dir = std::filesystem::temp_directory_path() /
                    ("tnlm-weights-test-" +
                     std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
                     "-" + std::to_string(::getpid()));
  void SetUp() override { std::filesystem::create_directories(dir); }
  void TearDown() override { std::filesystem::remove_all(dir); }
};

TEST_F(WeightsTest, MismatchesAreListedTogether) {
  tnlm::Artifact a = tnlm::Artifact::fromBytes(tinyArtifact(), "tiny.tnlm", tnlm::Target::Cpu);
  tnlm::ParamValues v = tnlm::randomWeights(a, 1);
  std::string path = dir + "/w.safetensors";
  tnlm::saveWeights(a, v, path);
  EXPECT_NO_THROW(tnlm::loadWeights(a, path));

  // Drop one tensor, reshape one, retype one, add one.
  tnlm::SafetensorsFile f = tnlm::SafetensorsFile::read(path);
  std::vector<tnlm::TensorData> ts;
  for (const tnlm::TensorData &t : f.tensors()) {
    if (t.name == "model.layers.1.channel_mixer.l3.weight")
      continue;
    tnlm::TensorData c = t;
    if (c.name == "model.layers.0.token_mixer.out_proj.weight")
      c.shape = {32, 128};
    if (c.name == "model.layers.0.token_mixer.lrpe.theta") {
      c.dtype = tnlm::DType::I32;
    }
    ts.push_back(c);
  }
  ts.push_back(tnlm::TensorData::fromF32("lm_head.bias", tnlm::DType::F32, {2}, {1, 2}));
  std::string bad = dir + "/bad.safetensors";
  tnlm::writeSafetensors(bad, ts);
  std::string e = errorOf([&] { tnlm::loadWeights(a, bad); });
  EXPECT_NE(e.find("4 problems"), std::string::npos) << e;
  EXPECT_NE(e.find("missing 'model.layers.1.channel_mixer.l3.weight' [64, 128]"), std::string::npos)
      << e;
  EXPECT_NE(e.find("'model.layers.0.token_mixer.out_proj.weight' has shape [32, 128], expected "
                   "[64, 64]"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("'model.layers.0.token_mixer.lrpe.theta' has dtype I32"), std::string::npos)
      << e;
  EXPECT_NE(e.find("unexpected 'lm_head.bias'"), std::string::npos) << e;
}

TEST_F(WeightsTest, Bf16WeightsAreConvertedOnLoad) {
  tnlm::Artifact a = tnlm::Artifact::fromBytes(tinyArtifact(), "tiny.tnlm", tnlm::Target::Cpu);
  tnlm::ParamValues v = tnlm::randomWeights(a, 2);
  std::vector<tnlm::TensorData> ts;
  for (size_t i = 0; i < v.size(); ++i) {
    const auto *p = a.root().params()->Get(i);
    ts.push_back(tnlm::TensorData::fromF32(p->name()->str(), tnlm::DType::BF16,
                                           {p->shape()->begin(), p->shape()->end()}, v[i]));
  }
  std::string path = dir + "/bf16.safetensors";
  tnlm::writeSafetensors(path, ts);
  tnlm::ParamValues loaded = tnlm::loadWeights(a, path);
  ASSERT_EQ(loaded.size(), v.size());
  for (size_t i = 0; i < v.size(); ++i)
    for (size_t j = 0; j < v[i].size(); ++j)
      // bf16 keeps 8 significant bits (7 stored): round-to-nearest error ≤ 2^-8 relative.
      ASSERT_NEAR(loaded[i][j], v[i][j], std::fabs(v[i][j]) / 256.0 + 1e-30) << i << "," << j;
}

} // namespace
