#include "llm/safetensors.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "llm/test_fixtures.h"

namespace shardvec::llm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::ModelDir;
using testing::TempDir;

std::vector<uint8_t> Bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<uint8_t> Halves(const std::vector<uint16_t>& v) {
  std::vector<uint8_t> b(v.size() * 2);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::string NewDir(const std::string& name) {
  const std::string dir = absl::StrCat(TempDir(), "/", name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// A raw file: the 8-byte length, the header text and `data` bytes.
void WriteRaw(const std::string& path, const std::string& header, size_t data_bytes,
              int64_t length_override = -1) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t n = length_override >= 0 ? length_override : header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>(n >> (8 * i)));
  out << header << std::string(data_bytes, '\0');
}

TEST(SafetensorsTest, RoundTripAndConversions) {
  const std::string dir = NewDir("roundtrip");
  const std::vector<float> m = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, -7.0f};
  // bf16: 1.0, -2.5, 3.0e38-ish, nan
  const std::vector<uint16_t> bf = {0x3f80, 0xc020, 0x7f7f, 0x7fc0};
  // f16: 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal), 48 * 2^-24 (subnormal), -0, inf
  const std::vector<uint16_t> hf = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x0030, 0x8000, 0x7c00};
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", {{"m", DType::kF32, {2, 3}, Bytes(m)},
                                                            {"bf", DType::kBF16, {4}, Halves(bf)},
                                                            {"hf", DType::kF16, {7}, Halves(hf)},
                                                            {"ids", DType::kI32, {1}, {7, 0, 0, 0}},
                                                            {"empty", DType::kF32, {0, 4}, {}}})
                  .ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_THAT((*ckpt)->Names(), ElementsAre("bf", "empty", "hf", "ids", "m"));
  EXPECT_EQ((*ckpt)->Find("nope"), nullptr);

  const TensorView* t = (*ckpt)->Find("m");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kF32);
  EXPECT_THAT(t->shape, ElementsAre(2, 3));
  EXPECT_EQ(t->numel(), 6);
  EXPECT_EQ(ToFloat32(*t), m);
  EXPECT_THAT(SliceToFloat32(*t, 0, 2, 1, 3), ElementsAre(-2.0f, 3.25f, 1e-3f, -7.0f));
  EXPECT_THAT(SliceToFloat32(*t, 1, 2, 0, 3), ElementsAre(0.0f, 1e-3f, -7.0f));
  EXPECT_TRUE(SliceToFloat32(*t, 0, 3, 0, 1).empty());  // rows out of range

  const std::vector<float> b = ToFloat32(*(*ckpt)->Find("bf"));
  ASSERT_EQ(b.size(), 4u);
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], -2.5f);
  EXPECT_EQ(b[2], 0x1.fep127f);
  EXPECT_TRUE(std::isnan(b[3]));

  const std::vector<float> h = ToFloat32(*(*ckpt)->Find("hf"));
  EXPECT_THAT(h, ElementsAre(1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24),
                             3 * std::ldexp(1.0f, -20), -0.0f, INFINITY));
  EXPECT_TRUE(std::signbit(h[5]));

  EXPECT_TRUE(ToFloat32(*(*ckpt)->Find("ids")).empty());  // not a float dtype
  EXPECT_EQ((*ckpt)->Find("ids")->nbytes, 4u);
  EXPECT_TRUE(ToFloat32(*(*ckpt)->Find("empty")).empty());
}

TEST(SafetensorsTest, ReadsTransformersOutputAndMetadata) {
  auto f = SafetensorsFile::Open(ModelDir("tiny_llama") + "/model.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  const TensorView* e = (*f)->Find("model.embed_tokens.weight");
  ASSERT_NE(e, nullptr);
  EXPECT_THAT(e->shape, ElementsAre(256, 64));
  EXPECT_EQ(e->nbytes, 256u * 64 * 4);
  EXPECT_EQ((*f)->tensors().size(), 2u + 2 * 9 + 1);  // embed, lm_head, 9 per layer, norm
}

TEST(SafetensorsTest, ShardedCheckpointWithIndex) {
  const std::string dir = NewDir("sharded");
  ASSERT_TRUE(WriteSafetensors(dir + "/a.safetensors", {{"x", DType::kF32, {1}, Bytes({1})}}).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/b.safetensors", {{"y", DType::kF32, {1}, Bytes({2})}}).ok());
  // Not in the index: must be ignored.
  ASSERT_TRUE(WriteSafetensors(dir + "/c.safetensors", {{"z", DType::kF32, {1}, Bytes({3})}}).ok());
  std::ofstream(dir + "/model.safetensors.index.json")
      << R"({"metadata": {}, "weight_map": {"x": "a.safetensors", "y": "b.safetensors"}})";
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_THAT((*ckpt)->Names(), ElementsAre("x", "y"));
  EXPECT_EQ(ToFloat32(*(*ckpt)->Find("y")), std::vector<float>{2});

  // Without an index every *.safetensors file is read.
  std::filesystem::remove(dir + "/model.safetensors.index.json");
  ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_THAT((*ckpt)->Names(), ElementsAre("x", "y", "z"));

  // The same tensor in two files is an error.
  ASSERT_TRUE(WriteSafetensors(dir + "/d.safetensors", {{"x", DType::kF32, {1}, Bytes({4})}}).ok());
  ckpt = Checkpoint::Open(dir);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("\"x\""));

  EXPECT_EQ(Checkpoint::Open(NewDir("empty")).status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, CorruptFilesAreInvalidArgumentNamingTheProblem) {
  const std::string dir = NewDir("corrupt");
  const std::string ok_tensor = R"("t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";
  struct Case {
    std::string name;
    std::string header;
    size_t data_bytes;
    int64_t length = -1;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"truncated_data", "{" + ok_tensor + "}", 4, -1, "\"t\""},
      {"trailing_data", "{" + ok_tensor + "}", 12, -1, "trailing"},
      {"header_too_long", "{" + ok_tensor + "}", 8, 1000, "header length"},
      {"header_zero", "{}", 0, 0, "header length"},
      {"not_json", "{\"t\": ", 0, -1, "JSON"},
      {"bad_dtype", R"({"t": {"dtype": "F8", "shape": [2], "data_offsets": [0, 2]}})", 2, -1,
       "dtype \"F8\""},
      {"bad_count", R"({"t": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 8]}})", 8, -1,
       "\"t\""},
      {"out_of_bounds", R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", 8, -1,
       "data_offsets"},
      {"reversed", R"({"t": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})", 8, -1,
       "data_offsets"},
      {"negative_offset", R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})", 8,
       -1, "data_offsets"},
      {"overlap",
       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       12, -1, "overlap"},
      {"gap",
       R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
       12, -1, "gap"},
      {"huge_shape",
       R"({"t": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})", 0,
       -1, "shape"},
      {"negative_dim", R"({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", 0, -1,
       "shape"},
      {"no_shape", R"({"t": {"dtype": "F32", "data_offsets": [0, 0]}})", 0, -1, "shape"},
      {"bad_metadata", R"({"__metadata__": {"a": 1}})", 0, -1, "__metadata__"},
  };
  for (const Case& c : cases) {
    const std::string path = absl::StrCat(dir, "/", c.name, ".safetensors");
    WriteRaw(path, c.header, c.data_bytes, c.length);
    auto f = SafetensorsFile::Open(path);
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(f.status().message()), HasSubstr(c.message)) << c.name;
    EXPECT_THAT(std::string(f.status().message()), HasSubstr(c.name)) << "names the file";
  }
  // Shorter than the length field itself.
  std::ofstream(dir + "/tiny.safetensors") << "abc";
  auto f = SafetensorsFile::Open(dir + "/tiny.safetensors");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SafetensorsFile::Open(dir + "/absent.safetensors").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, WriterRejectsInconsistentTensors) {
  const std::string path = NewDir("writer") + "/w.safetensors";
  absl::Status s = WriteSafetensors(path, {{"t", DType::kF32, {3}, Bytes({1, 2})}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("\"t\""));
  s = WriteSafetensors(path,
                       {{"t", DType::kF32, {1}, Bytes({1})}, {"t", DType::kF32, {1}, Bytes({1})}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = WriteSafetensors(path, {{"t", DType::kF32, {-1}, {}}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shardvec::llm
