// Checks that bench/synth.h data behave under IVF like the real development set: for the
// real wordnet-lsa-128 files and for synthetic sets of the given sizes, prints recall@10
// of FAISS IVF-Flat at several nprobe against exact search, plus shape statistics.
//
//   bazel build -c opt //bench:synth_check
//   bazel-bin/bench/synth_check --synthetic 115659,1000000
//
// nlist follows one rule for every size: the power of two nearest to
// 1024 * sqrt(n / 115659), i.e. IVF1024 for the real set, IVF4096 for 1M, IVF8192 for
// 10M. The quantizer trains on the first --train rows (all of the real set; synthetic rows
// are i.i.d., so a prefix is a fair sample).
//
// Columns besides recall: d1/d10 is the mean over queries of the distance to the 1st over
// the 10th neighbour; d10 quantiles over queries; LID the mean maximum-likelihood
// intrinsic dimension from each query's 20 neighbours; imbalance FAISS's imbalance factor
// of the list sizes (1 = even; the expected rows a probe scans, over the mean list).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "bench/synth.h"
#include "common/vecs_io.h"
#include "faiss/IndexFlat.h"
#include "faiss/IndexIVFFlat.h"

namespace shardvec::bench {
namespace {

using Idx = faiss::Index::idx_t;

constexpr int kK = 10;
constexpr int kLidK = 20;  // neighbours for the intrinsic-dimension estimate
constexpr int64_t kRealRows = 115659;

struct Data {
  std::string name;
  int64_t n = 0;
  int dim = 0;
  std::vector<float> base, queries;
  double generate_s = 0;
};

struct Report {
  std::string name;
  int64_t n = 0;
  int nlist = 0;
  std::vector<double> recall;  // per nprobe
  double ratio = 0;            // mean dist(1st NN) / dist(10th NN), queries
  double d1_median = 0, d10_median = 0, d10_q10 = 0, d10_q90 = 0;
  double lid = 0;        // mean MLE intrinsic dimension from 20 NN, queries
  double imbalance = 0;  // FAISS's imbalance factor of the IVF lists
  size_t largest_list = 0;
  double generate_s = 0, train_s = 0;
};

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

int NlistFor(int64_t n) {
  const double target = 1024.0 * std::sqrt(static_cast<double>(n) / kRealRows);
  return 1 << std::max(0, static_cast<int>(std::lround(std::log2(target))));
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

Report Check(const Data& data, const std::vector<int>& nprobes, int64_t train_rows) {
  Report rep;
  rep.name = data.name;
  rep.n = data.n;
  rep.generate_s = data.generate_s;
  rep.nlist = NlistFor(data.n);
  const int d = data.dim;
  const int64_t nq = static_cast<int64_t>(data.queries.size()) / d;

  faiss::IndexFlatL2 flat(d);
  flat.add(data.n, data.base.data());
  const int kt = kLidK + 1;
  std::vector<float> dist(nq * kt);
  std::vector<Idx> truth(nq * kt);
  flat.search(nq, data.queries.data(), kt, dist.data(), truth.data());

  std::vector<double> d1s, d10s;
  double ratio_sum = 0, lid_sum = 0;
  int64_t lid_count = 0;
  for (int64_t q = 0; q < nq; ++q) {
    const float* dq = dist.data() + q * kt;
    const double d1 = std::sqrt(std::max(0.0f, dq[0]));
    const double d10 = std::sqrt(std::max(0.0f, dq[kK - 1]));
    d1s.push_back(d1);
    d10s.push_back(d10);
    if (d10 > 0) ratio_sum += d1 / d10;
    const double rk = std::sqrt(std::max(0.0f, dq[kLidK]));
    double log_sum = 0;
    for (int j = 0; j < kLidK; ++j) {
      const double rj = std::sqrt(std::max(0.0f, dq[j]));
      if (rj > 0 && rk > 0) log_sum += std::log(rj / rk);
    }
    if (log_sum < 0) {
      lid_sum += -kLidK / log_sum;
      ++lid_count;
    }
  }
  rep.ratio = ratio_sum / nq;
  rep.d1_median = Median(d1s);
  rep.d10_median = Median(d10s);
  std::sort(d10s.begin(), d10s.end());
  rep.d10_q10 = d10s[d10s.size() / 10];
  rep.d10_q90 = d10s[d10s.size() * 9 / 10];
  rep.lid = lid_count ? lid_sum / lid_count : 0;

  faiss::IndexFlatL2 quantizer(d);
  faiss::IndexIVFFlat ivf(&quantizer, d, rep.nlist);
  ivf.verbose = false;
  auto start = std::chrono::steady_clock::now();
  ivf.train(std::min(data.n, train_rows), data.base.data());
  ivf.add(data.n, data.base.data());
  rep.train_s = Seconds(start);
  double sq = 0;
  for (int l = 0; l < rep.nlist; ++l) {
    const size_t size = ivf.invlists->list_size(l);
    sq += static_cast<double>(size) * size;
    rep.largest_list = std::max(rep.largest_list, size);
  }
  rep.imbalance = sq * rep.nlist / (static_cast<double>(data.n) * data.n);

  std::vector<float> got_dist(nq * kK);
  std::vector<Idx> got(nq * kK);
  for (int nprobe : nprobes) {
    ivf.nprobe = nprobe;
    ivf.search(nq, data.queries.data(), kK, got_dist.data(), got.data());
    int64_t hits = 0;
    for (int64_t q = 0; q < nq; ++q) {
      const Idx* want = truth.data() + q * kt;
      for (int a = 0; a < kK; ++a) hits += std::count(want, want + kK, got[q * kK + a]);
    }
    rep.recall.push_back(static_cast<double>(hits) / (nq * kK));
  }
  return rep;
}

bool LoadReal(const std::string& dir, int64_t nq, Data* data) {
  auto base = ReadFvecs(dir + "/base.fvecs");
  auto queries = ReadFvecs(dir + "/query.fvecs");
  if (!base.ok() || !queries.ok()) {
    std::fprintf(stderr, "cannot read %s: %s %s\n", dir.c_str(), base.status().ToString().c_str(),
                 queries.status().ToString().c_str());
    return false;
  }
  data->name = "wordnet-lsa-128 (real)";
  data->n = base->rows;
  data->dim = base->dim;
  data->base = std::move(base->data);
  data->queries = std::move(queries->data);
  data->queries.resize(std::min<int64_t>(nq, queries->rows) * data->dim);
  return true;
}

Data MakeSynthetic(const SynthSpec& knobs, int64_t n, int64_t nq) {
  SynthSpec spec = knobs;
  spec.n = n;
  Data data;
  auto start = std::chrono::steady_clock::now();
  SynthGenerator gen(spec);
  data.n = n;
  data.dim = gen.spec().dim;
  data.base.resize(static_cast<size_t>(n) * data.dim);
  gen.BaseRows(0, n, data.base.data());
  data.generate_s = Seconds(start);
  data.queries.resize(static_cast<size_t>(nq) * data.dim);
  gen.QueryRows(0, nq, data.queries.data());
  const SynthSpec& s = gen.spec();
  data.name =
      absl::StrFormat("synth C=%d r=%d s=%.2f~%.2f e=%.2f z=%.2f g=%.1f/%.2f", s.clusters, s.intrinsic_dim,
                      s.spread, s.spread_sigma, s.noise, s.zipf, s.group_size, s.group_spread);
  return data;
}

void Print(const std::vector<Report>& reports, const std::vector<int>& nprobes) {
  std::string header = "| data set | n | nlist |";
  std::string rule = "|---|---:|---:|";
  for (int p : nprobes) {
    header += absl::StrFormat(" R@10 np%d |", p);
    rule += "---:|";
  }
  header += " d1/d10 | med d1 | d10 q10 / q50 / q90 | LID | imbalance | max list | gen s | train s |";
  rule += "---:|---:|---:|---:|---:|---:|---:|---:|";
  std::printf("%s\n%s\n", header.c_str(), rule.c_str());
  for (const Report& r : reports) {
    std::string line = absl::StrFormat("| %s | %d | %d |", r.name, r.n, r.nlist);
    for (double v : r.recall) line += absl::StrFormat(" %.3f |", v);
    line += absl::StrFormat(" %.3f | %.3f | %.3f / %.3f / %.3f | %.1f | %.2f | %d | %.2f | %.1f |", r.ratio,
                            r.d1_median, r.d10_q10, r.d10_median, r.d10_q90, r.lid, r.imbalance,
                            r.largest_list, r.generate_s, r.train_s);
    std::printf("%s\n", line.c_str());
  }
  std::fflush(stdout);
}

int Main(int argc, char** argv) {
  CLI::App app{"Recall of IVF on real versus synthetic data (bench/synth.h)."};
  std::string real_dir = "/work/shared/data/wordnet-lsa-128";
  std::vector<int64_t> sizes;
  int64_t nq = 1000;
  int64_t train_rows = 160000;
  std::vector<int> nprobes = {1, 4, 16, 64};
  bool generate_only = false;
  SynthSpec knobs;
  app.add_option("--real", real_dir, "directory of the real set; empty to skip it");
  app.add_option("--synthetic", sizes, "synthetic sizes to check")->delimiter(',');
  app.add_option("--queries", nq, "queries per data set");
  app.add_option("--train", train_rows, "at most this many rows train the IVF quantizer");
  app.add_option("--nprobe", nprobes, "nprobe values")->delimiter(',');
  app.add_option("--seed", knobs.seed);
  app.add_option("--dim", knobs.dim);
  app.add_option("--clusters", knobs.clusters, "0 = default rule");
  app.add_option("--clusters-per-sqrt-n", knobs.clusters_per_sqrt_n);
  app.add_option("--intrinsic-dim", knobs.intrinsic_dim);
  app.add_option("--spread", knobs.spread);
  app.add_option("--spread-sigma", knobs.spread_sigma);
  app.add_option("--noise", knobs.noise);
  app.add_option("--zipf", knobs.zipf);
  app.add_option("--group-size", knobs.group_size);
  app.add_option("--group-spread", knobs.group_spread);
  app.add_flag("--generate-only", generate_only, "only time the generation of each synthetic size");
  CLI11_PARSE(app, argc, argv);

  if (generate_only) {
    for (int64_t n : sizes) {
      Data data = MakeSynthetic(knobs, n, 0);
      absl::PrintF("%s: %d x %d in %.2f s (%.2f M rows/s)\n", data.name, n, data.dim, data.generate_s,
                   n / data.generate_s / 1e6);
    }
    return 0;
  }
  std::vector<Report> reports;
  if (!real_dir.empty()) {
    Data real;
    if (!LoadReal(real_dir, nq, &real)) return 1;
    reports.push_back(Check(real, nprobes, train_rows));
    Print(reports, nprobes);
  }
  for (int64_t n : sizes) {
    reports.push_back(Check(MakeSynthetic(knobs, n, nq), nprobes, train_rows));
    Print({reports.back()}, nprobes);
  }
  std::printf("\n");
  Print(reports, nprobes);
  return 0;
}

}  // namespace
}  // namespace shardvec::bench

int main(int argc, char** argv) { return shardvec::bench::Main(argc, argv); }
