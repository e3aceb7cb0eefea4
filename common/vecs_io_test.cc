#include "common/vecs_io.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardvec {
namespace {

using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

FloatMatrix Sample(int64_t rows, int dim) {
  FloatMatrix m{rows, dim, {}};
  for (int64_t i = 0; i < rows * dim; ++i) m.data.push_back(static_cast<float>(i) * 0.5f - 3.0f);
  return m;
}

TEST(VecsIoTest, FvecsRoundTripWholeAndStreamed) {
  const std::string path = TempPath("a.fvecs");
  FloatMatrix m = Sample(37, 5);
  ASSERT_TRUE(WriteFvecs(path, m).ok());

  absl::StatusOr<FloatMatrix> back = ReadFvecs(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->rows, 37);
  EXPECT_EQ(back->dim, 5);
  EXPECT_EQ(back->data, m.data);

  auto reader = FvecsReader::Open(path);
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ((*reader)->total_rows(), 37);
  std::vector<float> streamed;
  FloatMatrix chunk;
  int chunks = 0;
  do {
    ASSERT_TRUE((*reader)->Next(10, &chunk).ok());
    streamed.insert(streamed.end(), chunk.data.begin(), chunk.data.end());
    ++chunks;
  } while (chunk.rows > 0);
  EXPECT_EQ(chunks, 5);  // 10 + 10 + 10 + 7 + end
  EXPECT_EQ(streamed, m.data);
}

TEST(VecsIoTest, IvecsRoundTrip) {
  const std::string path = TempPath("a.ivecs");
  IntMatrix m{2, 3, {1, -2, 3, 4, 5, -1}};
  ASSERT_TRUE(WriteIvecs(path, m).ok());
  absl::StatusOr<IntMatrix> back = ReadIvecs(path);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->data, m.data);
}

TEST(VecsIoTest, ErrorsNameFileRowAndProblem) {
  EXPECT_EQ(ReadFvecs(TempPath("missing.fvecs")).status().code(), absl::StatusCode::kNotFound);

  const std::string truncated = TempPath("truncated.fvecs");
  ASSERT_TRUE(WriteFvecs(truncated, Sample(4, 8)).ok());
  ASSERT_EQ(truncate(truncated.c_str(), 4 * 36 - 6), 0);
  absl::Status s = ReadFvecs(truncated).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr(truncated + ": row 3: truncated"));

  const std::string mixed = TempPath("mixed.fvecs");
  ASSERT_TRUE(WriteFvecs(mixed, Sample(2, 4)).ok());
  std::FILE* f = std::fopen(mixed.c_str(), "ab");
  int32_t d = 3;
  float v[3] = {1, 2, 3};
  std::fwrite(&d, 4, 1, f);
  std::fwrite(v, 4, 3, f);
  std::fclose(f);
  s = ReadFvecs(mixed).status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("row 2: dimension 3 differs from the first row's 4"));
}

}  // namespace
}  // namespace shardvec
