// The gRPC face of the generator (proto/generator.proto): validates a request, tokenizes
// its prompt, submits it to the continuous-batching Engine and streams the tokens back as
// the engine produces them, with their text decoded to complete UTF-8.
//
//   llm::Engine engine(model.get(), {.max_batch = 64});
//   engine.Start();
//   llm::GeneratorService service(&engine, tokenizer.get(), info);
//   ServeUntilSignal("generator", "127.0.0.1", port, &service);
#ifndef SHARDVEC_LLM_SERVICE_GENERATOR_SERVICE_H_
#define SHARDVEC_LLM_SERVICE_GENERATOR_SERVICE_H_

#include <string>

#include "absl/status/statusor.h"
#include "llm/engine.h"
#include "llm/tokenizer.h"
#include "proto/generator.grpc.pb.h"

namespace shardvec::llm {

// Checks a request against the model (INVALID_ARGUMENT naming the field;
// FAILED_PRECONDITION for a text prompt when the model has no tokenizer) and turns it
// into an engine request: the prompt's token ids and the sampling parameters with the
// proto's defaults applied.
absl::StatusOr<GenerateRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                                const Tokenizer* tokenizer, int vocab_size,
                                                int max_seq_len);

// Splits decoded bytes into the longest prefix of complete UTF-8 sequences and the
// tail of an unfinished one (kept for the next token).
size_t CompleteUtf8Prefix(const std::string& bytes);

// Valid UTF-8 for a proto string field: each maximal invalid subsequence becomes one
// U+FFFD, as Rust's String::from_utf8_lossy (and so `tokenizers`' decode) does.
std::string LossyUtf8(const std::string& bytes);

const char* FinishReasonName(FinishReason reason);

class GeneratorService final : public v1::Generator::Service {
 public:
  // tokenizer may be null (token ids only). The engine must be started.
  GeneratorService(Engine* engine, const Tokenizer* tokenizer, v1::ModelInfo info);

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

 private:
  Engine* const engine_;
  const Tokenizer* const tokenizer_;
  const v1::ModelInfo info_;
};

}  // namespace shardvec::llm

#endif  // SHARDVEC_LLM_SERVICE_GENERATOR_SERVICE_H_
