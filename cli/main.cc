// shardvec: the command-line client and local launcher. See README.md for usage.
#include <malloc.h>

#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "cli/commands.h"
#include "cli/local_up.h"
#include "common/server_util.h"
#include "llm/service/generator_server.h"
#include "router/router_server.h"
#include "shard/shard_server.h"

int main(int argc, char** argv) {
  // Bulk loads allocate and free multi-megabyte message buffers all the time; served
  // from the heap instead of fresh mmaps, they skip a page fault and zeroing per page.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  // Servers search with FAISS: make its OpenMP workers wait passively (re-executing
  // once if needed) before anything else runs. `local up` passes it to its children.
  if (argc >= 3 && (std::string(argv[1]) == "shard" || std::string(argv[1]) == "local")) {
    shardvec::EnsurePassiveOpenMp(argv);
  }
  // SIGINT/SIGTERM become a clean shutdown (servers snapshot, local up stops children).
  shardvec::InstallTerminationHandler();

  CLI::App app{"shardvec: sharded vector search for retrieval-augmented generation"};
  app.require_subcommand(1);
  std::string router = "127.0.0.1:7000";
  app.add_option("--router", router, "Router address HOST:PORT")->capture_default_str();

  // local up
  shardvec::cli::LocalUpOptions up;
  CLI::App* local = app.add_subcommand("local", "Run a whole cluster on this machine");
  local->require_subcommand(1);
  CLI::App* local_up = local->add_subcommand("up", "Start a router and N shards on 127.0.0.1 until SIGINT/SIGTERM");
  local_up->add_option("--shards", up.shards, "Number of shards")->capture_default_str();
  local_up->add_option("--port", up.port, "Router port; shards use the following ports")->capture_default_str();
  local_up->add_option("--shard-base-port", up.shard_base_port, "First shard port (default: --port + 1)");
  local_up->add_option("--data-dir", up.data_dir, "Cluster data directory (default: a new temporary one)");
  local_up->add_option("--gpus", up.gpus, "Every shard's --gpus (default: every visible GPU)");
  local_up->add_option("--generator-model", up.generator_model,
                       "Also serve this Hugging Face checkpoint folder for Rag calls");
  local_up->add_option("--generator-device", up.generator_device, "cpu or cuda")->capture_default_str();
  local_up->add_option("--generator-tp", up.generator_tp, "Tensor-parallel ranks of the generator")
      ->capture_default_str();

  // generator serve
  shardvec::llm::GeneratorServerOptions generator_opts;
  CLI::App* generator_cmd = app.add_subcommand("generator", "LLM generator server (proto/generator.proto)");
  generator_cmd->require_subcommand(1);
  CLI::App* generator_serve =
      generator_cmd->add_subcommand("serve", "Serve a Llama-family checkpoint in the foreground");
  shardvec::llm::AddGeneratorFlags(generator_serve, &generator_opts);

  // shard serve / router serve
  shardvec::shard::ShardServerOptions shard_opts;
  CLI::App* shard = app.add_subcommand("shard", "Shard server");
  shard->require_subcommand(1);
  CLI::App* shard_serve = shard->add_subcommand("serve", "Run one shard server in the foreground");
  shard_serve->add_option("--host", shard_opts.host, "Listen address")->capture_default_str();
  shard_serve->add_option("--port", shard_opts.port, "Listen port (0: any free port)")->capture_default_str();
  shard_serve->add_option("--data-dir", shard_opts.data_dir, "Shard data directory (records, snapshots)")->required();
  shard_serve->add_option("--snapshot-after-ops", shard_opts.snapshot_after_ops,
                          "Snapshot a collection's index after this many writes")
      ->capture_default_str();
  shard_serve->add_option("--snapshot-interval", shard_opts.snapshot_interval_s,
                          "... or this many seconds after its last snapshot, if it has writes")
      ->capture_default_str();
  shard_serve
      ->add_option("--gpus", shard_opts.gpus,
                   "CUDA devices for device-gpu collections, e.g. 0,1 (one index partition each; "
                   "default: every visible GPU)")
      ->delimiter(',')
      ->check(CLI::NonNegativeNumber);

  std::string shard_address;
  CLI::App* shard_add = shard->add_subcommand("add", "Add a running shard server; slots move to it online");
  shard_add->add_option("address", shard_address, "HOST:PORT of the shard server")->required();
  CLI::App* shard_remove = shard->add_subcommand("remove", "Move every slot off a shard, then drop it");
  shard_remove->add_option("address", shard_address, "HOST:PORT of the shard server")->required();

  shardvec::router::RouterServerOptions router_opts;
  CLI::App* router_cmd = app.add_subcommand("router", "Router server");
  router_cmd->require_subcommand(1);
  CLI::App* router_serve = router_cmd->add_subcommand("serve", "Run the router in the foreground");
  router_serve->add_option("--host", router_opts.host, "Listen address")->capture_default_str();
  router_serve->add_option("--port", router_opts.port, "Listen port (0: any free port)")->capture_default_str();
  router_serve->add_option("--data-dir", router_opts.data_dir, "Where the cluster map is kept");
  router_serve->add_option("--shards", router_opts.shards, "Shard addresses for a new cluster")->delimiter(',');
  router_serve
      ->add_option("--gpu-merge-min-batch", router_opts.gpu_merge_min_batch,
                   "Merge the shards' results on the GPU for searches of at least this many queries (0: never)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  router_serve->add_option("--generator", router_opts.generator,
                           "A shardvec generator HOST:PORT that answers Rag calls");

  // collection
  shardvec::cli::CreateOptions create;
  std::string collection_name;
  CLI::App* collection = app.add_subcommand("collection", "Create, list, describe and drop collections");
  collection->require_subcommand(1);
  CLI::App* create_cmd = collection->add_subcommand("create", "Create a collection");
  create_cmd->add_option("name", create.name, "Collection name")->required();
  create_cmd->add_option("--dim", create.dim, "Vector dimension")->required();
  create_cmd->add_option("--metric", create.metric, "l2, ip or cosine (default: l2; cosine with --embedder)");
  create_cmd->add_option("--index", create.index, "FAISS factory string, e.g. Flat, IVF1024,Flat, HNSW32")
      ->capture_default_str();
  create_cmd->add_option("--device", create.device, "cpu or gpu")->capture_default_str();
  create_cmd->add_option("--embedder", create.embedder,
                         "Built-in text embedder, hash-tfidf-v1: the router embeds records' text and text queries");
  create_cmd->add_option("--fit-texts", create.fit_texts_file,
                         "File of documents, one per line, to fit the embedder's idf on (a sample of the corpus)");
  CLI::App* list_cmd = collection->add_subcommand("list", "List collections");
  CLI::App* describe_cmd = collection->add_subcommand("describe", "Describe a collection");
  describe_cmd->add_option("name", collection_name, "Collection name")->required();
  CLI::App* drop_cmd = collection->add_subcommand("drop", "Drop a collection and its records");
  drop_cmd->add_option("name", collection_name, "Collection name")->required();

  // ingest
  shardvec::cli::IngestOptions ingest;
  CLI::App* ingest_cmd = app.add_subcommand(
      "ingest", "Bulk-load a file: .fvecs .bvecs .fbin .u8bin .i8bin .npy .hdf5/.h5 (ann-benchmarks) .jsonl");
  ingest_cmd->add_option("name", ingest.collection, "Collection name")->required();
  ingest_cmd->add_option("file", ingest.file, "File of vectors")->required();
  ingest_cmd->add_option("--ids", ingest.ids_file, ".ivecs file of ids, one per row (default: row numbers)");
  ingest_cmd->add_option("--dataset", ingest.hdf5_dataset, "HDF5 dataset to load")->capture_default_str();
  ingest_cmd->add_option("--batch", ingest.batch, "Records per stream message")->capture_default_str();
  ingest_cmd->add_option("--train-size", ingest.train_size, "Training sample for IVF/PQ collections")
      ->capture_default_str();

  // search
  shardvec::cli::SearchOptions search;
  CLI::App* search_cmd = app.add_subcommand("search", "k-NN search for the queries of a file, or for text");
  search_cmd->add_option("name", search.collection, "Collection name")->required();
  search_cmd->add_option("--queries", search.queries_file, "Queries in any ingest format (HDF5: its test set)");
  search_cmd->add_option("--text", search.texts, "A text query (repeatable), for a collection with an embedder");
  search_cmd->add_option("--text-width", search.text_width, "Characters of each hit's text to print (0: all)")
      ->capture_default_str();
  search_cmd->add_option("--k", search.k, "Neighbours per query")->capture_default_str();
  search_cmd->add_option("--nprobe", search.nprobe, "IVF lists to visit");
  search_cmd->add_option("--ef-search", search.ef_search, "HNSW candidate list size");
  search_cmd->add_option("--batch", search.batch, "Queries per request")->capture_default_str();
  search_cmd->add_option("--out", search.out_file, "Write ids as .ivecs rows instead of printing");

  // bench
  shardvec::cli::BenchOptions bench;
  CLI::App* bench_cmd = app.add_subcommand("bench", "Recall, QPS and latency against ground truth");
  bench_cmd->add_option("name", bench.collection, "Collection name")->required();
  bench_cmd->add_option("--queries", bench.queries_file, "Queries in any ingest format (HDF5: its test set)")
      ->required();
  bench_cmd->add_option("--groundtruth", bench.groundtruth_file, ".ivecs, or an ann-benchmarks .hdf5 (neighbors)")
      ->required();
  bench_cmd->add_option("--k", bench.k, "Neighbours per query")->capture_default_str();
  bench_cmd->add_option("--nprobe", bench.nprobe, "IVF lists to visit");
  bench_cmd->add_option("--ef-search", bench.ef_search, "HNSW candidate list size");
  bench_cmd->add_option("--batch", bench.batch, "Queries per request")->capture_default_str();
  bench_cmd->add_option("--concurrency", bench.concurrency, "Requests in flight")->capture_default_str();
  bench_cmd->add_option("--seconds", bench.seconds, "Minimum duration of the throughput run")->capture_default_str();

  shardvec::cli::LoadWordNetOptions wordnet;
  CLI::App* wordnet_cmd = app.add_subcommand(
      "load-wordnet", "Load WordNet's synsets (Debian's wordnet-base) as a text collection, embedded by the router");
  wordnet_cmd->add_option("name", wordnet.collection, "Collection name")->required();
  wordnet_cmd->add_option("--dir", wordnet.dir, "WordNet's data files")->capture_default_str();
  wordnet_cmd->add_option("--dim", wordnet.dim, "Vector dimension of a new collection")->capture_default_str();
  wordnet_cmd->add_option("--batch", wordnet.batch, "Synsets per stream message")->capture_default_str();

  shardvec::cli::GenOptions gen;
  CLI::App* gen_cmd = app.add_subcommand("gen", "Write sample vectors (clustered Gaussian) to a .fvecs file");
  gen_cmd->add_option("out", gen.out_file, "Output .fvecs file")->required();
  gen_cmd->add_option("--rows", gen.rows, "Number of vectors")->capture_default_str();
  gen_cmd->add_option("--dim", gen.dim, "Dimension")->capture_default_str();
  gen_cmd->add_option("--clusters", gen.clusters, "Number of clusters")->capture_default_str();
  gen_cmd->add_option("--seed", gen.seed, "Random seed")->capture_default_str();

  CLI::App* status_cmd = app.add_subcommand("status", "Shards, slots and record counts");

  shardvec::cli::RagOptions rag;
  bool rag_embed = false;
  CLI::App* rag_cmd = app.add_subcommand(
      "rag", "Answer a question from a collection's passages (needs a router started with --generator)");
  rag_cmd->add_option("name", rag.collection, "Collection name")->required();
  rag_cmd->add_option("question", rag.question, "The question")->required();
  CLI::Option* rag_vec = rag_cmd->add_option("--query-vector", rag.query_vector_file,
                                             "The question's embedding: the first row of a vector file");
  rag_cmd->add_flag("--embed", rag_embed, "Embed the question with the collection's built-in embedder (the default)")
      ->excludes(rag_vec);
  rag_cmd->add_option("--embedder", rag.embedder, "With --query-vector: the embedder that made it");
  rag_cmd->add_option("--k", rag.k, "Passages to retrieve")->capture_default_str();
  rag_cmd->add_option("--max-tokens", rag.max_tokens, "Most tokens to generate")->capture_default_str();
  rag_cmd->add_option("--temperature", rag.temperature, "0: greedy")->capture_default_str();
  rag_cmd->add_option("--top-p", rag.top_p, "Nucleus sampling mass")->capture_default_str();
  rag_cmd->add_option("--seed", rag.seed, "Sampling seed")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "error: %s (see --help)\n", e.what());
    return 2;
  }

  using namespace shardvec::cli;
  if (local_up->parsed()) return LocalUp(up);
  if (shard_serve->parsed()) return shardvec::shard::RunShardServer(shard_opts);
  if (router_serve->parsed()) return shardvec::router::RunRouterServer(router_opts);
  if (generator_serve->parsed()) {
    return shardvec::llm::RunGeneratorServer(generator_opts, argv[0], {"generator", "serve"});
  }
  if (rag_cmd->parsed()) return Rag(router, rag);
  if (create_cmd->parsed()) return CreateCollection(router, create);
  if (list_cmd->parsed()) return ListCollections(router);
  if (describe_cmd->parsed()) return DescribeCollection(router, collection_name);
  if (drop_cmd->parsed()) return DropCollection(router, collection_name);
  if (ingest_cmd->parsed()) return Ingest(router, ingest);
  if (search_cmd->parsed()) return Search(router, search);
  if (wordnet_cmd->parsed()) return LoadWordNet(router, wordnet);
  if (bench_cmd->parsed()) return Bench(router, bench);
  if (gen_cmd->parsed()) return Generate(gen);
  if (shard_add->parsed()) return AddShard(router, shard_address);
  if (shard_remove->parsed()) return RemoveShard(router, shard_address);
  if (status_cmd->parsed()) return Status(router);
  return 2;
}
