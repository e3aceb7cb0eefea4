#include "cli/commands.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdio>
#include <deque>
#include <fstream>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/server_util.h"
#include "common/stats.h"
#include "common/status.h"
#include "common/validate.h"
#include "common/vecs_io.h"
#include "common/vector_source.h"
#include "embed/text_embedder.h"
#include "embed/wordnet.h"
#include "proto/shardvec.grpc.pb.h"

namespace shardvec::cli {
namespace {

using Stub = v1::ShardVec::Stub;

std::unique_ptr<Stub> Connect(const std::string& router) { return v1::ShardVec::NewStub(MakeChannel(router)); }

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  return 1;
}

int Fail(const grpc::Status& s) { return Fail(FromGrpc(s)); }

void SetDeadline(grpc::ClientContext* ctx, absl::Duration d) { ctx->set_deadline(absl::ToChronoTime(absl::Now() + d)); }

const char* MetricName(v1::Metric m) {
  switch (m) {
    case v1::IP:
      return "ip";
    case v1::COSINE:
      return "cosine";
    default:
      return "l2";
  }
}

std::string DescribeSpec(const v1::CollectionInfo& info) {
  const v1::CollectionSpec& s = info.spec();
  std::string line = absl::StrFormat("%-20s dim %-5d %-6s %-16s %-4s %d records", s.name(), s.dim(),
                                     MetricName(s.metric()), s.index_spec(), s.device() == v1::GPU ? "gpu" : "cpu",
                                     info.num_records());
  if (!s.embedder().empty()) absl::StrAppend(&line, ", embedder ", s.embedder());
  return line;
}

// At most `width` bytes of `text` (0: all), cut at a UTF-8 character boundary.
std::string Clip(const std::string& text, int width) {
  if (width <= 0 || text.size() <= static_cast<size_t>(width)) return text;
  size_t end = static_cast<size_t>(width);
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xc0) == 0x80) --end;
  return text.substr(0, end) + "...";
}

// Progress on stderr: a redrawn bar on a terminal, a line every 10% otherwise.
class Progress {
 public:
  explicit Progress(int64_t total) : total_(total), tty_(::isatty(STDERR_FILENO) == 1), start_(absl::Now()) {}

  void Update(int64_t done) {
    const double secs = absl::ToDoubleSeconds(absl::Now() - start_);
    const double rate = secs > 0 ? done / secs : 0;
    if (total_ <= 0) {  // length unknown until read (JSONL)
      if (done - last_reported_ >= 100000 || done == 0) {
        last_reported_ = done;
        std::fprintf(stderr, tty_ ? "\r%lld vectors  %.0f vectors/s " : "ingest: %lld vectors %.0f vectors/s\n",
                     static_cast<long long>(done), rate);
      }
      return;
    }
    const double frac = static_cast<double>(done) / total_;
    const double eta = rate > 0 ? (total_ - done) / rate : 0;
    if (tty_) {
      const int width = 30;
      int filled = static_cast<int>(frac * width);
      std::fprintf(stderr, "\r[%s%s] %5.1f%% %lld/%lld  %.0f vectors/s  ETA %.0fs ", std::string(filled, '#').c_str(),
                   std::string(width - filled, ' ').c_str(), 100 * frac, static_cast<long long>(done),
                   static_cast<long long>(total_), rate, eta);
      std::fflush(stderr);
    } else if (static_cast<int>(frac * 10) > last_decile_ || done == total_) {
      last_decile_ = static_cast<int>(frac * 10);
      std::fprintf(stderr, "ingest: %lld/%lld (%.0f%%) %.0f vectors/s ETA %.0fs\n", static_cast<long long>(done),
                   static_cast<long long>(total_), 100 * frac, rate, eta);
    }
  }

  void Finish() {
    if (tty_) std::fprintf(stderr, "\n");
  }

 private:
  const int64_t total_;
  const bool tty_;
  const absl::Time start_;
  int last_decile_ = -1;
  int64_t last_reported_ = 0;
};

// Every row of a query file in any ingest format; HDF5 files give their "test" set.
absl::StatusOr<FloatMatrix> ReadQueries(const std::string& path) {
  SourceOptions options;
  options.hdf5_dataset = "test";
  auto source = VectorSource::Open(path, options);
  if (!source.ok()) return source.status();
  FloatMatrix all{0, (*source)->dim(), {}};
  SourceBatch batch;
  while (true) {
    if (absl::Status s = (*source)->Next(65536, &batch); !s.ok()) return s;
    if (batch.vectors.rows == 0) return all;
    all.rows += batch.vectors.rows;
    all.data.insert(all.data.end(), batch.vectors.data.begin(), batch.vectors.data.end());
  }
}

// Ground truth: .ivecs, or the "neighbors" dataset of an ann-benchmarks HDF5 file.
absl::StatusOr<IntMatrix> ReadGroundTruth(const std::string& path) {
  if (absl::EndsWithIgnoreCase(path, ".hdf5") || absl::EndsWithIgnoreCase(path, ".h5")) {
    return ReadHdf5Ints(path, "neighbors");
  }
  return ReadIvecs(path);
}

v1::SearchRequest MakeSearch(const std::string& collection, const FloatMatrix& q, int64_t begin, int64_t end, int k,
                             int nprobe, int ef_search) {
  v1::SearchRequest req;
  req.set_collection(collection);
  req.set_k(k);
  req.mutable_params()->set_nprobe(nprobe);
  req.mutable_params()->set_ef_search(ef_search);
  for (int64_t i = begin; i < end; ++i) req.add_queries()->mutable_values()->Add(q.row(i), q.row(i) + q.dim);
  return req;
}

}  // namespace

int Generate(const GenOptions& o) {
  if (o.rows < 1 || o.dim < 1 || o.clusters < 1) {
    return Fail(absl::InvalidArgumentError("--rows, --dim and --clusters must be at least 1"));
  }
  std::mt19937 rng(o.seed);
  std::normal_distribution<float> normal;
  std::vector<float> centres(static_cast<size_t>(o.clusters) * o.dim);
  for (float& x : centres) x = normal(rng);
  FloatMatrix m{o.rows, o.dim, std::vector<float>(static_cast<size_t>(o.rows) * o.dim)};
  for (int64_t i = 0; i < o.rows; ++i) {
    const float* c = centres.data() + static_cast<size_t>(rng() % o.clusters) * o.dim;
    for (int j = 0; j < o.dim; ++j) m.data[i * o.dim + j] = c[j] + 0.3f * normal(rng);
  }
  if (absl::Status s = WriteFvecs(o.out_file, m); !s.ok()) return Fail(s);
  std::printf("wrote %lld vectors of dim %d to %s\n", static_cast<long long>(o.rows), o.dim, o.out_file.c_str());
  return 0;
}

int CreateCollection(const std::string& router, const CreateOptions& o) {
  v1::CreateCollectionRequest req;
  v1::CollectionSpec* spec = req.mutable_spec();
  spec->set_name(o.name);
  spec->set_dim(o.dim);
  spec->set_embedder(o.embedder);
  if (o.metric.empty()) {
    spec->set_metric(o.embedder.empty() ? v1::L2 : v1::COSINE);
  } else if (o.metric == "l2") {
    spec->set_metric(v1::L2);
  } else if (o.metric == "ip") {
    spec->set_metric(v1::IP);
  } else if (o.metric == "cosine") {
    spec->set_metric(v1::COSINE);
  } else {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--metric: '", o.metric, "' is not l2, ip or cosine")));
  }
  if (o.device != "cpu" && o.device != "gpu") {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--device: '", o.device, "' is not cpu or gpu")));
  }
  spec->set_device(o.device == "gpu" ? v1::GPU : v1::CPU);
  spec->set_index_spec(o.index);
  if (!o.fit_texts_file.empty()) {
    if (o.embedder.empty()) return Fail(absl::InvalidArgumentError("--fit-texts: needs --embedder"));
    std::ifstream in(o.fit_texts_file);
    if (!in) return Fail(absl::NotFoundError(absl::StrCat(o.fit_texts_file, ": cannot open")));
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) req.add_embedder_fit_texts(std::move(line));
    }
  }
  v1::CreateCollectionResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Minutes(5));
  grpc::Status s = Connect(router)->CreateCollection(&ctx, req, &resp);
  if (!s.ok()) return Fail(s);
  std::printf("created collection %s\n", DescribeSpec(resp.collection()).c_str());
  return 0;
}

int ListCollections(const std::string& router) {
  v1::ListCollectionsResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Seconds(30));
  grpc::Status s = Connect(router)->ListCollections(&ctx, {}, &resp);
  if (!s.ok()) return Fail(s);
  for (const v1::CollectionInfo& info : resp.collections()) std::printf("%s\n", DescribeSpec(info).c_str());
  return 0;
}

int DescribeCollection(const std::string& router, const std::string& name) {
  v1::DescribeCollectionRequest req;
  req.set_name(name);
  v1::DescribeCollectionResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Seconds(30));
  grpc::Status s = Connect(router)->DescribeCollection(&ctx, req, &resp);
  if (!s.ok()) return Fail(s);
  std::printf("%s\n", DescribeSpec(resp.collection()).c_str());
  return 0;
}

int DropCollection(const std::string& router, const std::string& name) {
  v1::DropCollectionRequest req;
  req.set_name(name);
  v1::DropCollectionResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Minutes(1));
  grpc::Status s = Connect(router)->DropCollection(&ctx, req, &resp);
  if (!s.ok()) return Fail(s);
  std::printf("dropped collection %s\n", name.c_str());
  return 0;
}

namespace {

// A uniform random sample of up to `size` rows of the source (reservoir sampling,
// fixed seed so that a load is reproducible), read in one pass with bounded memory.
absl::StatusOr<FloatMatrix> SampleRows(VectorSource* source, int64_t size) {
  std::mt19937_64 rng(42);
  FloatMatrix sample{0, source->dim(), {}};
  SourceBatch batch;
  int64_t seen = 0;
  while (true) {
    if (absl::Status s = source->Next(8192, &batch); !s.ok()) return s;
    if (batch.vectors.rows == 0) break;
    for (int64_t i = 0; i < batch.vectors.rows; ++i, ++seen) {
      const float* row = batch.vectors.row(i);
      if (sample.rows < size) {
        sample.data.insert(sample.data.end(), row, row + sample.dim);
        ++sample.rows;
        continue;
      }
      const uint64_t j = rng() % static_cast<uint64_t>(seen + 1);
      if (j < static_cast<uint64_t>(size)) std::copy(row, row + sample.dim, sample.data.begin() + j * sample.dim);
    }
  }
  return sample;
}

absl::Status TrainOnSample(Stub* stub, const std::string& collection, const FloatMatrix& sample) {
  v1::TrainResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Minutes(30));
  std::unique_ptr<grpc::ClientWriter<v1::TrainRequest>> writer = stub->Train(&ctx, &resp);
  for (int64_t begin = 0; begin < sample.rows; begin += 4096) {
    v1::TrainRequest msg;
    msg.set_collection(collection);
    for (int64_t i = begin; i < std::min(sample.rows, begin + 4096); ++i) {
      msg.add_samples()->mutable_values()->Add(sample.row(i), sample.row(i) + sample.dim);
    }
    if (!writer->Write(msg)) break;
  }
  writer->WritesDone();
  if (grpc::Status s = writer->Finish(); !s.ok()) return FromGrpc(s);
  std::printf("trained %s on %llu sampled vectors, installed on %u shards\n", collection.c_str(),
              static_cast<unsigned long long>(resp.samples()), resp.shards());
  std::fflush(stdout);  // a caller timing the phases reads this line as it comes
  return absl::OkStatus();
}

// Fills `msg` with the batch's records; ids from the batch, the ids file, or row numbers.
absl::Status ToRecords(const SourceBatch& batch, const std::string& file, IvecsReader* ids,
                       const std::string& ids_path, v1::IngestRequest* msg) {
  IntMatrix id_rows;
  if (ids != nullptr) {
    if (absl::Status s = ids->Next(batch.vectors.rows, &id_rows); !s.ok()) return s;
    if (id_rows.rows != batch.vectors.rows) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: ends at row %d, before the vectors do", ids_path,
                                                        batch.first_row + id_rows.rows));
    }
  }
  // Columnar: one buffer of vectors per message (RecordBlock).
  const int64_t n = batch.vectors.rows;
  const int dim = batch.vectors.dim;
  if (const int64_t bad = FirstNonFinite(batch.vectors.data.data(), n * dim); bad >= 0) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: row %d: component %d is %s", file,
                                                      batch.first_row + bad / dim, bad % dim,
                                                      std::isnan(batch.vectors.data[bad]) ? "NaN" : "Inf"));
  }
  v1::RecordBlock* block = msg->mutable_block();
  block->mutable_ids()->Reserve(static_cast<int>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (ids != nullptr) {
      if (id_rows.data[i] < 0) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: row %d: negative id %d", ids_path, batch.first_row + i, id_rows.data[i]));
      }
      block->add_ids(static_cast<uint64_t>(id_rows.data[i]));
    } else {
      block->add_ids(batch.ids.empty() ? static_cast<uint64_t>(batch.first_row + i) : batch.ids[i]);
    }
  }
  block->set_vectors(reinterpret_cast<const char*>(batch.vectors.data.data()), n * dim * sizeof(float));
  if (!batch.texts.empty() || !batch.metadata.empty()) {
    for (int64_t i = 0; i < n; ++i) {
      v1::Payload* payload = block->add_payloads();
      if (!batch.texts.empty()) payload->set_text(batch.texts[i]);
      if (!batch.metadata.empty()) payload->mutable_metadata()->insert(batch.metadata[i].begin(), batch.metadata[i].end());
    }
  }
  return absl::OkStatus();
}

}  // namespace

int Ingest(const std::string& router, const IngestOptions& o) {
  if (o.batch < 1 || o.batch > 100000) return Fail(absl::InvalidArgumentError("--batch: out of range [1, 100000]"));
  if (o.train_size < 1 || o.train_size > kMaxTrainingVectors) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--train-size: out of range [1, ", kMaxTrainingVectors, "]")));
  }
  SourceOptions source_options;
  source_options.hdf5_dataset = o.hdf5_dataset;
  auto source = VectorSource::Open(o.file, source_options);
  if (!source.ok()) return Fail(source.status());
  std::unique_ptr<Stub> stub = Connect(router);
  const absl::Time start = absl::Now();

  // IVF/PQ: train once on a sample of the file, for every shard, before loading.
  v1::DescribeCollectionRequest describe;
  describe.set_name(o.collection);
  v1::DescribeCollectionResponse info;
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, absl::Seconds(30));
    if (grpc::Status s = stub->DescribeCollection(&ctx, describe, &info); !s.ok()) return Fail(s);
  }
  // A JSONL file without records has no dimension either: nothing to check, train or send
  // (the collection exists: DescribeCollection answered).
  if ((*source)->dim() == 0 && (*source)->total_rows() == 0) {
    std::printf("ingested 0 vectors into %s: %s has no records\n", o.collection.c_str(), o.file.c_str());
    return 0;
  }
  // A JSONL file of texts without vectors: the router embeds them with the collection's
  // embedder (a vector-less block of payload texts).
  const bool texts_only = (*source)->dim() == 0 && std::string((*source)->format()) == "jsonl";
  if (texts_only && info.collection().spec().embedder().empty()) {
    return Fail(absl::FailedPreconditionError(absl::StrFormat(
        "embedder: %s has texts without vectors, and collection '%s' has no embedder to make "
        "them (create it with --embedder hash-tfidf-v1, or give every row a \"vector\")",
        o.file, o.collection)));
  }
  if (texts_only && !info.collection().trained()) {
    return Fail(absl::FailedPreconditionError(absl::StrFormat(
        "%s: texts without vectors cannot train collection '%s' (%s): ingest vectors into it "
        "first, which trains it, or use a Flat index",
        o.file, o.collection, info.collection().spec().index_spec())));
  }
  if (!texts_only && (*source)->dim() != static_cast<int>(info.collection().spec().dim())) {
    return Fail(absl::InvalidArgumentError(absl::StrFormat("%s: dimension %d does not match collection '%s' (dim %d)",
                                                           o.file, (*source)->dim(), o.collection,
                                                           info.collection().spec().dim())));
  }
  if (!info.collection().trained()) {
    absl::StatusOr<FloatMatrix> sample = SampleRows(source->get(), o.train_size);
    if (!sample.ok()) return Fail(sample.status());
    if (absl::Status s = TrainOnSample(stub.get(), o.collection, *sample); !s.ok()) return Fail(s);
    source = VectorSource::Open(o.file, source_options);
    if (!source.ok()) return Fail(source.status());
  }

  std::unique_ptr<IvecsReader> ids;
  if (!o.ids_file.empty()) {
    auto r = IvecsReader::Open(o.ids_file);
    if (!r.ok()) return Fail(r.status());
    if ((*r)->dim() != 1) {
      return Fail(absl::InvalidArgumentError(absl::StrFormat("%s: expected 1 id per row, found %d", o.ids_file,
                                                             (*r)->dim())));
    }
    ids = *std::move(r);
  }
  Progress progress((*source)->total_rows());
  v1::IngestResponse resp;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientWriter<v1::IngestRequest>> writer = stub->Ingest(&ctx, &resp);
  SourceBatch batch;
  int64_t sent = 0;
  absl::Status read_error;
  while (true) {
    if (read_error = (*source)->Next(o.batch, &batch); !read_error.ok() || batch.vectors.rows == 0) break;
    v1::IngestRequest msg;
    msg.set_collection(o.collection);
    if (read_error = ToRecords(batch, o.file, ids.get(), o.ids_file, &msg); !read_error.ok()) break;
    // Blocks while the cluster is behind: gRPC flow control is the back-pressure.
    if (!writer->Write(msg)) break;
    sent += batch.vectors.rows;
    progress.Update(sent);
  }
  if (!read_error.ok()) ctx.TryCancel();
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  progress.Finish();
  if (!read_error.ok()) return Fail(read_error);
  if (!status.ok()) return Fail(status);
  const double secs = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf("ingested %llu vectors into %s in %.2f s (%.0f vectors/s), all durable\n",
              static_cast<unsigned long long>(resp.ingested()), o.collection.c_str(), secs,
              secs > 0 ? resp.ingested() / secs : 0.0);
  return 0;
}

namespace {

// Text queries: one request, hits printed with their text.
int SearchText(const std::string& router, const SearchOptions& o) {
  v1::SearchRequest req;
  req.set_collection(o.collection);
  req.set_k(o.k);
  req.set_include_payload(true);
  for (const std::string& t : o.texts) req.add_text_queries(t);
  v1::SearchResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Minutes(1));
  if (grpc::Status s = Connect(router)->Search(&ctx, req, &resp); !s.ok()) return Fail(s);
  for (int q = 0; q < resp.results_size(); ++q) {
    const v1::QueryResult& r = resp.results(q);
    std::printf("\"%s\"\n", o.texts[q].c_str());
    for (int j = 0; j < r.ids_size(); ++j) {
      const std::string text = j < r.payloads_size() ? r.payloads(j).text() : std::string();
      std::printf("  %2d  %-10llu %.4f  %s\n", j + 1, static_cast<unsigned long long>(r.ids(j)), r.distances(j),
                  Clip(text, o.text_width).c_str());
    }
  }
  return 0;
}

}  // namespace

int Rag(const std::string& router, const RagOptions& o) {
  v1::RagRequest req;
  req.set_collection(o.collection);
  req.set_question(o.question);
  req.set_k(o.k);
  req.set_embedder(o.embedder);
  if (!o.query_vector_file.empty()) {
    absl::StatusOr<FloatMatrix> q = ReadQueries(o.query_vector_file);
    if (!q.ok()) return Fail(q.status());
    if (q->rows < 1) return Fail(absl::InvalidArgumentError(absl::StrCat(o.query_vector_file, ": no vectors")));
    req.mutable_query_vector()->Add(q->row(0), q->row(0) + q->dim);
  }
  v1::GenerationParams* g = req.mutable_generation();
  g->set_max_tokens(static_cast<uint32_t>(std::max(o.max_tokens, 0)));
  g->set_temperature(o.temperature);
  g->set_top_p(o.top_p);
  g->set_seed(o.seed);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Minutes(30));
  std::unique_ptr<grpc::ClientReader<v1::RagResponse>> stream = Connect(router)->Rag(&ctx, req);
  v1::RagResponse r;
  v1::RagResponse last;
  while (stream->Read(&r)) {
    std::fputs(r.text().c_str(), stdout);
    std::fflush(stdout);
    if (r.done()) last = r;
  }
  if (grpc::Status s = stream->Finish(); !s.ok()) {
    std::printf("\n");
    return Fail(s);
  }
  std::printf("\n\n(%s; %u prompt tokens, %u generated)\nSources:\n", last.finish_reason().c_str(),
              last.prompt_tokens(), last.completion_tokens());
  for (const v1::RagSource& src : last.sources()) {
    std::printf("  [%u] %-10llu %.4f %s %s\n", src.number(), static_cast<unsigned long long>(src.id()),
                src.distance(), src.cited() ? "cited" : "     ", Clip(src.text(), o.text_width).c_str());
  }
  return 0;
}

int Search(const std::string& router, const SearchOptions& o) {
  if (o.queries_file.empty() == o.texts.empty()) {
    return Fail(absl::InvalidArgumentError("give either --queries FILE or --text TEXT"));
  }
  if (!o.texts.empty()) return SearchText(router, o);
  if (o.batch < 1) return Fail(absl::InvalidArgumentError("--batch: must be at least 1"));
  absl::StatusOr<FloatMatrix> q = ReadQueries(o.queries_file);
  if (!q.ok()) return Fail(q.status());
  std::unique_ptr<Stub> stub = Connect(router);
  IntMatrix out{q->rows, o.k, std::vector<int32_t>(static_cast<size_t>(q->rows) * std::max(o.k, 0), -1)};
  for (int64_t begin = 0; begin < q->rows; begin += o.batch) {
    const int64_t end = std::min<int64_t>(q->rows, begin + o.batch);
    v1::SearchRequest req = MakeSearch(o.collection, *q, begin, end, o.k, o.nprobe, o.ef_search);
    v1::SearchResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx, absl::Minutes(5));
    grpc::Status s = stub->Search(&ctx, req, &resp);
    if (!s.ok()) return Fail(s);
    for (int64_t i = begin; i < end; ++i) {
      const v1::QueryResult& r = resp.results(static_cast<int>(i - begin));
      if (o.out_file.empty()) {
        std::vector<std::string> hits;
        for (int j = 0; j < r.ids_size(); ++j) hits.push_back(absl::StrFormat("%d:%.6g", r.ids(j), r.distances(j)));
        std::printf("query %lld: %s\n", static_cast<long long>(i), absl::StrJoin(hits, " ").c_str());
        continue;
      }
      for (int j = 0; j < r.ids_size(); ++j) {
        if (r.ids(j) > static_cast<uint64_t>(INT32_MAX)) {
          return Fail(absl::OutOfRangeError(absl::StrFormat("id %d does not fit an .ivecs file", r.ids(j))));
        }
        out.data[i * o.k + j] = static_cast<int32_t>(r.ids(j));
      }
    }
  }
  if (!o.out_file.empty()) {
    if (absl::Status s = WriteIvecs(o.out_file, out); !s.ok()) return Fail(s);
    std::printf("wrote %lld result rows of k=%d to %s\n", static_cast<long long>(q->rows), o.k, o.out_file.c_str());
  }
  return 0;
}

int LoadWordNet(const std::string& router, const LoadWordNetOptions& o) {
  if (o.batch < 1 || o.batch > 100000) return Fail(absl::InvalidArgumentError("--batch: out of range [1, 100000]"));
  const absl::Time start = absl::Now();
  absl::StatusOr<embed::WordNet> wn = embed::WordNet::Load(o.dir);
  if (!wn.ok()) return Fail(wn.status());
  const double parse_s = absl::ToDoubleSeconds(absl::Now() - start);
  const int64_t total = static_cast<int64_t>(wn->synsets().size());
  std::unique_ptr<Stub> stub = Connect(router);

  // The collection, unless it exists; its embedder is fitted on every synset's text.
  v1::DescribeCollectionRequest describe;
  describe.set_name(o.collection);
  v1::DescribeCollectionResponse info;
  grpc::Status described;
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, absl::Seconds(30));
    described = stub->DescribeCollection(&ctx, describe, &info);
  }
  const absl::Time fit_start = absl::Now();
  if (described.error_code() == grpc::StatusCode::NOT_FOUND) {
    v1::CreateCollectionRequest req;
    v1::CollectionSpec* spec = req.mutable_spec();
    spec->set_name(o.collection);
    spec->set_dim(o.dim);
    spec->set_metric(v1::COSINE);
    spec->set_index_spec("Flat");
    spec->set_embedder(embed::kHashTfidfV1);
    for (const embed::Synset& s : wn->synsets()) req.add_embedder_fit_texts(wn->Text(s));
    v1::CreateCollectionResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx, absl::Minutes(5));
    if (grpc::Status s = stub->CreateCollection(&ctx, req, &resp); !s.ok()) return Fail(s);
    std::printf("created collection %s\n", DescribeSpec(resp.collection()).c_str());
  } else if (!described.ok()) {
    return Fail(described);
  } else if (info.collection().spec().embedder().empty()) {
    return Fail(absl::FailedPreconditionError(absl::StrCat(
        "embedder: collection '", o.collection, "' exists without an embedder; drop it or pick another name")));
  } else {
    std::printf("loading into the existing collection %s\n", DescribeSpec(info.collection()).c_str());
  }
  std::fflush(stdout);
  const double fit_s = absl::ToDoubleSeconds(absl::Now() - fit_start);

  // Records without vectors: the router embeds each payload text.
  const absl::Time load_start = absl::Now();
  Progress progress(total);
  v1::IngestResponse resp;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientWriter<v1::IngestRequest>> writer = stub->Ingest(&ctx, &resp);
  int64_t sent = 0;
  while (sent < total) {
    v1::IngestRequest msg;
    msg.set_collection(o.collection);
    const int64_t end = std::min<int64_t>(total, sent + o.batch);
    for (int64_t i = sent; i < end; ++i) {
      const embed::Synset& s = wn->synsets()[i];
      v1::Record* r = msg.add_records();
      r->set_id(s.id());
      r->mutable_payload()->set_text(wn->Text(s));
      for (const auto& [key, value] : wn->Metadata(s)) (*r->mutable_payload()->mutable_metadata())[key] = value;
    }
    if (!writer->Write(msg)) break;
    sent = end;
    progress.Update(sent);
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  progress.Finish();
  if (!status.ok()) return Fail(status);
  const double load_s = absl::ToDoubleSeconds(absl::Now() - load_start);
  std::printf("loaded %llu WordNet synsets into %s in %.1f s (read %.1f s, fit and create %.1f s, embed and store %.1f s)\n",
              static_cast<unsigned long long>(resp.ingested()), o.collection.c_str(),
              absl::ToDoubleSeconds(absl::Now() - start), parse_s, fit_s, load_s);
  return 0;
}

int Bench(const std::string& router, const BenchOptions& o) {
  if (o.batch < 1 || o.concurrency < 1) {
    return Fail(absl::InvalidArgumentError("--batch and --concurrency must be at least 1"));
  }
  absl::StatusOr<FloatMatrix> q = ReadQueries(o.queries_file);
  if (!q.ok()) return Fail(q.status());
  absl::StatusOr<IntMatrix> gt = ReadGroundTruth(o.groundtruth_file);
  if (!gt.ok()) return Fail(gt.status());
  if (gt->rows != q->rows || gt->dim < o.k) {
    return Fail(absl::InvalidArgumentError(absl::StrFormat(
        "%s: expected %d rows of at least k=%d ids, found %d rows of %d", o.groundtruth_file, q->rows, o.k, gt->rows,
        gt->dim)));
  }
  std::unique_ptr<Stub> stub = Connect(router);
  const int64_t num_batches = (q->rows + o.batch - 1) / o.batch;
  std::vector<v1::SearchRequest> requests;
  for (int64_t b = 0; b < num_batches; ++b) {
    requests.push_back(MakeSearch(o.collection, *q, b * o.batch, std::min<int64_t>(q->rows, (b + 1) * o.batch), o.k,
                                  o.nprobe, o.ef_search));
  }

  // Recall over every query once.
  int64_t hits = 0;
  for (int64_t b = 0; b < num_batches; ++b) {
    v1::SearchResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx, absl::Minutes(5));
    grpc::Status s = stub->Search(&ctx, requests[b], &resp);
    if (!s.ok()) return Fail(s);
    for (int i = 0; i < resp.results_size(); ++i) {
      const int32_t* truth = gt->row(b * o.batch + i);
      absl::flat_hash_set<int64_t> want(truth, truth + o.k);
      for (uint64_t id : resp.results(i).ids()) hits += want.contains(static_cast<int64_t>(id));
    }
  }
  const double recall = static_cast<double>(hits) / (static_cast<double>(q->rows) * o.k);

  // Throughput: `concurrency` closed loops over the batches for `seconds` (at least one pass).
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> queries_done{0};
  std::vector<std::vector<double>> latencies(o.concurrency);
  absl::Mutex mu;
  absl::Status first_error;
  const absl::Time start = absl::Now();
  const absl::Time stop = start + absl::Seconds(o.seconds);
  std::vector<std::thread> threads;
  for (int t = 0; t < o.concurrency; ++t) {
    threads.emplace_back([&, t] {
      while (true) {
        int64_t i = next.fetch_add(1);
        if (i >= num_batches && absl::Now() >= stop) break;
        const v1::SearchRequest& req = requests[i % num_batches];
        v1::SearchResponse resp;
        grpc::ClientContext ctx;
        SetDeadline(&ctx, absl::Minutes(5));
        const absl::Time t0 = absl::Now();
        grpc::Status s = stub->Search(&ctx, req, &resp);
        latencies[t].push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        if (!s.ok()) {
          absl::MutexLock lock(&mu);
          if (first_error.ok()) first_error = FromGrpc(s);
          break;
        }
        queries_done.fetch_add(req.queries_size());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  if (!first_error.ok()) return Fail(first_error);
  const double secs = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<double> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::printf("collection   %s\n", o.collection.c_str());
  std::printf("queries      %lld (batch %d, concurrency %d, %.2f s)\n", static_cast<long long>(queries_done.load()),
              o.batch, o.concurrency, secs);
  std::printf("recall@%-5d %.4f\n", o.k, recall);
  std::printf("QPS          %.1f\n", queries_done.load() / secs);
  std::printf("latency ms   p50 %.3f  p99 %.3f  (per request of %d queries)\n", Percentile(all, 50),
              Percentile(all, 99), o.batch);
  return 0;
}

int Status(const std::string& router) {
  v1::ClusterStatusResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Seconds(30));
  grpc::Status s = Connect(router)->ClusterStatus(&ctx, {}, &resp);
  if (!s.ok()) return Fail(s);
  std::printf("router %s, map epoch %llu, %zu shards, %u slots\n", router.c_str(),
              static_cast<unsigned long long>(resp.map_epoch()), static_cast<size_t>(resp.shards_size()),
              resp.total_slots());
  std::printf("%-10s %-22s %-6s %-16s %-6s %s\n", "SHARD", "ADDRESS", "SLOTS", "RANGES", "UP", "RECORDS");
  for (const v1::ShardStatus& sh : resp.shards()) {
    std::vector<std::string> ranges, counts;
    for (const v1::SlotRange& r : sh.slots()) ranges.push_back(absl::StrCat(r.begin(), "-", r.end() - 1));
    for (const v1::CollectionCount& c : sh.collections()) counts.push_back(absl::StrCat(c.name(), "=", c.num_records()));
    std::printf("%-10s %-22s %-6u %-16s %-6s %s\n", sh.id().c_str(), sh.address().c_str(), sh.num_slots(),
                absl::StrJoin(ranges, ",").c_str(), sh.reachable() ? "yes" : "NO",
                sh.reachable() ? absl::StrJoin(counts, " ").c_str() : sh.error().c_str());
  }
  std::printf("collections:\n");
  for (const v1::CollectionInfo& info : resp.collections()) std::printf("  %s\n", DescribeSpec(info).c_str());
  return 0;
}

namespace {

int PrintRebalance(const char* verb, const std::string& address, const v1::RebalanceResponse& resp) {
  std::printf("%s %s (%s): moved %u slots, copied %llu records in %.1f s\n", verb, resp.shard_id().c_str(),
              address.c_str(), resp.slots_moved(), static_cast<unsigned long long>(resp.records_copied()),
              resp.seconds());
  return 0;
}

}  // namespace

int AddShard(const std::string& router, const std::string& address) {
  v1::AddShardRequest req;
  req.set_address(address);
  v1::RebalanceResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Hours(24));
  if (grpc::Status s = Connect(router)->AddShard(&ctx, req, &resp); !s.ok()) return Fail(s);
  return PrintRebalance("added", address, resp);
}

int RemoveShard(const std::string& router, const std::string& address) {
  v1::RemoveShardRequest req;
  req.set_address(address);
  v1::RebalanceResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Hours(24));
  if (grpc::Status s = Connect(router)->RemoveShard(&ctx, req, &resp); !s.ok()) return Fail(s);
  return PrintRebalance("removed", address, resp);
}

}  // namespace shardvec::cli
