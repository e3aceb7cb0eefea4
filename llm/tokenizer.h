// Byte-level BPE tokenizer loaded from a Hugging Face tokenizer.json (GPT-2 / Llama 3
// style): added/special tokens matched first, then the pre-tokenizer's Split regex
// (PCRE2 with Unicode classes and lookahead), the ByteLevel byte-to-unicode mapping, and
// BPE merges by rank. Decoding maps tokens back to bytes; text that is not valid UTF-8 at
// a token boundary is kept as bytes.
//
//   auto tok = llm::Tokenizer::Load("/models/llama-3.2-1b/tokenizer.json");
//   std::vector<int32_t> ids = (*tok)->Encode("Hello world", /*add_bos=*/true);
//   std::string text = (*tok)->Decode(ids, /*skip_special=*/true);
//
// Encode gives the ids that `tokenizers` gives (checked by tokenizer_test against
// fixtures made with tokenizers 0.20). The shapes understood: normalizer null; a
// pre_tokenizer of Split{Regex|String, Isolated} steps followed by ByteLevel (its own
// GPT-2 regex when use_regex, add_prefix_space); a BPE model (merges as "a b" or
// ["a", "b"], ignore_merges, unk_token/fuse_unk; no dropout or byte_fallback); added
// tokens without lstrip/rstrip/single_word; post_processor null, ByteLevel,
// TemplateProcessing or a Sequence of those; decoder ByteLevel. Anything else is
// INVALID_ARGUMENT naming the JSON part.
//
// Immutable after loading except for an internal bounded cache of BPE results (guarded
// by mutexes), so every method may be called from many threads at once.
#ifndef SHARDVEC_LLM_TOKENIZER_H_
#define SHARDVEC_LLM_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace shardvec::llm {

class Tokenizer {
 public:
  // NOT_FOUND (with the path) for a file that cannot be read; INVALID_ARGUMENT for a file
  // that is not a byte-level BPE tokenizer.json (naming the part: model.type,
  // pre_tokenizer, a merge that names an unknown token, ...).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(const std::string& json_text);
  virtual ~Tokenizer() = default;

  // Like tokenizers' encode(text, add_special_tokens=add_bos): special tokens written in
  // the text are recognized; add_bos applies the post-processor's single template, which
  // for Llama 3 prepends BOS (a template that also appends tokens appends them too).
  // Bytes that are not valid UTF-8 never match the regex and are encoded as bytes.
  virtual std::vector<int32_t> Encode(const std::string& text, bool add_bos) const = 0;
  // Concatenates TokenBytes; skip_special drops added tokens marked special. Ids outside
  // [0, vocab_size()) are skipped, as tokenizers does.
  virtual std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const = 0;
  // The bytes of one token (for streaming: concatenate, emit complete UTF-8); empty for
  // an unknown id.
  virtual std::string TokenBytes(int32_t id) const = 0;
  // One more than the largest id of the model vocab and the added tokens (the size of an
  // embedding table indexed by id).
  virtual int vocab_size() const = 0;
  // The id of a token written as in tokenizer.json ("<|eot_id|>", "Ġthe"); added tokens
  // first, then the model vocab. -1 when absent.
  virtual int32_t TokenId(const std::string& token) const = 0;
  virtual int32_t bos_id() const = 0;  // first id of the template's prefix; -1 when none
};

}  // namespace shardvec::llm

#endif  // SHARDVEC_LLM_TOKENIZER_H_
