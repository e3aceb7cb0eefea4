#include "common/validate.h"

#include <cmath>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardvec {
namespace {

using ::testing::HasSubstr;

v1::CollectionSpec Spec(int dim) {
  v1::CollectionSpec spec;
  spec.set_name("docs");
  spec.set_dim(dim);
  EXPECT_TRUE(NormalizeCollectionSpec(&spec).ok());
  return spec;
}

void ExpectInvalid(const absl::Status& s, const std::string& field) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(field)) << s;
}

TEST(ValidateTest, SpecDefaultsAndErrors) {
  v1::CollectionSpec spec = Spec(8);
  EXPECT_EQ(spec.metric(), v1::L2);
  EXPECT_EQ(spec.index_spec(), "Flat");
  EXPECT_EQ(spec.device(), v1::CPU);

  v1::CollectionSpec bad = spec;
  bad.set_dim(0);
  ExpectInvalid(NormalizeCollectionSpec(&bad), "dim");
  bad = spec;
  bad.set_name("has space");
  ExpectInvalid(NormalizeCollectionSpec(&bad), "name");
  bad.set_name("");
  ExpectInvalid(NormalizeCollectionSpec(&bad), "name");
  bad = spec;
  bad.set_metric(static_cast<v1::Metric>(17));
  ExpectInvalid(NormalizeCollectionSpec(&bad), "metric");
}

TEST(ValidateTest, UpsertChecksEveryRecord) {
  v1::CollectionSpec spec = Spec(3);
  v1::UpsertRequest req;
  ExpectInvalid(ValidateUpsert(spec, req), "records: empty");
  for (int i = 0; i < 3; ++i) {
    v1::Record* r = req.add_records();
    r->set_id(i);
    r->add_vector(1);
    r->add_vector(2);
    r->add_vector(3);
  }
  EXPECT_TRUE(ValidateUpsert(spec, req).ok());

  v1::UpsertRequest wrong_dim = req;
  wrong_dim.mutable_records(2)->add_vector(4);
  ExpectInvalid(ValidateUpsert(spec, wrong_dim), "records[2].vector: dimension 4");

  v1::UpsertRequest nan = req;
  nan.mutable_records(1)->set_vector(1, std::nanf(""));
  ExpectInvalid(ValidateUpsert(spec, nan), "records[1].vector[1]: NaN");

  v1::UpsertRequest inf = req;
  inf.mutable_records(0)->set_vector(2, -std::numeric_limits<float>::infinity());
  ExpectInvalid(ValidateUpsert(spec, inf), "records[0].vector[2]: Inf");

  v1::UpsertRequest reserved = req;
  reserved.mutable_records(1)->set_id(~uint64_t{0});
  ExpectInvalid(ValidateUpsert(spec, reserved), "records[1].id");
}

TEST(ValidateTest, SearchChecksKAndQueries) {
  v1::CollectionSpec spec = Spec(2);
  v1::SearchRequest req;
  req.set_k(10);
  ExpectInvalid(ValidateSearch(spec, req), "queries: empty");
  v1::Vector* q = req.add_queries();
  q->add_values(0.5f);
  q->add_values(0.25f);
  EXPECT_TRUE(ValidateSearch(spec, req).ok());

  for (int k : {0, -1, 4097}) {
    v1::SearchRequest bad = req;
    bad.set_k(k);
    ExpectInvalid(ValidateSearch(spec, bad), "k:");
  }
  v1::SearchRequest edge = req;
  edge.set_k(4096);
  EXPECT_TRUE(ValidateSearch(spec, edge).ok());

  v1::SearchRequest short_query = req;
  short_query.add_queries()->add_values(1.0f);
  ExpectInvalid(ValidateSearch(spec, short_query), "queries[1]: dimension 1");

  v1::SearchRequest nan = req;
  nan.mutable_queries(0)->set_values(0, std::nanf(""));
  ExpectInvalid(ValidateSearch(spec, nan), "queries[0][0]: NaN");

  v1::SearchRequest too_many = req;
  for (int i = 0; i < kMaxQueriesPerSearch; ++i) *too_many.add_queries() = req.queries(0);
  ExpectInvalid(ValidateSearch(spec, too_many), "queries: batch of 16385");
}

TEST(ValidateTest, FirstNonFiniteFindsTheFirstBadComponent) {
  std::vector<float> x(1000, 0.25f);
  EXPECT_EQ(FirstNonFinite(x.data(), 1000), -1);
  EXPECT_EQ(FirstNonFinite(x.data(), 0), -1);
  x[700] = -std::numeric_limits<float>::infinity();
  x[801] = std::nanf("");
  EXPECT_EQ(FirstNonFinite(x.data(), 1000), 700);
  EXPECT_EQ(FirstNonFinite(x.data() + 701, 299), 100);
  x[3] = std::numeric_limits<float>::max();  // large but finite
  EXPECT_EQ(FirstNonFinite(x.data(), 600), -1);
}

TEST(ValidateTest, IdBatches) {
  google::protobuf::RepeatedField<uint64_t> ids;
  ExpectInvalid(ValidateIds("ids", ids), "ids: empty");
  ids.Add(7);
  EXPECT_TRUE(ValidateIds("ids", ids).ok());
}

}  // namespace
}  // namespace shardvec
