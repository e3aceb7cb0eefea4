#include "llm/config.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "llm/test_fixtures.h"

namespace shardvec::llm {
namespace {

using ::testing::ElementsAre;
using testing::Expected;
using ::testing::HasSubstr;
using testing::ModelDir;

TEST(ConfigTest, LoadsTheFixtures) {
  auto c = LoadLlamaConfig(ModelDir("tiny_llama"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 256);
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->intermediate_size, 128);
  EXPECT_EQ(c->num_hidden_layers, 2);
  EXPECT_EQ(c->num_attention_heads, 4);
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->max_position_embeddings, 256);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 64);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(2));

  auto t = LoadLlamaConfig(ModelDir("tiny_llama_tied"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->hidden_size, 48);
  EXPECT_EQ(t->num_attention_heads, 6);
  EXPECT_EQ(t->head_dim, 16);  // given explicitly, != hidden / heads
  EXPECT_EQ(t->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_TRUE(t->tie_word_embeddings);
  EXPECT_THAT(t->eos_token_ids, ElementsAre(2, 3));
}

TEST(ConfigTest, RopeFrequenciesMatchTransformers) {
  for (const char* name : {"tiny_llama", "tiny_llama_tied"}) {
    auto c = LoadLlamaConfig(ModelDir(name));
    ASSERT_TRUE(c.ok());
    const std::vector<float> want = Expected(name)["inv_freq"].get<std::vector<float>>();
    const std::vector<float> got = c->RopeInverseFrequencies();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      // One float32 ulp: torch's vectorised pow may round differently.
      EXPECT_LE(std::fabs(got[i] - want[i]), std::fabs(want[i]) * 1.2e-7f) << name << " " << i;
    }
  }
}

TEST(ConfigTest, Llama3ScalingRegimes) {
  // theta 1e4, head_dim 16, original 64: frequency 0 (wavelength 6.3 < 16) is kept,
  // 1 and 2 (wavelengths 20, 63) are interpolated, the rest are divided by the factor.
  auto c = LoadLlamaConfig(ModelDir("tiny_llama"));
  ASSERT_TRUE(c.ok());
  LlamaConfig plain = *c;
  plain.rope_scaling = RopeScaling();
  const std::vector<float> base = plain.RopeInverseFrequencies();
  const std::vector<float> scaled = c->RopeInverseFrequencies();
  EXPECT_EQ(scaled[0], base[0]);
  for (int i : {1, 2}) {
    EXPECT_LT(scaled[i], base[i]);
    EXPECT_GT(scaled[i], base[i] / 8);
  }
  for (int i = 3; i < 8; ++i) EXPECT_NEAR(scaled[i], base[i] / 8, base[i] * 1e-6);
}

TEST(ConfigTest, DefaultsForOptionalFields) {
  auto c = ParseLlamaConfig(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
      "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
      "rope_scaling": null, "eos_token_id": null, "max_position_embeddings": 32.0})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->head_dim, 4);
  EXPECT_EQ(c->max_position_embeddings, 32);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_TRUE(c->eos_token_ids.empty());
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_FALSE(c->tie_word_embeddings);
}

TEST(ConfigTest, BadConfigsNameTheField) {
  const std::string base = R"("vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
      "num_hidden_layers": 1, "num_attention_heads": 2)";
  struct Case {
    std::string json;
    absl::StatusCode code;
    std::string field;
  };
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  const std::vector<Case> cases = {
      {"{not json", kInvalid, "JSON"},
      {"[1, 2]", kInvalid, "object"},
      {R"({"hidden_size": 8})", kInvalid, "vocab_size"},
      {"{" + base + R"(, "hidden_size": "8"})", kInvalid, "hidden_size"},
      {"{" + base + R"(, "vocab_size": 0})", kInvalid, "vocab_size"},
      {"{" + base + R"(, "num_hidden_layers": 1.5})", kInvalid, "num_hidden_layers"},
      {"{" + base + R"(, "num_key_value_heads": 3, "num_attention_heads": 4})", kInvalid,
       "num_key_value_heads"},
      {"{" + base + R"(, "num_attention_heads": 3})", kInvalid, "num_attention_heads"},
      {"{" + base + R"(, "head_dim": 5})", kInvalid, "head_dim"},
      {"{" + base + R"(, "rms_norm_eps": -1})", kInvalid, "rms_norm_eps"},
      {"{" + base + R"(, "eos_token_id": "x"})", kInvalid, "eos_token_id"},
      {"{" + base + R"(, "eos_token_id": [2, 99]})", kInvalid, "eos_token_id"},
      {"{" + base + R"(, "tie_word_embeddings": "yes"})", kInvalid, "tie_word_embeddings"},
      {"{" + base + R"(, "rope_scaling": 3})", kInvalid, "rope_scaling"},
      {"{" + base + R"(, "rope_scaling": {"factor": 8}})", kInvalid, "rope_scaling.rope_type"},
      {"{" + base + R"(, "rope_scaling": {"rope_type": "llama3", "low_freq_factor": 1,
          "high_freq_factor": 4, "original_max_position_embeddings": 64}})",
       kInvalid, "rope_scaling.factor"},
      {"{" + base + R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8,
          "low_freq_factor": 1, "high_freq_factor": 4}})",
       kInvalid, "rope_scaling.original_max_position_embeddings"},
      {"{" + base + R"(, "rope_scaling": {"rope_type": "yarn", "factor": 8}})",
       absl::StatusCode::kUnimplemented, "yarn"},
      {"{" + base + R"(, "model_type": "mistral"})", absl::StatusCode::kUnimplemented,
       "model_type"},
      {"{" + base + R"(, "hidden_act": "gelu"})", absl::StatusCode::kUnimplemented, "hidden_act"},
      {"{" + base + R"(, "attention_bias": true})", absl::StatusCode::kUnimplemented,
       "attention_bias"},
  };
  for (const Case& c : cases) {
    auto r = ParseLlamaConfig(c.json);
    EXPECT_EQ(r.status().code(), c.code) << c.json;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.field)) << c.json;
  }
}

TEST(ConfigTest, MissingFolderIsNotFound) {
  auto r = LoadLlamaConfig("/nonexistent/model");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("config.json"));
}

}  // namespace
}  // namespace shardvec::llm
