#include "common/vector_source.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#ifdef SHARDVEC_HAVE_HDF5
#include <hdf5/serial/hdf5.h>
#endif

namespace shardvec {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Metadata = std::map<std::string, std::string>;

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

template <typename T>
void Put(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(v));
}

template <typename T>
void PutAll(std::string* s, const std::vector<T>& values) {
  for (T v : values) Put(s, v);
}

// rows * dim floats that are exact in float32: -3, -2.5, -2, ...
std::vector<float> Sample(int64_t rows, int dim) {
  std::vector<float> v;
  for (int64_t i = 0; i < rows * dim; ++i) v.push_back(static_cast<float>(i) * 0.5f - 3.0f);
  return v;
}

// Everything a source yielded, with texts and metadata padded to one per row.
struct ReadBack {
  int dim = 0;
  int64_t rows = 0;
  std::vector<float> data;
  std::vector<uint64_t> ids;
  std::vector<std::string> texts;
  std::vector<Metadata> metadata;
};

// Reads `path` to its end in batches of `batch` rows, checking how batches line up.
absl::StatusOr<ReadBack> ReadAll(const std::string& path, int64_t batch, const SourceOptions& options = {}) {
  absl::StatusOr<std::unique_ptr<VectorSource>> source = VectorSource::Open(path, options);
  if (!source.ok()) return source.status();
  ReadBack all;
  all.dim = (*source)->dim();
  SourceBatch b;
  for (;;) {
    absl::Status s = (*source)->Next(batch, &b);
    if (!s.ok()) return s;
    if (b.vectors.rows == 0) break;
    EXPECT_LE(b.vectors.rows, batch);
    EXPECT_EQ(b.first_row, all.rows);
    EXPECT_EQ(b.vectors.dim, all.dim);
    EXPECT_EQ(b.vectors.data.size(), static_cast<size_t>(b.vectors.rows * b.vectors.dim));
    EXPECT_TRUE(b.ids.empty() || b.ids.size() == static_cast<size_t>(b.vectors.rows));
    EXPECT_TRUE(b.texts.empty() || b.texts.size() == static_cast<size_t>(b.vectors.rows));
    EXPECT_TRUE(b.metadata.empty() || b.metadata.size() == static_cast<size_t>(b.vectors.rows));
    all.data.insert(all.data.end(), b.vectors.data.begin(), b.vectors.data.end());
    all.ids.insert(all.ids.end(), b.ids.begin(), b.ids.end());
    for (int64_t i = 0; i < b.vectors.rows; ++i) {
      all.texts.push_back(b.texts.empty() ? "" : b.texts[i]);
      all.metadata.push_back(b.metadata.empty() ? Metadata() : b.metadata[i]);
    }
    all.rows += b.vectors.rows;
  }
  const int64_t total = (*source)->total_rows();
  if (total >= 0) {
    EXPECT_EQ(total, all.rows);
  }
  return all;
}

// Reads the whole file in batches of 1, 3 and more than all, expecting `want`.
void ExpectReads(const std::string& path, int dim, const std::vector<float>& want,
                 const SourceOptions& options = {}) {
  for (int64_t batch : {1, 3, 1 << 20}) {
    SCOPED_TRACE(absl::StrCat(path, " batch ", batch));
    absl::StatusOr<ReadBack> got = ReadAll(path, batch, options);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->dim, dim);
    EXPECT_EQ(got->rows, static_cast<int64_t>(want.size()) / dim);
    EXPECT_EQ(got->data, want);
    EXPECT_TRUE(got->ids.empty());
  }
}

void ExpectError(const std::string& path, absl::StatusCode code, const std::string& substring,
                 const SourceOptions& options = {}) {
  absl::StatusOr<ReadBack> got = ReadAll(path, 2, options);
  ASSERT_FALSE(got.ok()) << path;
  EXPECT_EQ(got.status().code(), code) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr(substring));
  EXPECT_THAT(got.status().message(), HasSubstr(path));
}

TEST(VectorSourceTest, UnknownExtensionListsFormats) {
  const std::string path = TempPath("vectors.csv");
  WriteBytes(path, "1,2,3\n");
  ExpectError(path, absl::StatusCode::kInvalidArgument,
              ".fvecs .bvecs .fbin .u8bin .i8bin .npy .hdf5 .h5 .jsonl");
}

TEST(VectorSourceTest, MissingFileIsNotFound) {
  for (const char* name : {"absent.fvecs", "absent.bvecs", "absent.fbin", "absent.npy", "absent.jsonl"}) {
    ExpectError(TempPath(name), absl::StatusCode::kNotFound, "cannot open: No such file or directory");
  }
}

TEST(VectorSourceTest, NextRefusesNonPositiveMaxRows) {
  const std::string path = TempPath("small.fbin");
  std::string bytes;
  PutAll<int32_t>(&bytes, {1, 2});
  PutAll<float>(&bytes, {1, 2});
  WriteBytes(path, bytes);
  auto source = VectorSource::Open(path);
  ASSERT_TRUE(source.ok()) << source.status();
  SourceBatch batch;
  EXPECT_EQ((*source)->Next(0, &batch).code(), absl::StatusCode::kInvalidArgument);
}

TEST(VectorSourceTest, Fvecs) {
  const std::string path = TempPath("a.fvecs");
  ASSERT_TRUE(WriteFvecs(path, FloatMatrix{7, 3, Sample(7, 3)}).ok());
  ExpectReads(path, 3, Sample(7, 3));
  EXPECT_STREQ((*VectorSource::Open(path))->format(), "fvecs");

  std::ofstream(path, std::ios::binary | std::ios::app).write("\x03\x00", 2);
  ExpectError(path, absl::StatusCode::kInvalidArgument, "row 7: truncated");
}

std::string BvecsBytes(int rows, int dim, int odd_row = -1) {
  std::string bytes;
  for (int r = 0; r < rows; ++r) {
    Put<int32_t>(&bytes, r == odd_row ? dim + 1 : dim);
    for (int j = 0; j < dim; ++j) Put<uint8_t>(&bytes, static_cast<uint8_t>((r * dim + j) * 37));
  }
  return bytes;
}

TEST(VectorSourceTest, Bvecs) {
  const std::string path = TempPath("a.bvecs");
  WriteBytes(path, BvecsBytes(5, 4));
  std::vector<float> want;
  for (int i = 0; i < 20; ++i) want.push_back(static_cast<float>(static_cast<uint8_t>(i * 37)));
  ExpectReads(path, 4, want);
}

TEST(VectorSourceTest, BvecsRowWithOtherDim) {
  const std::string path = TempPath("odd.bvecs");
  WriteBytes(path, BvecsBytes(5, 4, /*odd_row=*/2));
  ExpectError(path, absl::StatusCode::kInvalidArgument, "row 2: dimension 5 differs from the first row's 4");
}

TEST(VectorSourceTest, BvecsTruncatedLastRow) {
  const std::string path = TempPath("short.bvecs");
  WriteBytes(path, BvecsBytes(4, 4).substr(0, 4 * 8 - 2));
  ExpectError(path, absl::StatusCode::kInvalidArgument, "row 3: truncated");
}

// int32 n, int32 d, then `values` of type T.
template <typename T>
std::string BinBytes(int32_t n, int32_t d, const std::vector<T>& values) {
  std::string bytes;
  PutAll<int32_t>(&bytes, {n, d});
  PutAll<T>(&bytes, values);
  return bytes;
}

TEST(VectorSourceTest, Fbin) {
  const std::string path = TempPath("a.fbin");
  WriteBytes(path, BinBytes(7, 3, Sample(7, 3)));
  ExpectReads(path, 3, Sample(7, 3));
  EXPECT_STREQ((*VectorSource::Open(path))->format(), "fbin");
}

TEST(VectorSourceTest, ExtensionIsCaseInsensitive) {
  const std::string path = TempPath("UPPER.FBIN");
  WriteBytes(path, BinBytes(2, 3, Sample(2, 3)));
  ExpectReads(path, 3, Sample(2, 3));
}

TEST(VectorSourceTest, U8binAndI8bin) {
  std::vector<uint8_t> u8;
  std::vector<int8_t> i8;
  std::vector<float> u8_want, i8_want;
  for (int i = 0; i < 6 * 4; ++i) {
    u8.push_back(static_cast<uint8_t>(i * 11));
    i8.push_back(static_cast<int8_t>(i * 11 - 128));
    u8_want.push_back(static_cast<float>(u8.back()));
    i8_want.push_back(static_cast<float>(i8.back()));
  }
  WriteBytes(TempPath("a.u8bin"), BinBytes(6, 4, u8));
  WriteBytes(TempPath("a.i8bin"), BinBytes(6, 4, i8));
  ExpectReads(TempPath("a.u8bin"), 4, u8_want);
  ExpectReads(TempPath("a.i8bin"), 4, i8_want);
}

TEST(VectorSourceTest, FbinWithZeroRowsKnowsItsDim) {
  const std::string path = TempPath("empty.fbin");
  WriteBytes(path, BinBytes<float>(0, 8, {}));
  auto source = VectorSource::Open(path);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->dim(), 8);
  EXPECT_EQ((*source)->total_rows(), 0);
  SourceBatch batch;
  ASSERT_TRUE((*source)->Next(100, &batch).ok());
  EXPECT_EQ(batch.vectors.rows, 0);
  EXPECT_EQ(batch.vectors.dim, 8);
}

TEST(VectorSourceTest, FbinTruncatedNamesTheRow) {
  const std::string path = TempPath("short.fbin");
  std::vector<float> values = Sample(5, 3);
  values.resize(4 * 3 + 2);
  WriteBytes(path, BinBytes(5, 3, values));
  ExpectError(path, absl::StatusCode::kInvalidArgument, "row 4: truncated: the header says 5 rows of dim 3");
}

TEST(VectorSourceTest, FbinHeaderInconsistentWithFileSize) {
  const std::string path = TempPath("long.fbin");
  WriteBytes(path, BinBytes(5, 3, Sample(6, 3)));
  ExpectError(path, absl::StatusCode::kInvalidArgument, "the header says 5 rows of dim 3 (68 bytes");
  ExpectError(path, absl::StatusCode::kInvalidArgument, "file has 80 bytes, 12 too many");

  WriteBytes(path, BinBytes(6, 4, Sample(4, 4)));  // whole rows, but fewer than n
  ExpectError(path, absl::StatusCode::kInvalidArgument, "only 4 whole rows");

  WriteBytes(path, BinBytes(5, 0, Sample(1, 3)));
  ExpectError(path, absl::StatusCode::kInvalidArgument, "header dimension d=0 is not plausible");
  WriteBytes(path, BinBytes(-1, 3, Sample(1, 3)));
  ExpectError(path, absl::StatusCode::kInvalidArgument, "header row count n=-1 is negative");
  WriteBytes(path, "\x01\x00");
  ExpectError(path, absl::StatusCode::kInvalidArgument, "fewer than the 8-byte header");
}

// An .npy file written as NumPy does: magic, version, header length, a dict padded
// with spaces and a newline to a multiple of 64 bytes, then the data.
void WriteNpy(const std::string& path, const std::string& descr, bool fortran, const std::string& shape,
              const std::string& data, int major = 1) {
  std::string dict = absl::StrCat("{'descr': '", descr, "', 'fortran_order': ", fortran ? "True" : "False",
                                  ", 'shape': ", shape, ", }");
  const size_t prefix = 8 + (major == 1 ? 2 : 4);
  while ((prefix + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string bytes = "\x93NUMPY";
  bytes += static_cast<char>(major);
  bytes += '\0';
  if (major == 1) {
    Put<uint16_t>(&bytes, static_cast<uint16_t>(dict.size()));
  } else {
    Put<uint32_t>(&bytes, static_cast<uint32_t>(dict.size()));
  }
  WriteBytes(path, bytes + dict + data);
}

template <typename T>
std::string Raw(const std::vector<T>& values) {
  std::string s;
  PutAll(&s, values);
  return s;
}

TEST(VectorSourceTest, NpyFloat32) {
  const std::string path = TempPath("a.npy");
  WriteNpy(path, "<f4", false, "(5, 3)", Raw(Sample(5, 3)));
  ExpectReads(path, 3, Sample(5, 3));
  EXPECT_STREQ((*VectorSource::Open(path))->format(), "npy");
}

TEST(VectorSourceTest, NpyVersion2Float64IsConverted) {
  const std::string path = TempPath("f8.npy");
  const std::vector<double> values = {0.1, -2.0, 1e-3, 3.25, 1e10, -0.0, 7.0, 8.5};
  WriteNpy(path, "<f8", false, "(4, 2)", Raw(values), /*major=*/2);
  std::vector<float> want;
  for (double v : values) want.push_back(static_cast<float>(v));
  ExpectReads(path, 2, want);
}

TEST(VectorSourceTest, NpyVersion3Float16IsConverted) {
  const std::string path = TempPath("f2.npy");
  // 1, -2, 0.5, the smallest subnormal 2^-24, 65504 (the largest half), +inf.
  const std::vector<uint16_t> halves = {0x3c00, 0xc000, 0x3800, 0x0001, 0x7bff, 0x7c00};
  WriteNpy(path, "<f2", false, "(2L, 3L)", Raw(halves), /*major=*/3);
  ExpectReads(path, 3,
              {1.0f, -2.0f, 0.5f, std::ldexp(1.0f, -24), 65504.0f, std::numeric_limits<float>::infinity()});
}

TEST(VectorSourceTest, NpyUint8IsConverted) {
  const std::string path = TempPath("u1.npy");
  WriteNpy(path, "|u1", false, "(2, 2)", Raw(std::vector<uint8_t>{0, 1, 200, 255}));
  ExpectReads(path, 2, {0.0f, 1.0f, 200.0f, 255.0f});
}

TEST(VectorSourceTest, NpyRefusesWhatItCannotRead) {
  const std::string path = TempPath("bad.npy");
  WriteNpy(path, "<f4", false, "(2, 3, 4)", Raw(Sample(6, 4)));
  ExpectError(path, absl::StatusCode::kInvalidArgument, "shape (2, 3, 4) has 3 dimensions; expected 2");
  WriteNpy(path, "<f4", false, "(12,)", Raw(Sample(4, 3)));
  ExpectError(path, absl::StatusCode::kInvalidArgument, "has 1 dimensions");
  WriteNpy(path, "<f4", true, "(4, 3)", Raw(Sample(4, 3)));
  ExpectError(path, absl::StatusCode::kInvalidArgument, "fortran_order is True");
  WriteNpy(path, ">f4", false, "(4, 3)", Raw(Sample(4, 3)));
  ExpectError(path, absl::StatusCode::kInvalidArgument, "dtype '>f4' is big-endian");
  WriteNpy(path, "<i4", false, "(4, 3)", Raw(Sample(4, 3)));
  ExpectError(path, absl::StatusCode::kInvalidArgument, "dtype '<i4' is not supported");
  WriteNpy(path, "<f4", false, "(4, 3)", Raw(Sample(4, 3)).substr(0, 40));
  ExpectError(path, absl::StatusCode::kInvalidArgument, "row 3: truncated");
  WriteBytes(path, "PK\x03\x04 not numpy");
  ExpectError(path, absl::StatusCode::kInvalidArgument, "not a NumPy .npy file");
}

#ifdef SHARDVEC_HAVE_HDF5

void WriteDataset(hid_t file, const char* name, hid_t file_type, hid_t memory_type, hsize_t rows,
                  hsize_t cols, const void* data, bool chunked) {
  const hsize_t dims[2] = {rows, cols};
  const hsize_t chunk[2] = {4, cols};
  hid_t space = H5Screate_simple(2, dims, nullptr);
  hid_t create = H5Pcreate(H5P_DATASET_CREATE);
  if (chunked) H5Pset_chunk(create, 2, chunk);
  hid_t dataset = H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, create, H5P_DEFAULT);
  ASSERT_GE(dataset, 0) << name;
  ASSERT_GE(H5Dwrite(dataset, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0) << name;
  H5Dclose(dataset);
  H5Pclose(create);
  H5Sclose(space);
}

// The ann-benchmarks layout: train (float32, chunked), test (float64 here) and
// neighbors (int32).
void WriteAnnBenchmarksFile(const std::string& path) {
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  const std::vector<float> train = Sample(10, 5);
  std::vector<double> test;
  for (int i = 0; i < 7 * 5; ++i) test.push_back(0.1 * i - 1.0);
  const std::vector<int32_t> neighbors(7 * 3, 1);
  WriteDataset(file, "train", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 10, 5, train.data(), /*chunked=*/true);
  WriteDataset(file, "test", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 7, 5, test.data(), /*chunked=*/false);
  WriteDataset(file, "neighbors", H5T_STD_I32LE, H5T_NATIVE_INT32, 7, 3, neighbors.data(), /*chunked=*/false);
  H5Fclose(file);
}

TEST(VectorSourceTest, Hdf5TrainAndTest) {
  const std::string path = TempPath("ann.hdf5");
  WriteAnnBenchmarksFile(path);
  ExpectReads(path, 5, Sample(10, 5));
  EXPECT_STREQ((*VectorSource::Open(path))->format(), "hdf5");

  SourceOptions test;
  test.hdf5_dataset = "test";
  std::vector<float> want;
  for (int i = 0; i < 7 * 5; ++i) want.push_back(static_cast<float>(0.1 * i - 1.0));
  ExpectReads(path, 5, want, test);
}

TEST(VectorSourceTest, Hdf5Errors) {
  const std::string path = TempPath("ann.h5");
  WriteAnnBenchmarksFile(path);
  SourceOptions options;
  options.hdf5_dataset = "learn";
  ExpectError(path, absl::StatusCode::kInvalidArgument,
              "no dataset \"learn\"; the file has: neighbors, test, train", options);
  options.hdf5_dataset = "neighbors";
  ExpectError(path, absl::StatusCode::kInvalidArgument, "dataset \"neighbors\" holds integers", options);

  const std::string not_hdf5 = TempPath("text.h5");
  WriteBytes(not_hdf5, "just text");
  ExpectError(not_hdf5, absl::StatusCode::kInvalidArgument, "not an HDF5 file");
  ExpectError(TempPath("absent.h5"), absl::StatusCode::kNotFound, "cannot open");
}

#else

TEST(VectorSourceTest, Hdf5IsUnimplementedInPortableBuild) {
  const std::string path = TempPath("ann.hdf5");
  WriteBytes(path, "not read");
  ExpectError(path, absl::StatusCode::kUnimplemented, "this build has no HDF5 support (portable build)");
}

#endif  // SHARDVEC_HAVE_HDF5

TEST(VectorSourceTest, JsonlWithIdsTextsAndMetadata) {
  const std::string path = TempPath("a.jsonl");
  WriteBytes(path,
             "{\"id\": 5, \"vector\": [1, 2.5, -3], \"text\": \"hello\", "
             "\"metadata\": {\"k\": \"v\", \"n\": 2.50, \"b\": true, \"gone\": null}}\n"
             "\n"
             "{\"id\": 18446744073709551614, \"vector\": [0, 0, 0], \"text\": null}\n"
             "   \r\n"
             "{\"metadata\": {}, \"id\": 7, \"vector\": [4, 5, 6], \"text\": \"\"}\r\n"
             "{\"id\": 0, \"vector\": [0.1, 0, 0], \"metadata\": {\"x\": \"y\"}}");
  for (int64_t batch : {1, 3, 100}) {
    SCOPED_TRACE(batch);
    absl::StatusOr<ReadBack> got = ReadAll(path, batch);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->dim, 3);
    EXPECT_EQ(got->rows, 4);
    EXPECT_EQ(got->data, (std::vector<float>{1, 2.5f, -3, 0, 0, 0, 4, 5, 6, 0.1f, 0, 0}));
    EXPECT_THAT(got->ids, ElementsAre(5, 18446744073709551614ull, 7, 0));
    EXPECT_THAT(got->texts, ElementsAre("hello", "", "", ""));
    EXPECT_THAT(got->metadata, ElementsAre(Metadata{{"b", "true"}, {"k", "v"}, {"n", "2.5"}}, Metadata(),
                                           Metadata(), Metadata{{"x", "y"}}));
  }
  auto source = VectorSource::Open(path);
  ASSERT_TRUE(source.ok());
  EXPECT_EQ((*source)->total_rows(), -1);
  EXPECT_STREQ((*source)->format(), "jsonl");
}

TEST(VectorSourceTest, JsonlWithoutIdsUsesRowNumbers) {
  const std::string path = TempPath("noids.jsonl");
  WriteBytes(path, "{\"vector\": [1, 2]}\n{\"vector\": [3, 4]}\n{\"vector\": [5, 6]}\n");
  absl::StatusOr<ReadBack> got = ReadAll(path, 2);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->data, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_TRUE(got->ids.empty());
}

// Texts without vectors, for a collection whose router embeds them: dimension 0, one text
// per row, ids and metadata as with vectors.
TEST(VectorSourceTest, JsonlOfTextsWithoutVectors) {
  const std::string path = TempPath("texts.jsonl");
  WriteBytes(path,
             "{\"id\": 3, \"text\": \"large wild cat\", \"metadata\": {\"k\": \"v\"}}\n"
             "\n"
             "{\"id\": 9, \"text\": \"a motor vehicle\"}\n"
             "{\"id\": 4, \"text\": \"sweet fruit\", \"vector\": null}\n");
  for (int64_t batch : {1, 2, 100}) {
    SCOPED_TRACE(batch);
    absl::StatusOr<ReadBack> got = ReadAll(path, batch);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->dim, 0);
    EXPECT_EQ(got->rows, 3);
    EXPECT_TRUE(got->data.empty());
    EXPECT_THAT(got->ids, ElementsAre(3, 9, 4));
    EXPECT_THAT(got->texts, ElementsAre("large wild cat", "a motor vehicle", "sweet fruit"));
    EXPECT_THAT(got->metadata, ElementsAre(Metadata{{"k", "v"}}, Metadata(), Metadata()));
  }
}

TEST(VectorSourceTest, JsonlEmptyFileHasNoRows) {
  const std::string path = TempPath("empty.jsonl");
  WriteBytes(path, "\n  \n");
  absl::StatusOr<ReadBack> got = ReadAll(path, 10);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->rows, 0);
  EXPECT_EQ(got->dim, 0);
  // Known to be empty at Open (total_rows 0), where a file with records is of unknown length.
  auto source = VectorSource::Open(path);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->total_rows(), 0);
  WriteBytes(path, "\n{\"id\": 1, \"text\": \"a cat\"}\n");
  source = VectorSource::Open(path);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->total_rows(), -1);
}

TEST(VectorSourceTest, JsonlErrorsNameTheRow) {
  struct Case {
    std::string lines;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"{\"vector\": [1, 2]}\n\n{\"id\": 2, \"text\": \"a\"}\n",
       "row 1: has no \"vector\" but row 0 has one; either every row has a vector or none does (line 3)"},
      {"{\"text\": \"a\"}\n{\"vector\": [1, 2], \"text\": \"b\"}\n",
       "row 1: has a \"vector\" but row 0 has none"},
      {"{\"vector\": [1, 2]}\n{\"id\": 2}\n",
       "row 1: no \"vector\" and no \"text\" (a row without a vector needs the text to embed) (line 2)"},
      {"{\"text\": \"a\"}\n{\"text\": \"\"}\n", "row 1: no \"vector\" and no \"text\""},
      {"{\"vector\": [1, 2]}\n{\"vector\": [1, 2]}\n{\"vector\": [1, 2, 3]}\n",
       "row 2: vector has 3 components; the first row's has 2"},
      {"{\"vector\": [1, 2]}\n{\"vector\": [1, 2}\n", "row 1: bad JSON: parse error"},
      {"{\"id\": 1, \"vector\": [1, 2]}\n{\"vector\": [1, 2]}\n",
       "row 1: has no \"id\" but row 0 has one; either every row has an id or none does"},
      {"{\"vector\": [1, 2]}\n{\"id\": 1, \"vector\": [1, 2]}\n", "row 1: has an \"id\" but row 0 has none"},
      {"{\"id\": -3, \"vector\": [1, 2]}\n", "row 0: id -3 is negative"},
      {"{\"id\": 18446744073709551615, \"vector\": [1, 2]}\n",
       "row 0: id 18446744073709551615 is not an integer"},
      {"{\"id\": 1.5, \"vector\": [1, 2]}\n", "row 0: id 1.5 is not an integer"},
      {"{\"id\": \"7\", \"vector\": [1, 2]}\n", "row 0: id \"7\" is not an integer"},
      {"{\"vector\": []}\n", "row 0: \"vector\" must be a non-empty array"},
      {"{\"vector\": [1, \"2\"]}\n", "row 0: vector[1] is \"2\", not a number"},
      {"[1, 2]\n", "row 0: not a JSON object"},
      {"{\"vector\": [1], \"meta\": {}}\n", "row 0: unknown key \"meta\""},
      {"{\"vector\": [1], \"text\": 3}\n", "row 0: \"text\" must be a string"},
      {"{\"vector\": [1], \"metadata\": {\"a\": [1]}}\n", "row 0: metadata \"a\" is array"},
      {"{\"vector\": [1], \"metadata\": \"a\"}\n", "row 0: \"metadata\" must be an object"},
  };
  const std::string path = TempPath("bad.jsonl");
  for (const Case& c : cases) {
    SCOPED_TRACE(c.lines);
    WriteBytes(path, c.lines);
    ExpectError(path, absl::StatusCode::kInvalidArgument, c.message);
  }
}

TEST(VectorSourceTest, LargeFbinInBatches) {
  constexpr int64_t kRows = 200000;
  constexpr int kDim = 16;
  std::vector<float> values(kRows * kDim);
  for (int64_t r = 0; r < kRows; ++r) {
    for (int j = 0; j < kDim; ++j) values[r * kDim + j] = static_cast<float>(r) + 0.25f * j;
  }
  const std::string path = TempPath("large.fbin");
  WriteBytes(path, BinBytes<float>(kRows, kDim, values));
  values.clear();

  auto source = VectorSource::Open(path);
  ASSERT_TRUE(source.ok()) << source.status();
  SourceBatch batch;
  int64_t rows = 0;
  int64_t wrong = 0;
  for (;;) {
    ASSERT_TRUE((*source)->Next(4096, &batch).ok());
    if (batch.vectors.rows == 0) break;
    ASSERT_EQ(batch.first_row, rows);
    for (int64_t i = 0; i < batch.vectors.rows; ++i) {
      for (int j = 0; j < kDim; ++j)
        wrong += batch.vectors.row(i)[j] != static_cast<float>(rows + i) + 0.25f * j;
    }
    rows += batch.vectors.rows;
  }
  EXPECT_EQ(rows, kRows);
  EXPECT_EQ(wrong, 0);
}

#ifdef SHARDVEC_HAVE_HDF5
TEST(VectorSourceTest, Hdf5NeighborsReadAsIntegers) {
  const std::string path = TempPath("gt.hdf5");
  WriteAnnBenchmarksFile(path);
  absl::StatusOr<IntMatrix> gt = ReadHdf5Ints(path, "neighbors");
  ASSERT_TRUE(gt.ok()) << gt.status();
  EXPECT_EQ(gt->rows, 7);
  EXPECT_EQ(gt->dim, 3);
  EXPECT_EQ(gt->data, std::vector<int32_t>(21, 1));
  absl::Status s = ReadHdf5Ints(path, "train").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("does not hold integers"));
  EXPECT_THAT(std::string(ReadHdf5Ints(path, "gt").status().message()),
              ::testing::HasSubstr("the file has: neighbors, test, train"));
}
#endif

}  // namespace
}  // namespace shardvec
