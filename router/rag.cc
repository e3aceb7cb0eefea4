#include "router/rag.h"

#include <cctype>

#include "absl/strings/str_cat.h"

namespace shardvec::router {
namespace {

// The longest prefix of `text` of at most `max` bytes that does not split a UTF-8
// character.
std::string CutUtf8(const std::string& text, size_t max) {
  if (text.size() <= max) return text;
  size_t end = max;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return text.substr(0, end) + " ...";
}

}  // namespace

absl::Status ValidateRagRequest(const v1::RagRequest& req) {
  if (req.question().empty()) return absl::InvalidArgumentError("question: empty");
  if (req.question().size() > kMaxQuestionBytes) {
    return absl::InvalidArgumentError(absl::StrCat("question: ", req.question().size(),
                                                   " bytes, at most ", kMaxQuestionBytes));
  }
  if (req.k() < 0 || req.k() > kMaxRagK) {
    return absl::InvalidArgumentError(
        absl::StrCat("k: ", req.k(), " is not in [1, ", kMaxRagK, "] (0 means ", kDefaultRagK, ")"));
  }
  return absl::OkStatus();
}

v1::SearchRequest RagSearchRequest(const v1::RagRequest& req) {
  v1::SearchRequest s;
  s.set_collection(req.collection());
  s.set_k(req.k() == 0 ? kDefaultRagK : req.k());
  *s.mutable_params() = req.params();
  s.set_include_payload(true);
  s.set_timeout_ms(req.timeout_ms());
  s.set_embedder(req.embedder());
  if (req.query_vector_size() > 0) {
    s.add_queries()->mutable_values()->CopyFrom(req.query_vector());
  } else {
    s.add_text_queries(req.question());
  }
  return s;
}

std::string BuildRagPrompt(const std::string& question, const std::vector<RagPassage>& passages) {
  std::string prompt =
      "Answer the question using only the numbered sources below. Cite the sources you use "
      "as [1], [2], and so on. If the sources do not answer the question, say so.\n\nSources:\n";
  for (size_t i = 0; i < passages.size(); ++i) {
    absl::StrAppend(&prompt, "[", i + 1, "] ", CutUtf8(passages[i].text, kMaxPassageBytes), "\n");
  }
  absl::StrAppend(&prompt, "\nQuestion: ", question, "\nAnswer:");
  return prompt;
}

std::vector<bool> CitedSources(const std::string& answer, size_t num_sources) {
  std::vector<bool> cited(num_sources, false);
  // Numbers inside brackets: "[2]", "[1, 3]", "[1][2]".
  bool in_bracket = false;
  size_t number = 0;
  bool have_digits = false;
  for (char c : answer) {
    if (c == '[') {
      in_bracket = true;
      number = 0;
      have_digits = false;
    } else if (in_bracket && std::isdigit(static_cast<unsigned char>(c))) {
      number = number * 10 + static_cast<size_t>(c - '0');
      have_digits = true;
      if (number > num_sources) number = num_sources + 1;  // bounded, never overflows
    } else if (in_bracket && (c == ',' || c == ']' || c == ' ')) {
      if (have_digits && number >= 1 && number <= num_sources) cited[number - 1] = true;
      number = 0;
      have_digits = false;
      if (c == ']') in_bracket = false;
    } else {
      in_bracket = false;
    }
  }
  return cited;
}

}  // namespace shardvec::router
