// Side-by-side benchmark of the same data and index: FAISS in one process versus
// shardvec through the router with 1 and with 4 shards (real processes on loopback,
// started with `shardvec local up`). Prints one table; see bench/RESULTS.md.
//
//   bazel run -c opt //bench:router_bench -- --seconds 3
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/process.h"
#include "common/server_util.h"
#include "common/stats.h"
#include "common/vecs_io.h"
#include "faiss/IndexFlat.h"
#include "faiss/IndexIVF.h"
#include "faiss/index_factory.h"
#include "proto/shardvec.grpc.pb.h"

namespace shardvec::bench {
namespace {

struct Dataset {
  std::string name;
  std::string index;
  int nprobe = 0;
  FloatMatrix base;
  FloatMatrix queries;
  std::vector<faiss::Index::idx_t> truth;  // exact top-10 of the first kTruthQueries queries
};

constexpr int kK = 10;
constexpr int kTruthQueries = 256;

struct Row {
  std::string dataset, system;
  int batch = 0;
  double qps = 0, p50 = 0, p99 = 0, recall = 0;
};

// Clustered Gaussian data: many cluster centres, rows = centre + noise, so IVF
// behaves as on real embeddings rather than on uniform noise.
void Generate(int64_t rows, int64_t queries, int dim, uint32_t seed, FloatMatrix* base, FloatMatrix* q) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  const int clusters = 2000;
  std::vector<float> centres(static_cast<size_t>(clusters) * dim);
  for (float& x : centres) x = normal(rng);
  auto fill = [&](int64_t n, FloatMatrix* m) {
    *m = FloatMatrix{n, dim, std::vector<float>(static_cast<size_t>(n) * dim)};
    for (int64_t i = 0; i < n; ++i) {
      const float* c = centres.data() + static_cast<size_t>(rng() % clusters) * dim;
      for (int j = 0; j < dim; ++j) m->data[i * dim + j] = c[j] + 0.35f * normal(rng);
    }
  };
  fill(rows, base);
  fill(queries, q);
}

double Recall(const std::vector<faiss::Index::idx_t>& truth, const std::vector<int64_t>& got) {
  int64_t hits = 0;
  for (int q = 0; q < kTruthQueries; ++q) {
    absl::flat_hash_set<int64_t> want(truth.begin() + q * kK, truth.begin() + (q + 1) * kK);
    for (int j = 0; j < kK; ++j) hits += want.contains(got[q * kK + j]);
  }
  return static_cast<double>(hits) / (kTruthQueries * kK);
}

// Runs `search(first_query, n, labels_out)` over the queries in batches for at least
// `seconds` (and at least one pass), one batch at a time; latency per batch.
template <typename SearchFn>
Row Measure(const Dataset& d, int batch, double seconds, SearchFn search) {
  Row row;
  row.batch = batch;
  std::vector<int64_t> labels(static_cast<size_t>(std::max<int64_t>(batch, kTruthQueries)) * kK);
  // Recall on the first kTruthQueries queries, in batches of `batch`.
  std::vector<int64_t> got(static_cast<size_t>(kTruthQueries) * kK);
  for (int q = 0; q < kTruthQueries; q += batch) {
    int n = std::min(batch, kTruthQueries - q);
    search(q, n, labels.data());
    std::copy(labels.begin(), labels.begin() + n * kK, got.begin() + q * kK);
  }
  row.recall = Recall(d.truth, got);
  std::vector<double> lat;
  int64_t done = 0;
  const int64_t nq = d.queries.rows;
  const absl::Time start = absl::Now();
  for (int64_t q = 0;; q += batch) {
    if (q + batch > nq) q = 0;
    if (absl::Now() - start > absl::Seconds(seconds) && done >= std::min<int64_t>(nq, 4 * batch)) break;
    absl::Time t0 = absl::Now();
    search(static_cast<int>(q), batch, labels.data());
    lat.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
    done += batch;
  }
  const double secs = absl::ToDoubleSeconds(absl::Now() - start);
  row.qps = done / secs;
  row.p50 = Percentile(lat, 50);
  row.p99 = Percentile(lat, 99);
  return row;
}

std::unique_ptr<faiss::Index> BuildFaiss(const Dataset& d) {
  std::unique_ptr<faiss::Index> index(faiss::index_factory(d.base.dim, d.index.c_str()));
  if (!index->is_trained) index->train(std::min<int64_t>(d.base.rows, 256 * 1024), d.base.data.data());
  index->add(d.base.rows, d.base.data.data());
  if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(index.get())) ivf->nprobe = d.nprobe;
  return index;
}

absl::Status UpsertAll(v1::ShardVec::Stub* stub, const std::string& name, const FloatMatrix& m) {
  const int64_t kBatch = 10000;
  std::atomic<int64_t> next{0};
  absl::Status error;
  absl::Mutex mu;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int64_t b = next.fetch_add(kBatch); b < m.rows; b = next.fetch_add(kBatch)) {
        v1::UpsertRequest req;
        req.set_collection(name);
        for (int64_t i = b; i < std::min(m.rows, b + kBatch); ++i) {
          v1::Record* r = req.add_records();
          r->set_id(static_cast<uint64_t>(i));
          r->mutable_vector()->Add(m.row(i), m.row(i) + m.dim);
        }
        v1::UpsertResponse resp;
        grpc::ClientContext ctx;
        grpc::Status s = stub->Upsert(&ctx, req, &resp);
        if (!s.ok()) {
          absl::MutexLock lock(&mu);
          error = absl::InternalError(s.error_message());
          return;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  return error;
}

absl::StatusOr<std::vector<Row>> ThroughRouter(const Dataset& d, int shards, double seconds,
                                               const std::string& shardvec, int port) {
  char tmpl[] = "/tmp/shardvec-bench-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp");
  auto cluster = ChildProcess::Start({shardvec, "local", "up", "--shards", std::to_string(shards), "--port",
                                      std::to_string(port), "--data-dir", tmpl});
  if (!cluster.ok()) return cluster.status();
  if (auto line = (*cluster)->WaitForLine("ready", absl::Seconds(60)); !line.ok()) return line.status();
  auto stub = v1::ShardVec::NewStub(MakeChannel(absl::StrCat("127.0.0.1:", port)));
  v1::CreateCollectionRequest create;
  create.mutable_spec()->set_name("bench");
  create.mutable_spec()->set_dim(d.base.dim);
  create.mutable_spec()->set_index_spec(d.index);
  v1::CreateCollectionResponse created;
  grpc::ClientContext ctx;
  if (grpc::Status s = stub->CreateCollection(&ctx, create, &created); !s.ok()) {
    return absl::InternalError(s.error_message());
  }
  const absl::Time t0 = absl::Now();
  if (d.index != "Flat") {
    // Shared training on the same sample the in-process index trains on.
    v1::TrainResponse trained;
    grpc::ClientContext train_ctx;
    auto writer = stub->Train(&train_ctx, &trained);
    const int64_t sample = std::min<int64_t>(d.base.rows, 256 * 1024);
    for (int64_t first = 0; first < sample; first += 4096) {
      v1::TrainRequest msg;
      msg.set_collection("bench");
      for (int64_t i = first; i < std::min(sample, first + 4096); ++i) {
        msg.add_samples()->mutable_values()->Add(d.base.row(i), d.base.row(i) + d.base.dim);
      }
      writer->Write(msg);
    }
    writer->WritesDone();
    if (grpc::Status s = writer->Finish(); !s.ok()) return absl::InternalError(s.error_message());
  }
  if (absl::Status s = UpsertAll(stub.get(), "bench", d.base); !s.ok()) return s;
  std::fprintf(stderr, "  %d shard(s): loaded %lld vectors in %.1f s\n", shards, static_cast<long long>(d.base.rows),
               absl::ToDoubleSeconds(absl::Now() - t0));

  auto search = [&](int first, int n, int64_t* labels) {
    v1::SearchRequest req;
    req.set_collection("bench");
    req.set_k(kK);
    req.mutable_params()->set_nprobe(d.nprobe);
    for (int i = first; i < first + n; ++i) {
      req.add_queries()->mutable_values()->Add(d.queries.row(i), d.queries.row(i) + d.queries.dim);
    }
    v1::SearchResponse resp;
    grpc::ClientContext c;
    grpc::Status s = stub->Search(&c, req, &resp);
    if (!s.ok()) {
      std::fprintf(stderr, "search failed: %s\n", s.error_message().c_str());
      std::exit(1);
    }
    for (int i = 0; i < n; ++i) {
      const v1::QueryResult& r = resp.results(i);
      for (int j = 0; j < kK; ++j) labels[i * kK + j] = j < r.ids_size() ? static_cast<int64_t>(r.ids(j)) : -1;
    }
  };
  std::vector<Row> rows;
  for (int batch : {1, 256}) {
    Row row = Measure(d, batch, seconds, search);
    row.system = absl::StrCat("router, ", shards, shards == 1 ? " shard" : " shards");
    rows.push_back(row);
  }
  (*cluster)->Stop();
  return rows;
}

void Print(const Row& r) {
  std::printf("| %-10s | %-22s | %5d | %10.1f | %8.3f | %8.3f | %6.3f |\n", r.dataset.c_str(), r.system.c_str(), r.batch,
              r.qps, r.p50, r.p99, r.recall);
  std::fflush(stdout);
}

}  // namespace
}  // namespace shardvec::bench

int main(int argc, char** argv) {
  using namespace shardvec::bench;
  // The in-process peer gets the same OpenMP setting as the shard servers.
  shardvec::EnsurePassiveOpenMp(argv);
  shardvec::InstallTerminationHandler();
  CLI::App app{"router_bench: FAISS in-process vs shardvec through the router"};
  double seconds = 3;
  int64_t flat_rows = 200000, ivf_rows = 1000000;
  std::string shardvec = "cli/shardvec";
  std::vector<int> shard_counts = {1, 4};
  std::string only;
  app.add_option("--seconds", seconds, "Minimum time per measurement")->capture_default_str();
  app.add_option("--flat-rows", flat_rows, "Rows of the Flat data set")->capture_default_str();
  app.add_option("--ivf-rows", ivf_rows, "Rows of the IVF1024,Flat data set")->capture_default_str();
  app.add_option("--shardvec", shardvec, "Path of the shardvec binary")->capture_default_str();
  app.add_option("--shards", shard_counts, "Shard counts to measure")->delimiter(',');
  app.add_option("--only", only, "flat or ivf");
  CLI11_PARSE(app, argc, argv);

  std::vector<Dataset> sets;
  if (only.empty() || only == "flat") sets.push_back({absl::StrCat("flat-", flat_rows / 1000, "k"), "Flat", 0});
  if (only.empty() || only == "ivf") {
    sets.push_back({absl::StrCat("ivf-", ivf_rows / 1000, "k"), "IVF1024,Flat", 16});
  }
  std::printf("| data set   | system                 | batch |        QPS |  p50 ms |  p99 ms | recall@10 |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|\n");
  int port = 0;
  for (Dataset& d : sets) {
    Generate(d.index == "Flat" ? flat_rows : ivf_rows, 4096, 128, 7, &d.base, &d.queries);
    {
      faiss::IndexFlatL2 exact(d.base.dim);
      exact.add(d.base.rows, d.base.data.data());
      std::vector<float> dist(kTruthQueries * kK);
      d.truth.resize(kTruthQueries * kK);
      exact.search(kTruthQueries, d.queries.data.data(), kK, dist.data(), d.truth.data());
    }
    std::fprintf(stderr, "%s: building in-process FAISS %s\n", d.name.c_str(), d.index.c_str());
    std::unique_ptr<faiss::Index> index = BuildFaiss(d);
    std::vector<Row> rows;
    for (int batch : {1, 256}) {
      Row row = Measure(d, batch, seconds, [&](int first, int n, int64_t* labels) {
        std::vector<float> dist(static_cast<size_t>(n) * kK);
        index->search(n, d.queries.row(first), kK, dist.data(), labels);
      });
      row.system = "FAISS in-process";
      rows.push_back(row);
    }
    index.reset();
    for (int shards : shard_counts) {
      if (port == 0) port = 21000 + static_cast<int>(getpid() % 2000) * 10;
      port += 10;
      auto router_rows = ThroughRouter(d, shards, seconds, shardvec, port);
      if (!router_rows.ok()) {
        std::fprintf(stderr, "error: %s\n", router_rows.status().ToString().c_str());
        return 1;
      }
      rows.insert(rows.end(), router_rows->begin(), router_rows->end());
    }
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.batch < b.batch; });
    for (Row& r : rows) {
      r.dataset = d.name;
      Print(r);
    }
    for (const Row& r : rows) {
      if (r.system == "FAISS in-process") continue;
      for (const Row& base : rows) {
        if (base.system != "FAISS in-process" || base.batch != r.batch) continue;
        std::printf("  %s %s batch %d: QPS %.2fx of in-process, p50 %+.3f ms\n", d.name.c_str(), r.system.c_str(),
                    r.batch, r.qps / base.qps, r.p50 - base.p50);
      }
    }
  }
  return 0;
}
