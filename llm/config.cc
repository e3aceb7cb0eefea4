#include "llm/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace shardvec::llm {
namespace {

using nlohmann::json;

absl::Status FieldError(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", field, " ", what));
}

// Reads an integer field; `required` fields must be present, others keep *out.
// Integral floats (e.g. 8192.0 written by some exporters) are accepted.
absl::Status GetInt(const json& j, const std::string& field, bool required, int* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    return required ? FieldError(field, "is missing") : absl::OkStatus();
  }
  if (it->is_number_integer() || it->is_number_unsigned()) {
    const int64_t v = it->get<int64_t>();
    if (v < INT32_MIN || v > INT32_MAX) return FieldError(field, "is out of range");
    *out = static_cast<int>(v);
    return absl::OkStatus();
  }
  if (it->is_number_float()) {
    const double v = it->get<double>();
    if (v != std::floor(v) || std::fabs(v) > 2147483647.0) {
      return FieldError(field, "must be an integer");
    }
    *out = static_cast<int>(v);
    return absl::OkStatus();
  }
  return FieldError(field, "must be an integer");
}

absl::Status GetDouble(const json& j, const std::string& field, bool required, double* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    return required ? FieldError(field, "is missing") : absl::OkStatus();
  }
  if (!it->is_number()) return FieldError(field, "must be a number");
  *out = it->get<double>();
  if (!std::isfinite(*out)) return FieldError(field, "must be finite");
  return absl::OkStatus();
}

absl::Status ParseRopeScaling(const json& j, RopeScaling* out) {
  auto it = j.find("rope_scaling");
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object()) return FieldError("rope_scaling", "must be an object or null");
  const json& rs = *it;
  // transformers accepts the legacy key "type" as well as "rope_type".
  auto type_it = rs.find("rope_type");
  if (type_it == rs.end()) type_it = rs.find("type");
  if (type_it == rs.end() || !type_it->is_string()) {
    return FieldError("rope_scaling.rope_type", "is missing or not a string");
  }
  const std::string type = type_it->get<std::string>();
  if (type == "default") return absl::OkStatus();
  if (type != "llama3") {
    return absl::UnimplementedError(
        absl::StrCat("config.json: rope_scaling.rope_type \"", type, "\" is not supported"));
  }
  out->type = RopeScaling::Type::kLlama3;
  const auto sub = [&](const char* name, double* v) {
    return GetDouble(rs, name, /*required=*/true, v).ok()
               ? absl::OkStatus()
               : FieldError(absl::StrCat("rope_scaling.", name), "is missing or not a number");
  };
  if (auto s = sub("factor", &out->factor); !s.ok()) return s;
  if (auto s = sub("low_freq_factor", &out->low_freq_factor); !s.ok()) return s;
  if (auto s = sub("high_freq_factor", &out->high_freq_factor); !s.ok()) return s;
  if (!GetInt(rs, "original_max_position_embeddings", true, &out->original_max_position_embeddings)
           .ok()) {
    return FieldError("rope_scaling.original_max_position_embeddings",
                      "is missing or not an integer");
  }
  if (out->factor <= 0) return FieldError("rope_scaling.factor", "must be > 0");
  if (out->low_freq_factor <= 0) return FieldError("rope_scaling.low_freq_factor", "must be > 0");
  if (out->high_freq_factor <= out->low_freq_factor) {
    return FieldError("rope_scaling.high_freq_factor", "must be > low_freq_factor");
  }
  if (out->original_max_position_embeddings <= 0) {
    return FieldError("rope_scaling.original_max_position_embeddings", "must be > 0");
  }
  return absl::OkStatus();
}

absl::Status ParseEos(const json& j, std::vector<int>* out) {
  auto it = j.find("eos_token_id");
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  const auto one = [&](const json& v) -> absl::Status {
    if (!v.is_number_integer() && !v.is_number_unsigned()) {
      return FieldError("eos_token_id", "must be an integer or a list of integers");
    }
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id > INT32_MAX) return FieldError("eos_token_id", "is out of range");
    out->push_back(static_cast<int>(id));
    return absl::OkStatus();
  };
  if (it->is_array()) {
    for (const json& v : *it) {
      if (auto s = one(v); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  return one(*it);
}

absl::Status CheckPositive(int v, const char* field) {
  return v > 0 ? absl::OkStatus() : FieldError(field, "must be > 0");
}

}  // namespace

std::vector<float> LlamaConfig::RopeInverseFrequencies() const {
  // transformers computes these in float32 tensors:
  //   inv_freq = 1 / theta ** (arange(0, dim, 2).float() / dim)
  // followed (llama3) by elementwise float32 arithmetic. Each operation below is done in
  // float32 in the same order; pow itself is evaluated in double and rounded, which can
  // differ from torch's vectorised powf by one ulp.
  const int half = head_dim / 2;
  std::vector<float> inv(half);
  for (int i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float p = static_cast<float>(std::pow(static_cast<double>(static_cast<float>(rope_theta)),
                                                static_cast<double>(exponent)));
    inv[i] = 1.0f / p;
  }
  if (rope_scaling.type != RopeScaling::Type::kLlama3) return inv;
  const float factor = static_cast<float>(rope_scaling.factor);
  const float low = static_cast<float>(rope_scaling.low_freq_factor);
  const float high = static_cast<float>(rope_scaling.high_freq_factor);
  const double old_len = rope_scaling.original_max_position_embeddings;
  // Python floats (double) in transformers; they meet float32 tensors as float32 scalars.
  const float low_freq_wavelen = static_cast<float>(old_len / rope_scaling.low_freq_factor);
  const float high_freq_wavelen = static_cast<float>(old_len / rope_scaling.high_freq_factor);
  const float two_pi = static_cast<float>(2.0 * M_PI);
  for (int i = 0; i < half; ++i) {
    const float wavelen = two_pi / inv[i];
    float f = wavelen > low_freq_wavelen ? inv[i] / factor : inv[i];
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      const float smooth = (static_cast<float>(old_len) / wavelen - low) / (high - low);
      f = (1.0f - smooth) * f / factor + smooth * f;
    }
    inv[i] = f;
  }
  return inv;
}

absl::StatusOr<LlamaConfig> ParseLlamaConfig(const std::string& json_text) {
  const json j = json::parse(json_text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("config.json: not a JSON object");

  auto mt = j.find("model_type");
  if (mt != j.end()) {
    if (!mt->is_string()) return FieldError("model_type", "must be a string");
    if (mt->get<std::string>() != "llama") {
      return absl::UnimplementedError(absl::StrCat(
          "config.json: model_type \"", mt->get<std::string>(), "\" is not supported (llama)"));
    }
  }

  LlamaConfig c;
  absl::Status s;
  if (s = GetInt(j, "vocab_size", true, &c.vocab_size); !s.ok()) return s;
  if (s = GetInt(j, "hidden_size", true, &c.hidden_size); !s.ok()) return s;
  if (s = GetInt(j, "intermediate_size", true, &c.intermediate_size); !s.ok()) return s;
  if (s = GetInt(j, "num_hidden_layers", true, &c.num_hidden_layers); !s.ok()) return s;
  if (s = GetInt(j, "num_attention_heads", true, &c.num_attention_heads); !s.ok()) return s;
  c.num_key_value_heads = -1;
  if (s = GetInt(j, "num_key_value_heads", false, &c.num_key_value_heads); !s.ok()) return s;
  c.head_dim = -1;
  if (s = GetInt(j, "head_dim", false, &c.head_dim); !s.ok()) return s;
  if (s = GetInt(j, "max_position_embeddings", false, &c.max_position_embeddings); !s.ok()) {
    return s;
  }
  if (s = GetDouble(j, "rms_norm_eps", false, &c.rms_norm_eps); !s.ok()) return s;
  if (s = GetDouble(j, "rope_theta", false, &c.rope_theta); !s.ok()) return s;
  if (s = GetInt(j, "bos_token_id", false, &c.bos_token_id); !s.ok()) return s;
  if (s = ParseEos(j, &c.eos_token_ids); !s.ok()) return s;
  if (s = ParseRopeScaling(j, &c.rope_scaling); !s.ok()) return s;
  auto tie = j.find("tie_word_embeddings");
  if (tie != j.end() && !tie->is_null()) {
    if (!tie->is_boolean()) return FieldError("tie_word_embeddings", "must be a boolean");
    c.tie_word_embeddings = tie->get<bool>();
  }
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    auto b = j.find(key);
    if (b != j.end() && b->is_boolean() && b->get<bool>()) {
      return absl::UnimplementedError(
          absl::StrCat("config.json: ", key, " = true is not supported"));
    }
  }
  auto act = j.find("hidden_act");
  if (act != j.end() && !(act->is_string() && act->get<std::string>() == "silu")) {
    return absl::UnimplementedError("config.json: hidden_act other than \"silu\" is not supported");
  }

  if (s = CheckPositive(c.vocab_size, "vocab_size"); !s.ok()) return s;
  if (s = CheckPositive(c.hidden_size, "hidden_size"); !s.ok()) return s;
  if (s = CheckPositive(c.intermediate_size, "intermediate_size"); !s.ok()) return s;
  if (s = CheckPositive(c.num_hidden_layers, "num_hidden_layers"); !s.ok()) return s;
  if (s = CheckPositive(c.num_attention_heads, "num_attention_heads"); !s.ok()) return s;
  if (s = CheckPositive(c.max_position_embeddings, "max_position_embeddings"); !s.ok()) return s;
  if (c.num_key_value_heads == -1) c.num_key_value_heads = c.num_attention_heads;
  if (s = CheckPositive(c.num_key_value_heads, "num_key_value_heads"); !s.ok()) return s;
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return FieldError("num_key_value_heads", "must divide num_attention_heads");
  }
  if (c.head_dim == -1) {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return FieldError("num_attention_heads", "must divide hidden_size (no head_dim given)");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) {
    return FieldError("head_dim", "must be positive and even");
  }
  if (!(c.rms_norm_eps > 0)) return FieldError("rms_norm_eps", "must be > 0");
  if (!(c.rope_theta > 0)) return FieldError("rope_theta", "must be > 0");
  for (int id : c.eos_token_ids) {
    if (id >= c.vocab_size) return FieldError("eos_token_id", "is outside the vocabulary");
  }
  if (c.bos_token_id >= c.vocab_size)
    return FieldError("bos_token_id", "is outside the vocabulary");
  return c;
}

absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseLlamaConfig(ss.str());
}

}  // namespace shardvec::llm
