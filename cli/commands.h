// The shardvec command line's client commands. Each returns the process exit code and
// prints a one-line "error: CODE: message" on failure.
#ifndef SHARDVEC_CLI_COMMANDS_H_
#define SHARDVEC_CLI_COMMANDS_H_

#include <cstdint>
#include <string>
#include <vector>

namespace shardvec::cli {

struct CreateOptions {
  std::string name;
  int dim = 0;
  std::string metric;  // empty: l2, or cosine with an embedder
  std::string index = "Flat";
  std::string device = "cpu";
  std::string embedder;        // e.g. hash-tfidf-v1; empty: the user brings vectors
  std::string fit_texts_file;  // UTF-8, one document per line, to fit the embedder on
};

struct IngestOptions {
  std::string collection;
  std::string file;      // .fvecs .bvecs .fbin .u8bin .i8bin .npy .hdf5/.h5 .jsonl
  std::string ids_file;  // .ivecs with one id per row; empty: ids are row numbers (or JSONL's)
  std::string hdf5_dataset = "train";
  int batch = 4096;          // records per stream message
  int64_t train_size = 200000;  // sample for IVF/PQ collections that are not trained yet
};

struct SearchOptions {
  std::string collection;
  std::string queries_file;
  std::vector<std::string> texts;  // text queries instead of a file (collections with an embedder)
  int text_width = 160;            // characters of each hit's text to print; 0: all
  int k = 10;
  int nprobe = 0;
  int ef_search = 0;
  int batch = 256;
  std::string out_file;  // .ivecs; empty prints results
};

struct RagOptions {
  std::string collection;
  std::string question;
  std::string query_vector_file;  // first row of a vector file; empty: the router embeds the question
  std::string embedder;           // the embedder claim sent with --query-vector
  int k = 4;
  int max_tokens = 256;
  float temperature = 0.0f;
  float top_p = 1.0f;
  uint64_t seed = 0;
  int text_width = 160;
};

struct BenchOptions {
  std::string collection;
  std::string queries_file;
  std::string groundtruth_file;
  int k = 10;
  int nprobe = 0;
  int ef_search = 0;
  int batch = 1;
  int concurrency = 1;
  double seconds = 5;
};

struct LoadWordNetOptions {
  std::string collection;
  std::string dir = "/usr/share/wordnet";
  int dim = 256;
  int batch = 1024;  // synsets per stream message
};

struct GenOptions {
  int64_t rows = 10000;
  int dim = 64;
  int clusters = 100;
  uint32_t seed = 1;
  std::string out_file;
};

// Writes clustered Gaussian vectors (cluster centres plus noise) as .fvecs.
int Generate(const GenOptions& options);

int CreateCollection(const std::string& router, const CreateOptions& options);
int ListCollections(const std::string& router);
int DescribeCollection(const std::string& router, const std::string& name);
int DropCollection(const std::string& router, const std::string& name);
int Ingest(const std::string& router, const IngestOptions& options);
// Creates a text collection (Flat, cosine, the built-in embedder fitted on WordNet's
// synsets) unless it exists, then loads one record per synset, embedded by the router.
int LoadWordNet(const std::string& router, const LoadWordNetOptions& options);
// Streams the answer to stdout as it comes, then the numbered sources.
int Rag(const std::string& router, const RagOptions& o);

int Search(const std::string& router, const SearchOptions& options);
int Bench(const std::string& router, const BenchOptions& options);
int Status(const std::string& router);
// Adds or removes a shard server; slots move while the cluster keeps serving.
int AddShard(const std::string& router, const std::string& address);
int RemoveShard(const std::string& router, const std::string& address);

}  // namespace shardvec::cli

#endif  // SHARDVEC_CLI_COMMANDS_H_
