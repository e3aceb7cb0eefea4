// The router's Rag call, as pure functions: checking the request, the prompt with
// numbered sources the generator answers from, and which sources an answer cites.
//
//   std::vector<RagPassage> passages = ...;  // from a search with payloads
//   std::string prompt = BuildRagPrompt("what is a lion?", passages);
//   std::vector<bool> cited = CitedSources(answer_text, passages.size());
#ifndef SHARDVEC_ROUTER_RAG_H_
#define SHARDVEC_ROUTER_RAG_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "proto/shardvec.pb.h"

namespace shardvec::router {

inline constexpr int kDefaultRagK = 4;
inline constexpr int kMaxRagK = 32;
inline constexpr size_t kMaxQuestionBytes = 4096;
// A passage longer than this goes into the prompt cut at a character boundary.
inline constexpr size_t kMaxPassageBytes = 2000;

// INVALID_ARGUMENT naming question / k; nothing about the collection (the search that
// follows checks that).
absl::Status ValidateRagRequest(const v1::RagRequest& req);

// The search a Rag call makes: the question's vector, or its text for the collection's
// embedder; payloads on.
v1::SearchRequest RagSearchRequest(const v1::RagRequest& req);

struct RagPassage {
  uint64_t id = 0;
  std::string text;
};

// The prompt: an instruction, the passages as "[n] text" lines, the question, "Answer:".
std::string BuildRagPrompt(const std::string& question, const std::vector<RagPassage>& passages);

// cited[n-1]: the answer contains "[n]" (also inside "[1, 3]" or "[1][2]" forms).
std::vector<bool> CitedSources(const std::string& answer, size_t num_sources);

}  // namespace shardvec::router

#endif  // SHARDVEC_ROUTER_RAG_H_
