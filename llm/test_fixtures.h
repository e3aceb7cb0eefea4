// Test helpers for the tiny Llama fixtures made by testdata/make_tiny_llama.py: their
// folders and the transformers reference outputs (expected_float32.json), plus small
// drivers for Model (prefill + greedy decode) shared by the model and engine tests.
//
//   const std::string dir = llm::testing::ModelDir("tiny_llama");
//   nlohmann::json ref = llm::testing::Expected("tiny_llama");
//   float err = llm::testing::RelativeError(got, ref["last_logits"][0]["logits"]);
#ifndef SHARDVEC_LLM_TEST_FIXTURES_H_
#define SHARDVEC_LLM_TEST_FIXTURES_H_

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "llm/model.h"
#include "nlohmann/json.hpp"

namespace shardvec::llm::testing {

inline std::string ModelDir(const std::string& name) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return std::string(srcdir != nullptr ? srcdir : ".") + "/shardvec/llm/testdata/" + name;
}

inline std::string TempDir() {
  const char* tmp = std::getenv("TEST_TMPDIR");
  return tmp != nullptr ? tmp : "/tmp";
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

inline nlohmann::json Expected(const std::string& name) {
  nlohmann::json j = nlohmann::json::parse(ReadFile(ModelDir(name) + "/expected_float32.json"),
                                           nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << name;
  return j;
}

inline std::vector<int32_t> Ids(const nlohmann::json& j) { return j.get<std::vector<int32_t>>(); }

// max |got - ref| / max |ref|: the tolerance measure the tests use for logits.
inline float RelativeError(const float* got, const std::vector<float>& ref) {
  float diff = 0.0f, scale = 0.0f;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff = std::max(diff, std::fabs(got[i] - ref[i]));
    scale = std::max(scale, std::fabs(ref[i]));
  }
  return diff / scale;
}

// A batch for one sequence's tokens at positions [start, start + n) of `slot`, sampling
// the last (or every) row greedily.
inline ForwardBatch SequenceBatch(const std::vector<int32_t>& tokens, int start, int slot,
                                  bool all_rows = false) {
  ForwardBatch b;
  for (size_t i = 0; i < tokens.size(); ++i) {
    b.tokens.push_back(tokens[i]);
    b.positions.push_back(start + static_cast<int>(i));
    b.slots.push_back(slot);
    if (all_rows || i + 1 == tokens.size()) {
      b.sample_rows.push_back(static_cast<int32_t>(i));
      b.sampling.push_back(SamplingParams{});
    }
  }
  return b;
}

// Prefills `prompt` into `slot` in one step and decodes `count` greedy tokens.
inline std::vector<int32_t> Greedy(Model* model, const std::vector<int32_t>& prompt, int count,
                                   int slot = 0) {
  std::vector<int32_t> out, next;
  absl::Status s = model->Forward(SequenceBatch(prompt, 0, slot), &next, nullptr);
  EXPECT_TRUE(s.ok()) << s;
  if (!s.ok()) return out;
  int pos = static_cast<int>(prompt.size());
  while (true) {
    out.push_back(next[0]);
    if (static_cast<int>(out.size()) == count) break;
    s = model->Forward(SequenceBatch({next[0]}, pos++, slot), &next, nullptr);
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) break;
  }
  return out;
}

}  // namespace shardvec::llm::testing

#endif  // SHARDVEC_LLM_TEST_FIXTURES_H_
