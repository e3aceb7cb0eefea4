#include "index/brute_force.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardvec::index {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kInfF = std::numeric_limits<float>::infinity();

TEST(BruteForceSearchTest, L2NearestFirstTiesBySmallerIdPadded) {
  // 1-d points; the query 2 is equidistant from 1 (id 20) and 3 (id 5).
  const std::vector<float> base = {1, 3, 0, 10};
  const std::vector<uint64_t> ids = {20, 5, 7, 9};
  const std::vector<float> query = {2};
  std::vector<double> d;
  std::vector<uint64_t> got;
  BruteForceSearch(Metric::kL2, 1, 4, base.data(), ids.data(), 1, query.data(), 6, &d, &got);
  EXPECT_THAT(got, ElementsAre(5, 20, 7, 9, kNoId, kNoId));
  EXPECT_THAT(d, ElementsAre(1, 1, 4, 64, kInf, kInf));
}

TEST(BruteForceSearchTest, InnerProductAndCosine) {
  const std::vector<float> base = {3, 0, 0, 1, 0, 0};  // (3,0), (0,1), (0,0).
  const std::vector<uint64_t> ids = {1, 2, 3};
  const std::vector<float> query = {1, 1};
  std::vector<double> d;
  std::vector<uint64_t> got;
  BruteForceSearch(Metric::kInnerProduct, 2, 3, base.data(), ids.data(), 1, query.data(), 4, &d,
                   &got);
  EXPECT_THAT(got, ElementsAre(1, 2, 3, kNoId));
  EXPECT_THAT(d, ElementsAre(3, 1, 0, -kInf));

  BruteForceSearch(Metric::kCosine, 2, 3, base.data(), ids.data(), 1, query.data(), 3, &d, &got);
  EXPECT_THAT(got, ElementsAre(1, 2, 3));  // 1 and 2 tie at cos 45 degrees; zero scores 0.
  EXPECT_THAT(d,
              ElementsAre(DoubleNear(std::sqrt(0.5), 1e-12), DoubleNear(std::sqrt(0.5), 1e-12), 0));
}

// One query, k = 4, L2: ids 1..4 at 1, 2, 2, 5 (2 and 3 tie).
class CheckKnnResultTest : public ::testing::Test {
 protected:
  absl::Status Check(const std::vector<float>& got_d, const std::vector<uint64_t>& got_ids) {
    return CheckKnnResult(Metric::kL2, 4, want_d_, want_ids_, got_d, got_ids, 1e-5);
  }

  std::vector<double> want_d_ = {1, 2, 2, 5};
  std::vector<uint64_t> want_ids_ = {1, 2, 3, 4};
};

TEST_F(CheckKnnResultTest, AcceptsExactMatch) {
  EXPECT_TRUE(Check({1, 2, 2, 5}, {1, 2, 3, 4}).ok());
}

TEST_F(CheckKnnResultTest, AcceptsSwapWithinTieAndFloatRounding) {
  EXPECT_TRUE(Check({1.000001f, 2, 2.00001f, 5}, {1, 3, 2, 4}).ok());
}

TEST_F(CheckKnnResultTest, RejectsSwapAcrossDistinctDistances) {
  const absl::Status status = Check({1, 2, 2, 5}, {2, 1, 3, 4});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("query 0, position 0"));
}

TEST_F(CheckKnnResultTest, RejectsOutsiderBeforeTheBoundary) {
  // Id 99 claims distance 2, displacing reference neighbour 3 (not at the boundary).
  EXPECT_THAT(Check({1, 2, 2, 5}, {1, 2, 99, 4}).message(), HasSubstr("position 2"));
}

TEST_F(CheckKnnResultTest, AcceptsOutsiderTiedWithKthNeighbour) {
  EXPECT_TRUE(Check({1, 2, 2, 5}, {1, 2, 3, 77}).ok());
}

TEST_F(CheckKnnResultTest, RejectsMissingDuplicateAndWrongDistance) {
  EXPECT_THAT(Check({1, 2, 2, kInfF}, {1, 2, 3, kNoId}).message(), HasSubstr("missing"));
  EXPECT_THAT(Check({1, 2, 2, 5}, {1, 2, 2, 4}).message(), HasSubstr("duplicate"));
  EXPECT_THAT(Check({1, 2, 2, 5.1f}, {1, 2, 3, 4}).message(), HasSubstr("distance differs"));
}

TEST_F(CheckKnnResultTest, NearZeroDistancesUseTheRowScale) {
  want_d_ = {0, 1e-9, 3, 4};
  EXPECT_TRUE(Check({1e-6f, 2e-6f, 3, 4}, {1, 2, 3, 4}).ok());
  EXPECT_FALSE(Check({1e-3f, 2e-6f, 3, 4}, {1, 2, 3, 4}).ok());
}

TEST_F(CheckKnnResultTest, PaddingMustMatchTheReference) {
  want_d_ = {1, 2, kInf, kInf};
  want_ids_ = {1, 2, kNoId, kNoId};
  EXPECT_TRUE(Check({1, 2, kInfF, kInfF}, {1, 2, kNoId, kNoId}).ok());
  EXPECT_THAT(Check({1, 2, 9, kInfF}, {1, 2, 3, kNoId}).message(), HasSubstr("want padding"));
  // The reference lists every vector, so an outsider cannot be a boundary tie.
  EXPECT_FALSE(Check({1, 2, kInfF, kInfF}, {1, 7, kNoId, kNoId}).ok());
}

TEST_F(CheckKnnResultTest, RejectsMismatchedSizes) {
  EXPECT_EQ(Check({1, 2, 2}, {1, 2, 3}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(RecallAtKTest, CountsReferenceNeighboursFoundPerRow) {
  const std::vector<uint64_t> want = {1, 2, 3, kNoId};  // Two rows of k = 2.
  EXPECT_DOUBLE_EQ(RecallAtK(2, want, std::vector<uint64_t>{2, 1, 3, 4}), 1.0);
  EXPECT_DOUBLE_EQ(RecallAtK(2, want, std::vector<uint64_t>{1, 9, 1, 3}), 2.0 / 3);
  // Found only in another query's row does not count.
  EXPECT_DOUBLE_EQ(RecallAtK(2, want, std::vector<uint64_t>{3, 9, 1, 2}), 0.0);
}

}  // namespace
}  // namespace shardvec::index
