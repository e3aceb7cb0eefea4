#include "router/merge.h"

#include <vector>

#include "gtest/gtest.h"

namespace shardvec::router {
namespace {

v1::QueryResult List(std::vector<std::pair<uint64_t, float>> hits, bool payloads = false) {
  v1::QueryResult r;
  for (auto [id, d] : hits) {
    r.add_ids(id);
    r.add_distances(d);
    if (payloads) r.add_payloads()->set_text("doc " + std::to_string(id));
  }
  return r;
}

std::vector<uint64_t> Ids(const v1::QueryResult& r) { return {r.ids().begin(), r.ids().end()}; }
std::vector<float> Distances(const v1::QueryResult& r) { return {r.distances().begin(), r.distances().end()}; }

TEST(MergeTest, InterleavesSortedListsSmallestFirstForL2) {
  v1::QueryResult a = List({{1, 0.1f}, {2, 0.4f}, {3, 0.9f}});
  v1::QueryResult b = List({{10, 0.2f}, {11, 0.3f}, {12, 0.5f}});
  v1::QueryResult out;
  MergeTopK({&a, &b}, 4, /*larger_is_better=*/false, &out);
  EXPECT_EQ(Ids(out), (std::vector<uint64_t>{1, 10, 11, 2}));
  EXPECT_EQ(Distances(out), (std::vector<float>{0.1f, 0.2f, 0.3f, 0.4f}));
}

TEST(MergeTest, LargestFirstForSimilarity) {
  v1::QueryResult a = List({{1, 0.9f}, {2, 0.5f}});
  v1::QueryResult b = List({{3, 0.95f}, {4, 0.1f}});
  v1::QueryResult out;
  MergeTopK({&a, &b}, 3, /*larger_is_better=*/true, &out);
  EXPECT_EQ(Ids(out), (std::vector<uint64_t>{3, 1, 2}));
}

TEST(MergeTest, TiesOrderedBySmallerId) {
  v1::QueryResult a = List({{9, 1.0f}, {20, 2.0f}});
  v1::QueryResult b = List({{4, 1.0f}, {7, 1.0f}});
  v1::QueryResult c = List({{5, 1.0f}});
  v1::QueryResult out;
  MergeTopK({&a, &b, &c}, 5, false, &out);
  EXPECT_EQ(Ids(out), (std::vector<uint64_t>{4, 5, 7, 9, 20}));
}

TEST(MergeTest, DuplicateIdsKeptOnceAtBestDistance) {
  // Slot being moved: both shards answer for id 7.
  v1::QueryResult a = List({{7, 0.5f}, {8, 0.6f}}, true);
  v1::QueryResult b = List({{7, 0.5f}, {9, 0.7f}}, true);
  v1::QueryResult out;
  MergeTopK({&a, &b}, 10, false, &out);
  EXPECT_EQ(Ids(out), (std::vector<uint64_t>{7, 8, 9}));
  ASSERT_EQ(out.payloads_size(), 3);
  EXPECT_EQ(out.payloads(1).text(), "doc 8");
}

TEST(MergeTest, DuplicateAtEqualDistanceKeepsTheEarlierListsCopy) {
  v1::QueryResult a = List({{3, 0.1f}, {7, 0.5f}});
  for (int i = 0; i < a.ids_size(); ++i) a.add_payloads()->set_text("from a");
  v1::QueryResult b = List({{7, 0.5f}}, true);
  v1::QueryResult out;
  MergeTopK({&b, &a}, 10, false, &out);
  ASSERT_EQ(out.payloads_size(), 2);
  EXPECT_EQ(out.payloads(1).text(), "doc 7");
  v1::QueryResult reversed;
  MergeTopK({&a, &b}, 10, false, &reversed);
  ASSERT_EQ(reversed.payloads_size(), 2);
  EXPECT_EQ(reversed.payloads(1).text(), "from a");
}

TEST(MergeTest, FewerThanKAndEmptyLists) {
  v1::QueryResult a = List({{1, 0.3f}});
  v1::QueryResult empty;
  v1::QueryResult out;
  MergeTopK({&a, &empty}, 10, false, &out);
  EXPECT_EQ(Ids(out), (std::vector<uint64_t>{1}));
  v1::QueryResult none;
  MergeTopK({}, 10, false, &none);
  EXPECT_EQ(none.ids_size(), 0);
}

TEST(MergeTest, StopsAtK) {
  v1::QueryResult a = List({{1, 0.1f}, {2, 0.2f}, {3, 0.3f}});
  v1::QueryResult b = List({{4, 0.15f}, {5, 0.25f}});
  v1::QueryResult out;
  MergeTopK({&a, &b}, 2, false, &out);
  EXPECT_EQ(Ids(out), (std::vector<uint64_t>{1, 4}));
}

TEST(MergeTest, PayloadsDroppedWhenAnyListLacksThem) {
  v1::QueryResult a = List({{1, 0.1f}}, true);
  v1::QueryResult b = List({{2, 0.2f}}, false);
  v1::QueryResult out;
  MergeTopK({&a, &b}, 2, false, &out);
  EXPECT_EQ(out.ids_size(), 2);
  EXPECT_EQ(out.payloads_size(), 0);
}

}  // namespace
}  // namespace shardvec::router
