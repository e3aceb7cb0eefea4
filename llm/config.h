// A Llama-family model's shape, read from a Hugging Face checkpoint's config.json.
//
//   auto cfg = llm::LoadLlamaConfig("/models/llama-3.2-1b");  // reads config.json
//   int kv_dim = cfg->num_key_value_heads * cfg->head_dim;
#ifndef SHARDVEC_LLM_CONFIG_H_
#define SHARDVEC_LLM_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace shardvec::llm {

// rope_scaling {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
// "original_max_position_embeddings"}; kNone when absent or null.
struct RopeScaling {
  enum class Type { kNone, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // == num_attention_heads when absent (no GQA)
  int head_dim = 0;             // hidden_size / num_attention_heads when absent
  int max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;  // "eos_token_id" may be an int or a list

  // Inverse frequencies of the rotary embedding (head_dim / 2 values), with the llama3
  // scaling applied when configured; the same float32 operations transformers performs
  // (pow rounded from double), so values agree with its inv_freq to about one ulp.
  std::vector<float> RopeInverseFrequencies() const;
};

// INVALID_ARGUMENT naming the field for a missing/ill-typed field or an inconsistent
// shape (heads not dividing hidden_size, kv heads not dividing heads, ...);
// UNIMPLEMENTED for a model_type other than "llama" or an unknown rope_type.
absl::StatusOr<LlamaConfig> ParseLlamaConfig(const std::string& json_text);
absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& model_dir);

}  // namespace shardvec::llm

#endif  // SHARDVEC_LLM_CONFIG_H_
