// The FAISS GPU side of the side-by-side GPU benchmark: GpuIndexFlatL2/IP (float32 and
// float16 storage) and GpuIndexIVFFlat on one device, timed per batch size and k.
// Queries start and end in host memory, so each time includes the copies both ways,
// as a service would see them. Prints a Markdown table and, with --csv, one line per row.
//
//   bazel run --config=faiss_gpu -c opt //bench:faiss_gpu_bench -- --synthetic 1000000 --dim 128
//   bazel run --config=faiss_gpu -c opt //bench:faiss_gpu_bench -- --base base.fvecs
//       --queries query.fvecs --groundtruth gt.ivecs --csv out.csv
//
// Needs the cache of scripts/build_faiss_gpu.sh.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <vector>

#include <cuda_runtime_api.h>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/stats.h"
#include "bench/synth.h"
#include "common/vecs_io.h"
#include "faiss/MetricType.h"
#include "faiss/gpu/GpuIndexFlat.h"
#include "faiss/gpu/GpuIndexIVFFlat.h"
#include "faiss/gpu/StandardGpuResources.h"
#include "faiss/gpu/impl/IndexUtils.h"
#include "faiss/impl/FaissException.h"

namespace shardvec::bench {
namespace {

using Idx = faiss::Index::idx_t;

constexpr int kRecallK = 10;

#define SHARDVEC_CUDA_CHECK(expr) ::shardvec::bench::CheckCuda((expr), #expr, __FILE__, __LINE__)

void CheckCuda(cudaError_t err, const char* expr, const char* file, int line) {
  if (err != cudaSuccess) {
    throw std::runtime_error(absl::StrFormat("%s:%d: %s: CUDA error %d (%s)", file, line, expr,
                                             static_cast<int>(err), cudaGetErrorString(err)));
  }
}

struct DataOptions {
  std::string base_path, queries_path, truth_path;
  int64_t synthetic_rows = 0;
  int64_t synthetic_queries = 10000;
  int dim = 128;
  uint64_t seed = 7;  // gpu_bench's seed: the same synthetic rows
  std::string name;  // empty: from the base file's name, or "synthetic"
};

struct Dataset {
  std::string name;
  FloatMatrix base;
  FloatMatrix queries;
  IntMatrix truth;  // rows == 0 when no ground truth file was given
};

std::string StemOf(const std::string& path) {
  std::string name = path.substr(path.find_last_of('/') + 1);
  const size_t dot = name.find('.');
  return dot == std::string::npos ? name : name.substr(0, dot);
}

// The one place data come from: files, or the synthetic generator.
absl::StatusOr<Dataset> LoadOrGenerate(const DataOptions& opt) {
  Dataset data;
  if (opt.synthetic_rows > 0) {
    // The same rows gpu_bench generates for the same size, dimension and seed.
    SynthSpec spec;
    spec.n = opt.synthetic_rows;
    spec.dim = opt.dim;
    spec.seed = opt.seed;
    SynthGenerator gen(spec);
    data.base.rows = opt.synthetic_rows;
    data.base.dim = opt.dim;
    data.base.data.resize(static_cast<size_t>(opt.synthetic_rows) * opt.dim);
    gen.BaseRows(0, opt.synthetic_rows, data.base.data.data());
    data.queries.rows = opt.synthetic_queries;
    data.queries.dim = opt.dim;
    data.queries.data.resize(static_cast<size_t>(opt.synthetic_queries) * opt.dim);
    gen.QueryRows(0, opt.synthetic_queries, data.queries.data.data());
    data.name = opt.name.empty() ? "synthetic" : opt.name;
    return data;
  }
  absl::StatusOr<FloatMatrix> base = ReadFvecs(opt.base_path);
  if (!base.ok()) return base.status();
  absl::StatusOr<FloatMatrix> queries = ReadFvecs(opt.queries_path);
  if (!queries.ok()) return queries.status();
  if (base->dim != queries->dim) {
    return absl::InvalidArgumentError(absl::StrFormat("base has dimension %d but queries have %d", base->dim,
                                                      queries->dim));
  }
  if (base->rows == 0 || queries->rows == 0) return absl::InvalidArgumentError("base or queries file is empty");
  data.base = *std::move(base);
  data.queries = *std::move(queries);
  if (!opt.truth_path.empty()) {
    absl::StatusOr<IntMatrix> truth = ReadIvecs(opt.truth_path);
    if (!truth.ok()) return truth.status();
    if (truth->dim < kRecallK) {
      return absl::InvalidArgumentError(absl::StrFormat("%s has %d neighbours per query; recall@%d needs %d",
                                                        opt.truth_path, truth->dim, kRecallK, kRecallK));
    }
    data.truth = *std::move(truth);
  }
  data.name = opt.name.empty() ? StemOf(opt.base_path) : opt.name;
  return data;
}

struct RunOptions {
  std::vector<std::string> metrics{"l2", "ip"};
  std::vector<std::string> storages{"f32", "f16"};
  std::vector<std::string> indexes{"flat", "ivfflat"};
  std::vector<int> batches{1, 16, 256, 4096};
  std::vector<int> ks{10, 100};
  std::vector<int> nprobes{1, 8, 32, 128};
  int nlist = 1024;
  int64_t train_rows = 0;  // 0: min(n, 64 * nlist)
  std::string truth_metric = "l2";
  int64_t recall_queries = 10000;
  int warmup = 5;
  int min_repeats = 10;
  double min_seconds = 0.5;
  int device = 0;
};

struct Row {
  std::string storage, metric, index;
  int batch = 0, k = 0, nprobe = 0;
  double ms_per_batch = 0, qps = 0;
  std::optional<double> recall;
};

// Markdown on stdout as rows arrive; CSV lines to a file, flushed per row.
class Report {
 public:
  Report(const Dataset& data, std::FILE* csv) : data_(data), csv_(csv) {
    std::printf("| dataset | n | d | storage | metric | index | nprobe | batch | k | ms/batch | QPS | recall@10 |\n");
    std::printf("|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|\n");
    std::fflush(stdout);
    if (csv_ != nullptr) {
      std::fprintf(csv_, "impl,dataset,n,d,storage,metric,index,batch,k,nprobe,ms_per_batch,qps,recall_at_10\n");
      std::fflush(csv_);
    }
  }

  void Add(const Row& r) {
    const std::string recall = r.recall ? absl::StrFormat("%.4f", *r.recall) : "";
    absl::PrintF("| %s | %d | %d | %s | %s | %s | %s | %d | %d | %.4f | %.0f | %s |\n", data_.name, data_.base.rows,
                data_.base.dim, r.storage, r.metric, r.index, r.nprobe > 0 ? absl::StrCat(r.nprobe) : "-",
                r.batch, r.k, r.ms_per_batch, r.qps, r.recall ? recall : "-");
    std::fflush(stdout);
    if (csv_ != nullptr) {
      absl::FPrintF(csv_, "faiss_gpu,%s,%d,%d,%s,%s,%s,%d,%d,%d,%.6f,%.1f,%s\n", data_.name, data_.base.rows,
                    data_.base.dim, r.storage, r.metric, r.index, r.batch, r.k, r.nprobe, r.ms_per_batch, r.qps,
                    recall);
      std::fflush(csv_);
    }
  }

  void Note(const std::string& note) { notes_.push_back(note); }

  void PrintNotes() const {
    if (notes_.empty()) return;
    std::printf("\nNotes:\n");
    for (const std::string& n : notes_) std::printf("- %s\n", n.c_str());
  }

 private:
  const Dataset& data_;
  std::FILE* csv_;
  std::vector<std::string> notes_;
};

// Queries tiled cyclically to nq + batch rows, so batch r is the contiguous rows
// starting at (r * batch) % nq: consecutive batches use different queries.
class QueryPool {
 public:
  QueryPool(const FloatMatrix& queries, int batch) : nq_(queries.rows), dim_(queries.dim), batch_(batch) {
    const int64_t rows = nq_ + batch;
    rows_.resize(static_cast<size_t>(rows) * dim_);
    for (int64_t i = 0; i < rows; ++i) {
      std::copy_n(queries.row(i % nq_), dim_, rows_.data() + static_cast<size_t>(i) * dim_);
    }
  }

  const float* Batch(int64_t r) const {
    return rows_.data() + static_cast<size_t>((r * batch_) % nq_) * dim_;
  }

 private:
  int64_t nq_;
  int dim_;
  int batch_;
  std::vector<float> rows_;
};

// Median milliseconds per search of `batch` queries: `warmup` untimed batches, then at
// least `min_repeats` timed ones and at least `min_seconds` in all.
double MedianMsPerBatch(faiss::Index& index, const FloatMatrix& queries, int batch, int k, const RunOptions& opt) {
  const QueryPool pool(queries, batch);
  std::vector<float> distances(static_cast<size_t>(batch) * k);
  std::vector<Idx> labels(static_cast<size_t>(batch) * k);
  int64_t r = 0;
  for (; r < opt.warmup; ++r) index.search(batch, pool.Batch(r), k, distances.data(), labels.data());
  SHARDVEC_CUDA_CHECK(cudaDeviceSynchronize());

  using Clock = std::chrono::steady_clock;
  constexpr int64_t kMaxRepeats = 1'000'000;
  std::vector<double> ms;
  const Clock::time_point start = Clock::now();
  while (static_cast<int64_t>(ms.size()) < kMaxRepeats) {
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (static_cast<int>(ms.size()) >= opt.min_repeats && elapsed >= opt.min_seconds) break;
    const Clock::time_point t0 = Clock::now();
    // Host input and output: search returns once the results are in host memory.
    index.search(batch, pool.Batch(r++), k, distances.data(), labels.data());
    SHARDVEC_CUDA_CHECK(cudaDeviceSynchronize());
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  return Percentile(ms, 50);
}

// Top-kRecallK ids of the first `nq` queries, in chunks.
std::vector<Idx> SearchTop10(faiss::Index& index, const FloatMatrix& queries, int64_t nq) {
  constexpr int64_t kChunk = 1024;
  std::vector<Idx> labels(static_cast<size_t>(nq) * kRecallK);
  std::vector<float> distances(labels.size());
  for (int64_t first = 0; first < nq; first += kChunk) {
    const int64_t n = std::min(kChunk, nq - first);
    index.search(n, queries.row(first), kRecallK, distances.data() + first * kRecallK,
                 labels.data() + first * kRecallK);
  }
  return labels;
}

double RecallAt10(const std::vector<Idx>& truth, const std::vector<Idx>& got) {
  const int64_t nq = static_cast<int64_t>(truth.size()) / kRecallK;
  int64_t hits = 0;
  for (int64_t q = 0; q < nq; ++q) {
    const std::unordered_set<Idx> want(truth.begin() + q * kRecallK, truth.begin() + (q + 1) * kRecallK);
    for (int j = 0; j < kRecallK; ++j) hits += want.count(got[q * kRecallK + j]);
  }
  return nq == 0 ? 0 : static_cast<double>(hits) / (nq * kRecallK);
}

faiss::MetricType MetricOf(const std::string& name) {
  return name == "ip" ? faiss::METRIC_INNER_PRODUCT : faiss::METRIC_L2;
}

// Runs every (batch, k) of one built index and adds the rows.
void TimeIndex(faiss::Index& index, const Dataset& data, const RunOptions& opt, Row proto, Report& report) {
  const int max_k = faiss::gpu::getMaxKSelection();
  for (int batch : opt.batches) {
    for (int k : opt.ks) {
      if (k > max_k || k > data.base.rows) {
        report.Note(absl::StrFormat("%s %s %s k=%d skipped: FAISS GPU allows k <= %d and the base has %d rows",
                                    proto.index, proto.storage, proto.metric, k, max_k, data.base.rows));
        continue;
      }
      Row row = proto;
      row.batch = batch;
      row.k = k;
      try {
        row.ms_per_batch = MedianMsPerBatch(index, data.queries, batch, k, opt);
      } catch (const faiss::FaissException& e) {
        report.Note(absl::StrFormat("%s %s %s nprobe=%d batch=%d k=%d failed: %s", proto.index, proto.storage,
                                    proto.metric, proto.nprobe, batch, k, e.what()));
        continue;
      }
      row.qps = row.ms_per_batch > 0 ? batch / (row.ms_per_batch / 1000.0) : 0;
      report.Add(row);
    }
  }
}

std::unique_ptr<faiss::gpu::GpuIndexFlat> MakeFlat(faiss::gpu::StandardGpuResources& res, int dim,
                                                   faiss::MetricType metric, bool float16, int device) {
  faiss::gpu::GpuIndexFlatConfig config;
  config.device = device;
  config.useFloat16 = float16;
  if (metric == faiss::METRIC_INNER_PRODUCT) return std::make_unique<faiss::gpu::GpuIndexFlatIP>(&res, dim, config);
  return std::make_unique<faiss::gpu::GpuIndexFlatL2>(&res, dim, config);
}

// `rows` rows spread evenly over the base: one at a random offset in each stride.
FloatMatrix TrainingSample(const FloatMatrix& base, int64_t rows, uint64_t seed) {
  if (rows >= base.rows) return base;
  std::mt19937_64 rng(seed);
  FloatMatrix sample{rows, base.dim, std::vector<float>(static_cast<size_t>(rows) * base.dim)};
  const double stride = static_cast<double>(base.rows) / rows;
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t lo = static_cast<int64_t>(i * stride);
    const int64_t span = std::max<int64_t>(1, static_cast<int64_t>((i + 1) * stride) - lo);
    const int64_t src = std::min(base.rows - 1, lo + static_cast<int64_t>(rng() % span));
    std::copy_n(base.row(src), base.dim, sample.data.data() + static_cast<size_t>(i) * base.dim);
  }
  return sample;
}

void RunMetric(faiss::gpu::StandardGpuResources& res, const Dataset& data, const std::string& metric_name,
               const RunOptions& opt, uint64_t seed, Report& report) {
  const faiss::MetricType metric = MetricOf(metric_name);
  const int dim = data.base.dim;
  const int64_t n = data.base.rows;
  const int64_t nq_recall = std::min(data.queries.rows, opt.recall_queries);
  const bool has_file_truth = data.truth.rows > 0 && metric_name == opt.truth_metric;
  auto want = [&](const char* kind) {
    return std::find(opt.indexes.begin(), opt.indexes.end(), kind) != opt.indexes.end();
  };

  // Ground truth: the file's for its metric, else the float32 flat index's own answers.
  std::vector<Idx> truth;
  if (has_file_truth) {
    const int64_t rows = std::min(nq_recall, data.truth.rows);
    truth.resize(static_cast<size_t>(rows) * kRecallK);
    for (int64_t q = 0; q < rows; ++q) {
      std::copy_n(data.truth.row(q), kRecallK, truth.begin() + q * kRecallK);
    }
  } else {
    std::unique_ptr<faiss::gpu::GpuIndexFlat> exact = MakeFlat(res, dim, metric, false, opt.device);
    exact->add(n, data.base.data.data());
    truth = SearchTop10(*exact, data.queries, nq_recall);
  }
  const int64_t nq_truth = static_cast<int64_t>(truth.size()) / kRecallK;

  if (want("flat")) {
    for (const std::string& storage : opt.storages) {
      const bool f16 = storage == "f16";
      std::unique_ptr<faiss::gpu::GpuIndexFlat> flat = MakeFlat(res, dim, metric, f16, opt.device);
      flat->add(n, data.base.data.data());
      Row proto;
      proto.storage = storage;
      proto.metric = metric_name;
      proto.index = "Flat";
      // The float32 flat index is the reference when there is no ground truth file.
      if (has_file_truth || f16) proto.recall = RecallAt10(truth, SearchTop10(*flat, data.queries, nq_truth));
      TimeIndex(*flat, data, opt, proto, report);
    }
  }

  if (want("ivfflat")) {
    if (std::find(opt.storages.begin(), opt.storages.end(), "f16") != opt.storages.end()) {
      report.Note("IVF f16 skipped: GpuIndexIVFFlat in FAISS 1.7.3 stores lists as float32 only");
    }
    if (std::find(opt.storages.begin(), opt.storages.end(), "f32") == opt.storages.end()) return;
    const int64_t train_rows = opt.train_rows > 0 ? std::min(n, opt.train_rows) : std::min<int64_t>(n, 64LL * opt.nlist);
    if (train_rows < opt.nlist) {
      report.Note(absl::StrFormat("IVF%d skipped: %d training rows are fewer than nlist", opt.nlist, train_rows));
      return;
    }
    faiss::gpu::GpuIndexIVFFlatConfig config;
    config.device = opt.device;
    faiss::gpu::GpuIndexIVFFlat ivf(&res, dim, opt.nlist, metric, config);
    const FloatMatrix sample = TrainingSample(data.base, train_rows, seed);
    std::fprintf(stderr, "training IVF%d,Flat (%s) on %lld rows\n", opt.nlist, metric_name.c_str(),
                 static_cast<long long>(train_rows));
    ivf.train(sample.rows, sample.data.data());
    ivf.add(n, data.base.data.data());
    const int max_probe = faiss::gpu::getMaxKSelection();
    for (int nprobe : opt.nprobes) {
      if (nprobe < 1 || nprobe > opt.nlist || nprobe > max_probe) {
        report.Note(absl::StrFormat("IVF%d nprobe=%d skipped: needs 1 <= nprobe <= min(nlist, %d)", opt.nlist,
                                    nprobe, max_probe));
        continue;
      }
      ivf.setNumProbes(nprobe);
      Row proto;
      proto.storage = "f32";
      proto.metric = metric_name;
      proto.index = absl::StrCat("IVF", opt.nlist, "_Flat");
      proto.nprobe = nprobe;
      proto.recall = RecallAt10(truth, SearchTop10(ivf, data.queries, nq_truth));
      TimeIndex(ivf, data, opt, proto, report);
    }
  }
}

int Main(int argc, char** argv) {
  CLI::App app{"faiss_gpu_bench: FAISS 1.7.3 GPU Flat and IVFFlat search timings"};
  DataOptions data_opt;
  RunOptions opt;
  std::string csv_path;
  auto* base = app.add_option("--base", data_opt.base_path, "base vectors (.fvecs)");
  auto* queries = app.add_option("--queries", data_opt.queries_path, "query vectors (.fvecs)");
  app.add_option("--groundtruth", data_opt.truth_path, "exact neighbours (.ivecs), at least 10 per query")
      ->needs(queries);
  auto* synthetic = app.add_option("--synthetic", data_opt.synthetic_rows, "generate this many base rows")
                        ->excludes(base)
                        ->excludes(queries);
  base->needs(queries);
  queries->needs(base);
  app.add_option("--synthetic-queries", data_opt.synthetic_queries, "synthetic query rows")
      ->capture_default_str()
      ->needs(synthetic);
  app.add_option("--dim", data_opt.dim, "synthetic dimension")->capture_default_str();
  app.add_option("--seed", data_opt.seed, "synthetic data and training sample seed")->capture_default_str();
  app.add_option("--dataset", data_opt.name, "dataset name in the output");
  app.add_option("--metrics", opt.metrics, "l2, ip")->delimiter(',')->check(CLI::IsMember({"l2", "ip"}));
  app.add_option("--storage", opt.storages, "f32, f16")->delimiter(',')->check(CLI::IsMember({"f32", "f16"}));
  app.add_option("--indexes", opt.indexes, "flat, ivfflat")->delimiter(',')->check(CLI::IsMember({"flat", "ivfflat"}));
  app.add_option("--batches", opt.batches, "batch sizes")->delimiter(',')->check(CLI::PositiveNumber);
  app.add_option("--ks", opt.ks, "k values")->delimiter(',')->check(CLI::PositiveNumber);
  app.add_option("--nlist", opt.nlist, "IVF lists")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--nprobes", opt.nprobes, "IVF nprobe values")->delimiter(',');
  app.add_option("--train", opt.train_rows, "IVF training rows (0: min(n, 64 * nlist))")->capture_default_str();
  app.add_option("--groundtruth-metric", opt.truth_metric, "metric of --groundtruth")
      ->capture_default_str()
      ->check(CLI::IsMember({"l2", "ip"}));
  app.add_option("--recall-queries", opt.recall_queries, "queries used for recall@10")->capture_default_str();
  app.add_option("--warmup", opt.warmup, "untimed batches before timing")->capture_default_str();
  app.add_option("--min-repeats", opt.min_repeats, "timed batches, at least")->capture_default_str();
  app.add_option("--min-seconds", opt.min_seconds, "timed seconds, at least")->capture_default_str();
  app.add_option("--device", opt.device, "CUDA device")->capture_default_str();
  app.add_option("--csv", csv_path, "also write CSV rows to this file");
  CLI11_PARSE(app, argc, argv);
  if (data_opt.synthetic_rows <= 0 && data_opt.base_path.empty()) {
    std::fprintf(stderr, "give --base and --queries, or --synthetic N\n");
    return 2;
  }

  int devices = 0;
  const cudaError_t count_err = cudaGetDeviceCount(&devices);
  if (count_err != cudaSuccess || devices <= opt.device) {
    if (count_err != cudaSuccess) std::fprintf(stderr, "cudaGetDeviceCount: %s\n", cudaGetErrorString(count_err));
    std::printf("no CUDA device: skipped\n");
    return 0;
  }
  SHARDVEC_CUDA_CHECK(cudaSetDevice(opt.device));
  cudaDeviceProp prop;
  SHARDVEC_CUDA_CHECK(cudaGetDeviceProperties(&prop, opt.device));
  std::fprintf(stderr, "device %d: %s, sm_%d%d, %.1f GiB; FAISS %d.%d.%d\n", opt.device, prop.name, prop.major,
               prop.minor, prop.totalGlobalMem / double(1 << 30), FAISS_VERSION_MAJOR, FAISS_VERSION_MINOR,
               FAISS_VERSION_PATCH);

  absl::StatusOr<Dataset> data = LoadOrGenerate(data_opt);
  if (!data.ok()) {
    std::fprintf(stderr, "%s\n", data.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "%s: %lld base rows, %lld queries, d=%d\n", data->name.c_str(),
               static_cast<long long>(data->base.rows), static_cast<long long>(data->queries.rows), data->base.dim);

  std::FILE* csv = nullptr;
  if (!csv_path.empty() && (csv = std::fopen(csv_path.c_str(), "w")) == nullptr) {
    std::perror(csv_path.c_str());
    return 1;
  }
  int rc = 0;
  {
    Report report(*data, csv);
    faiss::gpu::StandardGpuResources res;
    for (const std::string& metric : opt.metrics) {
      try {
        RunMetric(res, *data, metric, opt, data_opt.seed, report);
      } catch (const faiss::FaissException& e) {
        report.Note(absl::StrCat(metric, ": FAISS error: ", e.what()));
        rc = 1;
      }
    }
    report.PrintNotes();
  }
  if (csv != nullptr) std::fclose(csv);
  return rc;
}

}  // namespace
}  // namespace shardvec::bench

int main(int argc, char** argv) {
  try {
    return shardvec::bench::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "faiss_gpu_bench: %s\n", e.what());
    return 1;
  }
}
