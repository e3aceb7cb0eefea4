// Text in, text out through real processes (router + 2 shards): a collection with the
// built-in embedder, records upserted as text and embedded by the router, text
// searches equal to a one-process brute force over the same embedder, the refusals,
// a router restart that keeps the fitted embedder, and the CLI's load-wordnet and
// search --text on a small WordNet sample.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "embed/text_embedder.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_cluster.h"

namespace shardvec::testing {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr int kDim = 64;

// 48 short documents: every (adjective, animal, place) combination of a small grid, so
// that queries share some words with many documents and all words with a few.
std::vector<std::string> Corpus() {
  const char* adjectives[] = {"large", "small", "wild", "striped"};
  const char* animals[] = {"cat", "dog", "horse", "bird"};
  const char* places[] = {"forest", "desert", "city"};
  std::vector<std::string> docs;
  for (const char* adj : adjectives) {
    for (const char* animal : animals) {
      for (const char* place : places) docs.push_back(absl::StrCat("the ", adj, " ", animal, " lives in the ", place));
    }
  }
  return docs;
}

embed::TextEmbedder LocalEmbedder(const std::vector<std::string>& corpus) {
  absl::StatusOr<embed::TextEmbedder> e =
      embed::TextEmbedder::Fit(kDim, std::vector<absl::string_view>(corpus.begin(), corpus.end()));
  EXPECT_TRUE(e.ok());
  return *std::move(e);
}

// The expected answer: every document scored exactly, best first, ties by smaller id.
std::vector<std::pair<uint64_t, float>> BruteForce(const embed::TextEmbedder& e, const std::vector<std::string>& docs,
                                                   const std::string& query, int k) {
  const embed::SparseVector q = *e.SparseQuery(query);
  std::vector<std::pair<uint64_t, float>> all;
  for (size_t i = 0; i < docs.size(); ++i) {
    all.push_back({i, embed::TextEmbedder::Score(q, *e.SparseDocument(docs[i]))});
  }
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  all.resize(k);
  return all;
}

grpc::Status CreateTextCollection(v1::ShardVec::Stub* stub, const std::string& name,
                                  const std::vector<std::string>& fit, v1::CollectionSpec* created = nullptr,
                                  v1::Metric metric = v1::METRIC_UNSPECIFIED, const std::string& embedder = "hash-tfidf-v1") {
  v1::CreateCollectionRequest req;
  req.mutable_spec()->set_name(name);
  req.mutable_spec()->set_dim(kDim);
  req.mutable_spec()->set_metric(metric);
  req.mutable_spec()->set_embedder(embedder);
  for (const std::string& t : fit) req.add_embedder_fit_texts(t);
  v1::CreateCollectionResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = stub->CreateCollection(&ctx, req, &resp);
  if (created != nullptr) *created = resp.collection().spec();
  return s;
}

// Half the documents as Record messages, half as block rows; no vectors either way.
grpc::Status UpsertTexts(v1::ShardVec::Stub* stub, const std::string& collection, const std::vector<std::string>& docs) {
  v1::UpsertRequest req;
  req.set_collection(collection);
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i % 2 == 0) {
      v1::Record* r = req.add_records();
      r->set_id(i);
      r->mutable_payload()->set_text(docs[i]);
    } else {
      req.mutable_block()->add_ids(i);
      req.mutable_block()->add_payloads()->set_text(docs[i]);
    }
  }
  v1::UpsertResponse resp;
  grpc::ClientContext ctx;
  return stub->Upsert(&ctx, req, &resp);
}

grpc::Status SearchText(v1::ShardVec::Stub* stub, const std::string& collection, const std::vector<std::string>& texts,
                        int k, v1::SearchResponse* resp, bool include_payload = false) {
  v1::SearchRequest req;
  req.set_collection(collection);
  req.set_k(k);
  req.set_include_payload(include_payload);
  for (const std::string& t : texts) req.add_text_queries(t);
  grpc::ClientContext ctx;
  return stub->Search(&ctx, req, resp);
}

void ExpectRefused(const grpc::Status& s, grpc::StatusCode code, const std::string& field) {
  EXPECT_EQ(s.error_code(), code) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr(field));
}

class TextE2ETest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto cluster = TestCluster::Start(2, TestDir("text_e2e"));
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
  }
  static void TearDownTestSuite() { delete cluster_; }

  static TestCluster* cluster_;
};

TestCluster* TextE2ETest::cluster_ = nullptr;

TEST_F(TextE2ETest, TextSearchEqualsBruteForceOverTheSameEmbedder) {
  auto stub = cluster_->Client();
  const std::vector<std::string> docs = Corpus();
  const embed::TextEmbedder local = LocalEmbedder(docs);
  v1::CollectionSpec spec;
  ASSERT_TRUE(CreateTextCollection(stub.get(), "animals", docs, &spec).ok());
  EXPECT_EQ(spec.embedder(), local.spec());  // the router fitted the same table
  EXPECT_EQ(spec.metric(), v1::COSINE);
  ASSERT_TRUE(UpsertTexts(stub.get(), "animals", docs).ok());

  // The stored vectors are the local embedder's, bit for bit.
  v1::GetRequest get;
  get.set_collection("animals");
  get.add_ids(0);
  get.add_ids(1);
  get.set_include_vectors(true);
  v1::GetResponse got;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Get(&ctx, get, &got).ok());
  }
  ASSERT_EQ(got.records_size(), 2);
  for (const v1::Record& r : got.records()) {
    std::vector<float> want(kDim);
    ASSERT_TRUE(local.EmbedDocument(docs[r.id()], want.data()).ok());
    ASSERT_EQ(r.vector_size(), kDim);
    EXPECT_EQ(std::memcmp(r.vector().data(), want.data(), kDim * sizeof(float)), 0) << r.id();
  }

  // Fewer documents than candidates: every one is re-scored, so the answer is exact.
  const std::vector<std::string> queries = {"large wild cat", "a dog of the desert", "striped horses in cities"};
  v1::SearchResponse resp;
  ASSERT_TRUE(SearchText(stub.get(), "animals", queries, 5, &resp).ok());
  ASSERT_EQ(resp.results_size(), 3);
  for (int q = 0; q < 3; ++q) {
    const auto want = BruteForce(local, docs, queries[q], 5);
    const v1::QueryResult& r = resp.results(q);
    ASSERT_EQ(r.ids_size(), 5) << queries[q];
    EXPECT_EQ(r.payloads_size(), 0);
    for (int j = 0; j < 5; ++j) {
      EXPECT_EQ(r.ids(j), want[j].first) << queries[q] << " rank " << j;
      EXPECT_NEAR(r.distances(j), want[j].second, 1e-6) << queries[q] << " rank " << j;
    }
  }
  EXPECT_THAT(docs[resp.results(0).ids(0)], HasSubstr(" cat "));

  // Payloads come back when asked for.
  ASSERT_TRUE(SearchText(stub.get(), "animals", {"large wild cat"}, 3, &resp, /*include_payload=*/true).ok());
  ASSERT_EQ(resp.results(0).payloads_size(), 3);
  EXPECT_EQ(resp.results(0).payloads(0).text(), docs[resp.results(0).ids(0)]);

  // A client that embeds on its side names the embedder with its vectors.
  v1::SearchRequest vec;
  vec.set_collection("animals");
  vec.set_k(1);
  vec.set_embedder(local.spec());
  std::vector<float> q(kDim);
  ASSERT_TRUE(local.EmbedQuery(docs[7], q.data()).ok());
  vec.add_queries()->mutable_values()->Add(q.begin(), q.end());
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Search(&ctx, vec, &resp).ok());
  }
  EXPECT_EQ(resp.results(0).ids(0), 7u);
}

TEST_F(TextE2ETest, RefusalsNameTheField) {
  auto stub = cluster_->Client();
  const std::vector<std::string> docs = Corpus();
  ASSERT_TRUE(CreateTextCollection(stub.get(), "texts", docs).ok());
  ASSERT_TRUE(CreateCollection(stub.get(), "vectors", kDim, "Flat", v1::COSINE).ok());
  std::vector<float> q(kDim, 0.1f);
  auto search = [&](const std::string& collection, const std::vector<std::string>& texts, bool with_vector,
                    const std::string& embedder) {
    v1::SearchRequest req;
    req.set_collection(collection);
    req.set_k(3);
    req.set_embedder(embedder);
    for (const std::string& t : texts) req.add_text_queries(t);
    if (with_vector) req.add_queries()->mutable_values()->Add(q.begin(), q.end());
    v1::SearchResponse resp;
    grpc::ClientContext ctx;
    return stub->Search(&ctx, req, &resp);
  };
  ExpectRefused(search("vectors", {"large cat"}, false, ""), grpc::StatusCode::FAILED_PRECONDITION, "embedder:");
  ExpectRefused(search("texts", {}, true, "hash-tfidf-v1:dim=64"), grpc::StatusCode::INVALID_ARGUMENT, "embedder:");
  ExpectRefused(search("vectors", {}, true, "hash-tfidf-v1:dim=64"), grpc::StatusCode::INVALID_ARGUMENT,
                "embedder:");
  ExpectRefused(search("texts", {"large cat"}, true, ""), grpc::StatusCode::INVALID_ARGUMENT, "text_queries:");
  ExpectRefused(search("texts", {}, false, ""), grpc::StatusCode::INVALID_ARGUMENT, "queries:");
  ExpectRefused(search("texts", {"large cat", ""}, false, ""), grpc::StatusCode::INVALID_ARGUMENT,
                "text_queries[1]: empty");
  ExpectRefused(search("texts", {"?!"}, false, ""), grpc::StatusCode::INVALID_ARGUMENT, "text_queries[0]:");

  // A record without a vector needs text; the batch changes nothing.
  v1::UpsertRequest up;
  up.set_collection("texts");
  up.add_records()->set_id(1);
  up.mutable_records(0)->mutable_payload()->set_text("the large cat");
  up.add_records()->set_id(2);
  v1::UpsertResponse upserted;
  {
    grpc::ClientContext ctx;
    ExpectRefused(stub->Upsert(&ctx, up, &upserted), grpc::StatusCode::INVALID_ARGUMENT, "records[1].payload.text");
  }
  up.mutable_records()->RemoveLast();
  up.set_embedder("hash-tfidf-v1:dim=64");
  {
    grpc::ClientContext ctx;
    ExpectRefused(stub->Upsert(&ctx, up, &upserted), grpc::StatusCode::INVALID_ARGUMENT, "embedder:");
  }
  v1::GetRequest get;
  get.set_collection("texts");
  get.add_ids(1);
  v1::GetResponse got;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Get(&ctx, get, &got).ok());
  }
  EXPECT_EQ(got.records_size(), 0);

  // Creation: metric, embedder name, fit texts without an embedder.
  ExpectRefused(CreateTextCollection(stub.get(), "l2", docs, nullptr, v1::L2), grpc::StatusCode::INVALID_ARGUMENT,
                "metric:");
  ExpectRefused(CreateTextCollection(stub.get(), "bogus", docs, nullptr, v1::COSINE, "word2vec"),
                grpc::StatusCode::INVALID_ARGUMENT, "embedder:");
  ExpectRefused(CreateTextCollection(stub.get(), "nofit", docs, nullptr, v1::COSINE, ""),
                grpc::StatusCode::INVALID_ARGUMENT, "embedder_fit_texts:");
}

TEST_F(TextE2ETest, RouterRestartKeepsTheFittedEmbedder) {
  auto stub = cluster_->Client();
  const std::vector<std::string> docs = Corpus();
  v1::CollectionSpec spec;
  ASSERT_TRUE(CreateTextCollection(stub.get(), "kept", docs, &spec).ok());
  ASSERT_TRUE(UpsertTexts(stub.get(), "kept", docs).ok());
  v1::SearchResponse before;
  ASSERT_TRUE(SearchText(stub.get(), "kept", {"small bird in the city"}, 5, &before).ok());
  EXPECT_TRUE(std::filesystem::exists(cluster_->data_dir() + "/router/embedders/kept.table"));

  ASSERT_TRUE(cluster_->RestartRouter().ok());
  stub = cluster_->Client();
  v1::DescribeCollectionRequest describe;
  describe.set_name("kept");
  v1::DescribeCollectionResponse described;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->DescribeCollection(&ctx, describe, &described).ok());
  }
  EXPECT_EQ(described.collection().spec().embedder(), spec.embedder());
  v1::SearchResponse after;
  ASSERT_TRUE(SearchText(stub.get(), "kept", {"small bird in the city"}, 5, &after).ok());
  EXPECT_EQ(after.results(0).SerializeAsString(), before.results(0).SerializeAsString());

  // Dropping the collection removes its table.
  v1::DropCollectionRequest drop;
  drop.set_name("kept");
  v1::DropCollectionResponse dropped;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->DropCollection(&ctx, drop, &dropped).ok());
  EXPECT_FALSE(std::filesystem::exists(cluster_->data_dir() + "/router/embedders/kept.table"));
}

// WordNet's format (man 5 wndb), a few synsets with the lion's and tiger's real lines.
void WriteWordNetSample(const std::string& dir) {
  std::filesystem::create_directories(dir);
  const std::string license = "  1 This software and database is being provided to you, the LICENSEE, by  \n";
  std::ofstream(dir + "/data.noun")
      << license
      << "02120997 05 n 02 feline 0 felid 0 000 | any of various lithe-bodied roundheaded fissiped mammals, many "
         "with retractile claws  \n"
      << "02121620 05 n 02 cat 0 true_cat 0 001 @ 02120997 n 0000 | feline mammal usually having thick soft fur and "
         "no ability to roar: domestic cats; wildcats  \n"
      << "02127808 05 n 02 big_cat 0 cat 2 001 @ 02120997 n 0000 | any of several large cats typically able to roar "
         "and living in the wild  \n"
      << "02129165 05 n 03 lion 0 king_of_beasts 0 Panthera_leo 0 001 @ 02127808 n 0000 | large gregarious "
         "predatory feline of Africa and India having a tawny coat with a shaggy mane in the male  \n"
      << "02129604 05 n 02 tiger 0 Panthera_tigris 0 001 @ 02127808 n 0000 | large feline of forests in most of "
         "Asia having a tawny coat with black stripes; endangered  \n"
      << "03791235 06 n 01 motor_vehicle 0 000 | a self-propelled wheeled vehicle that does not run on rails  \n"
      << "02958343 06 n 02 car 0 auto 0 001 @ 03791235 n 0000 | a motor vehicle with four wheels; usually propelled "
         "by an internal combustion engine  \n"
      << "07739125 13 n 01 apple 0 000 | fruit with red or yellow or green skin and sweet to tart crisp whitish "
         "flesh  \n";
  std::ofstream(dir + "/data.verb") << license
                                    << "01926311 38 v 01 run 0 000 01 + 02 00 | move fast by using one's feet  \n";
  std::ofstream(dir + "/data.adj") << license
                                   << "01382086 00 a 01 large 0 000 | above average in size or number or quantity  \n";
  std::ofstream(dir + "/data.adv") << license;
}

TEST_F(TextE2ETest, CliLoadsWordNetAndSearchesByText) {
  const std::string dir = TestDir("wordnet_sample");
  WriteWordNetSample(dir);
  CliResult r = cluster_->Cli({"load-wordnet", "wordnet", "--dir", dir, "--dim", "128", "--batch", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("embedder hash-tfidf-v1:dim=128:idf="));
  EXPECT_THAT(r.out, HasSubstr("loaded 10 WordNet synsets into wordnet"));
  // Again: the collection exists, the records are replaced (ids are stable).
  r = cluster_->Cli({"load-wordnet", "wordnet", "--dir", dir});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("existing collection"));

  r = cluster_->Cli({"search", "wordnet", "--text", "large wild cat", "--k", "3", "--text-width", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("102129165"));  // lion
  EXPECT_THAT(r.out, HasSubstr("102129604"));  // tiger
  EXPECT_THAT(r.out, HasSubstr("tiger, Panthera tigris (noun): large feline of forests"));

  r = cluster_->Cli({"search", "wordnet", "--text", "large wild cat", "--queries", "q.fvecs"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("either --queries FILE or --text TEXT"));
}

// A JSONL file of texts without vectors goes in through `shardvec ingest`: the router embeds
// each row's text, exactly as for texts sent by Upsert. Refused, saying why: the same file
// for a collection without an embedder, and a file that mixes rows with and without vectors.
TEST_F(TextE2ETest, CliIngestsJsonlTextsAsUpsertedTexts) {
  auto stub = cluster_->Client();
  const std::vector<std::string> docs = Corpus();
  const std::string dir = TestDir("jsonl_texts");
  std::ofstream(dir + "/fit.txt") << absl::StrJoin(docs, "\n") << "\n";
  {
    std::ofstream f(dir + "/docs.jsonl");
    for (size_t i = 0; i < docs.size(); ++i) {
      f << "{\"id\": " << i << ", \"text\": \"" << docs[i] << "\", \"metadata\": {\"n\": " << i << "}}\n";
    }
  }
  CliResult r = cluster_->Cli({"collection", "create", "jsonl_texts", "--dim", std::to_string(kDim),
                               "--embedder", "hash-tfidf-v1", "--fit-texts", dir + "/fit.txt"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = cluster_->Cli({"ingest", "jsonl_texts", dir + "/docs.jsonl", "--batch", "7"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("ingested ", docs.size())));

  // The same documents fitted and upserted through the API.
  ASSERT_TRUE(CreateTextCollection(stub.get(), "upserted_texts", docs).ok());
  ASSERT_TRUE(UpsertTexts(stub.get(), "upserted_texts", docs).ok());
  const std::vector<std::string> queries = {"large wild cat", "a bird in the city", "striped horse"};
  v1::SearchResponse ingested, upserted;
  ASSERT_TRUE(SearchText(stub.get(), "jsonl_texts", queries, 5, &ingested, true).ok());
  ASSERT_TRUE(SearchText(stub.get(), "upserted_texts", queries, 5, &upserted).ok());
  ASSERT_EQ(ingested.results_size(), 3);
  for (int q = 0; q < 3; ++q) {
    const v1::QueryResult& a = ingested.results(q);
    const v1::QueryResult& b = upserted.results(q);
    ASSERT_EQ(a.ids_size(), 5) << queries[q];
    EXPECT_THAT(a.ids(), ElementsAreArray(b.ids())) << queries[q];
    EXPECT_THAT(a.distances(), ElementsAreArray(b.distances())) << queries[q];
    for (int i = 0; i < a.ids_size(); ++i) {
      EXPECT_EQ(a.payloads(i).text(), docs[a.ids(i)]);
      EXPECT_EQ(a.payloads(i).metadata().at("n"), std::to_string(a.ids(i)));
    }
  }

  ASSERT_TRUE(CreateCollection(stub.get(), "jsonl_vectors", kDim, "Flat", v1::COSINE).ok());
  r = cluster_->Cli({"ingest", "jsonl_vectors", dir + "/docs.jsonl"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("embedder: "));
  EXPECT_THAT(r.err, HasSubstr("has no embedder"));
  // An IVF collection is trained from the first vectors it gets; texts cannot train it.
  r = cluster_->Cli({"collection", "create", "jsonl_ivf", "--dim", std::to_string(kDim), "--index",
                     "IVF4,Flat", "--embedder", "hash-tfidf-v1", "--fit-texts", dir + "/fit.txt"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = cluster_->Cli({"ingest", "jsonl_ivf", dir + "/docs.jsonl"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("texts without vectors cannot train collection 'jsonl_ivf'"));
  std::ofstream(dir + "/mixed.jsonl") << "{\"id\": 1, \"text\": \"a cat\"}\n"
                                      << "{\"id\": 2, \"text\": \"a dog\", \"vector\": [1, 2]}\n";
  r = cluster_->Cli({"ingest", "jsonl_texts", dir + "/mixed.jsonl"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("mixed.jsonl: row 1: has a \"vector\" but row 0 has none"));
  // A file without records (blank lines only) loads nothing, into any collection, and says
  // so, instead of being taken for texts without vectors. A missing collection is still
  // refused.
  std::ofstream(dir + "/empty.jsonl") << "\n  \n";
  for (const char* coll : {"jsonl_vectors", "jsonl_ivf", "jsonl_texts"}) {
    r = cluster_->Cli({"ingest", coll, dir + "/empty.jsonl"});
    EXPECT_EQ(r.exit_code, 0) << coll << ": " << r.err;
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("ingested 0 vectors into ", coll, ": ")));
    EXPECT_THAT(r.out, HasSubstr("empty.jsonl has no records")) << coll;
  }
  r = cluster_->Cli({"ingest", "no_such_collection", dir + "/empty.jsonl"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND"));
}

}  // namespace
}  // namespace shardvec::testing
