// shardvec-generator: serves a Llama-family checkpoint over gRPC (proto/generator.proto).
//
//   shardvec-generator --model /models/llama-3.2-1b --device cuda --tp 2 --port 7100
#include <string>

#include "CLI/CLI.hpp"
#include "common/server_util.h"
#include "llm/service/generator_server.h"

int main(int argc, char** argv) {
  shardvec::InstallTerminationHandler();
  shardvec::llm::GeneratorServerOptions options;
  CLI::App app{"shardvec-generator: a Llama-family model served over gRPC"};
  shardvec::llm::AddGeneratorFlags(&app, &options);
  CLI11_PARSE(app, argc, argv);
  return shardvec::llm::RunGeneratorServer(options, argv[0]);
}
