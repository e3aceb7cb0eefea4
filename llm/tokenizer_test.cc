#include "llm/tokenizer.h"

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardvec::llm {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;

// Fixtures made by testdata/tokenizer/make_fixture.py with the `tokenizers` library.
std::string DataPath(const std::string& name) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir != nullptr ? srcdir : ".", "/shardvec/llm/testdata/tokenizer/", name);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

Json ReadJson(const std::string& name) {
  Json j = Json::parse(ReadFile(DataPath(name)), nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << name;
  return j;
}

// The case's [JSON pointer, value] patches, applied as make_fixture.py applies them.
Json Patched(Json j, const Json& patches) {
  for (const Json& p : patches) j[Json::json_pointer(p[0].get<std::string>())] = p[1];
  return j;
}

std::unique_ptr<Tokenizer> MustLoad(const std::string& name) {
  auto tok = Tokenizer::Load(DataPath(name));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

std::string Escaped(const std::string& s) {
  return Json(s).dump(-1, ' ', true, Json::error_handler_t::replace);
}

std::string Ids(const std::vector<int32_t>& ids) { return Json(ids).dump(); }

TEST(TokenizerTest, MatchesTokenizersOnCorpus) {
  const Json expected = ReadJson("expected.json");
  ASSERT_TRUE(expected.contains("cases"));
  int lines = 0;
  int failures = 0;
  for (const Json& c : expected["cases"]) {
    const std::string file = c["file"].get<std::string>();
    const std::string label = absl::StrCat(file, " patched ", c["patches"].dump());
    auto tok = Tokenizer::FromJson(Patched(ReadJson(file), c["patches"]).dump());
    ASSERT_TRUE(tok.ok()) << label << ": " << tok.status();
    for (const Json& line : c["lines"]) {
      ++lines;
      const std::string text = line["text"].get<std::string>();
      const auto ids = line["ids"].get<std::vector<int32_t>>();
      const auto ids_plain = line["ids_plain"].get<std::vector<int32_t>>();
      const std::vector<int32_t> got = (*tok)->Encode(text, /*add_bos=*/true);
      const std::vector<int32_t> got_plain = (*tok)->Encode(text, /*add_bos=*/false);
      const std::string decoded = (*tok)->Decode(ids, /*skip_special=*/false);
      const std::string decoded_skip = (*tok)->Decode(ids, /*skip_special=*/true);
      std::string concatenated;
      for (int32_t id : ids) concatenated += (*tok)->TokenBytes(id);
      bool ok = got == ids && got_plain == ids_plain && decoded == line["decoded"].get<std::string>() &&
                decoded_skip == line["decoded_skip"].get<std::string>() && concatenated == decoded;
      if (!ok && ++failures <= 10) {
        ADD_FAILURE() << label << " text " << Escaped(text) << "\n  ids      " << Ids(got) << "\n  expected "
                      << Ids(ids) << "\n  plain    " << Ids(got_plain) << "\n  expected " << Ids(ids_plain)
                      << "\n  decoded " << Escaped(decoded) << " / " << Escaped(decoded_skip) << " / "
                      << Escaped(concatenated);
      }
    }
  }
  EXPECT_EQ(failures, 0) << "of " << lines << " lines";
  EXPECT_GT(lines, 500);
}

TEST(TokenizerTest, Llama3StyleIdsAndBos) {
  const Json j = ReadJson("llama3_style.json");
  auto tok = MustLoad("llama3_style.json");
  ASSERT_NE(tok, nullptr);
  int64_t max_id = -1;
  for (const auto& [token, id] : j["model"]["vocab"].items()) {
    max_id = std::max<int64_t>(max_id, id.get<int64_t>());
    ASSERT_EQ(tok->TokenId(token), id.get<int32_t>()) << token;
  }
  for (const Json& t : j["added_tokens"]) {
    max_id = std::max<int64_t>(max_id, t["id"].get<int64_t>());
    EXPECT_EQ(tok->TokenId(t["content"].get<std::string>()), t["id"].get<int32_t>());
    EXPECT_EQ(tok->TokenBytes(t["id"].get<int32_t>()), t["content"].get<std::string>());
  }
  EXPECT_EQ(tok->vocab_size(), max_id + 1);
  EXPECT_EQ(tok->TokenId("no such token"), -1);
  const int32_t bos = tok->TokenId("<|begin_of_text|>");
  EXPECT_GE(bos, 0);
  EXPECT_EQ(tok->bos_id(), bos);
  EXPECT_EQ(tok->Encode("", /*add_bos=*/true), std::vector<int32_t>{bos});
  EXPECT_TRUE(tok->Encode("", /*add_bos=*/false).empty());
  // "Ġ" is the byte-level spelling of a space.
  const int32_t space_the = tok->TokenId("\xC4\xA0the");
  ASSERT_GE(space_the, 0);
  EXPECT_EQ(tok->TokenBytes(space_the), " the");
  EXPECT_EQ(tok->TokenBytes(-1), "");
  EXPECT_EQ(tok->TokenBytes(tok->vocab_size()), "");
  // Unknown ids are skipped, as tokenizers does.
  EXPECT_EQ(tok->Decode({space_the, -5, tok->vocab_size(), space_the}, false), " the the");
  const int32_t eot = tok->TokenId("<|eot_id|>");
  EXPECT_EQ(tok->Decode({bos, space_the, eot}, /*skip_special=*/true), " the");
  EXPECT_EQ(tok->Decode({bos, space_the, eot}, /*skip_special=*/false), "<|begin_of_text|> the<|eot_id|>");
  // "<tool>" is an added token that is not special: skip_special keeps it.
  const int32_t tool = tok->TokenId("<tool>");
  EXPECT_EQ(tok->Encode("<tool>", false), std::vector<int32_t>{tool});
  EXPECT_EQ(tok->Decode({tool}, /*skip_special=*/true), "<tool>");
}

TEST(TokenizerTest, Gpt2StyleHasNoBos) {
  auto tok = MustLoad("gpt2_style.json");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_EQ(tok->vocab_size(), 3000);
  const int32_t eot = tok->TokenId("<|endoftext|>");
  EXPECT_GE(eot, 0);
  EXPECT_EQ(tok->Encode("hi", true), tok->Encode("hi", false));
  EXPECT_EQ(tok->Encode("<|endoftext|>", true), std::vector<int32_t>{eot});
  EXPECT_EQ(tok->Decode({eot}, /*skip_special=*/true), "");
}

// Any bytes, valid UTF-8 or not, encode and decode back to themselves: every byte has a
// token and invalid sequences never match the regex.
TEST(TokenizerTest, ArbitraryBytesRoundTrip) {
  for (const char* name : {"llama3_style.json", "gpt2_style.json"}) {
    auto tok = MustLoad(name);
    ASSERT_NE(tok, nullptr);
    std::mt19937 rng(5);
    for (int i = 0; i < 200; ++i) {
      std::string s(rng() % 40, '\0');
      for (char& c : s) c = static_cast<char>(rng() % 4 == 0 ? rng() % 256 : " a1'\xC3\xA9\n"[rng() % 8]);
      const std::vector<int32_t> ids = tok->Encode(s, false);
      // Added-token strings cannot appear among these bytes, so nothing is special.
      EXPECT_EQ(tok->Decode(ids, true), s) << name << " " << Escaped(s);
    }
    const std::string invalid = "\xFF\xFE abc \xC3 d\xE2\x82 \xF0\x9F\x98";
    EXPECT_EQ(tok->Decode(tok->Encode(invalid, true), true), invalid) << name;
  }
}

// Long runs make single pre-tokens of ~100 KB: exercises the regex on long input and the
// heap-ordered merging (no quadratic rescans).
TEST(TokenizerTest, LongInputs) {
  auto tok = MustLoad("llama3_style.json");
  ASSERT_NE(tok, nullptr);
  for (const std::string& s : {std::string(100000, ' '), std::string(100000, 'a'), std::string(100000, '7'),
                               std::string(50000, '\n') + std::string(50000, '\t')}) {
    std::vector<int32_t> ids = tok->Encode(s, false);
    EXPECT_LE(ids.size(), s.size());
    EXPECT_EQ(tok->Decode(ids, false), s);
  }
}

TEST(TokenizerTest, ConcurrentEncodeAgrees) {
  auto tok = MustLoad("gpt2_style.json");
  ASSERT_NE(tok, nullptr);
  const Json expected = ReadJson("expected.json");
  const Json* lines = nullptr;
  for (const Json& c : expected["cases"]) {
    if (c["file"] == "gpt2_style.json" && c["patches"].empty()) lines = &c["lines"];
  }
  ASSERT_NE(lines, nullptr);
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        for (const Json& line : *lines) {
          if (tok->Encode(line["text"].get<std::string>(), true) != line["ids"].get<std::vector<int32_t>>()) {
            ++mismatches[t];
          }
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_THAT(mismatches, ::testing::Each(0));
}

// A tiny valid tokenizer.json: the bytes "a", "b" and the merge "a b".
Json Minimal() {
  return Json::parse(R"({
    "added_tokens": [{"id": 3, "content": "<s>", "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                  {"Sequence": {"id": "A", "type_id": 0}}],
                       "special_tokens": {"<s>": {"id": "<s>", "ids": [3], "tokens": ["<s>"]}}},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}
  })");
}

TEST(TokenizerTest, MinimalJson) {
  auto tok = Tokenizer::FromJson(Minimal().dump());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 4);
  EXPECT_EQ((*tok)->bos_id(), 3);
  EXPECT_EQ((*tok)->Encode("ab", true), (std::vector<int32_t>{3, 2}));
  EXPECT_EQ((*tok)->Encode("ba", false), (std::vector<int32_t>{1, 0}));
  // Bytes without a token and no unk_token vanish, as in tokenizers.
  EXPECT_EQ((*tok)->Encode("abc", false), (std::vector<int32_t>{2}));
}

void ExpectInvalid(const Json& j, const std::string& names) {
  auto tok = Tokenizer::FromJson(j.dump());
  ASSERT_FALSE(tok.ok()) << names;
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << tok.status();
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr(names));
}

TEST(TokenizerTest, MissingFileIsNotFoundWithPath) {
  auto tok = Tokenizer::Load("/nonexistent/dir/tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("/nonexistent/dir/tokenizer.json"));
}

TEST(TokenizerTest, BadFileNamesPathAndField) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(dir != nullptr ? dir : "/tmp", "/wordpiece.json");
  Json j = Minimal();
  j["model"]["type"] = "WordPiece";
  std::ofstream(path) << j.dump();
  auto tok = Tokenizer::Load(path);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr(path));
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("model.type"));
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("WordPiece"));
}

TEST(TokenizerTest, NotJson) {
  auto tok = Tokenizer::FromJson("{\"model\": ");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  ExpectInvalid(Json::array(), "top level");
}

TEST(TokenizerTest, BadModel) {
  Json j = Minimal();
  j.erase("model");
  ExpectInvalid(j, "model");
  j = Minimal();
  j["model"] = "BPE";
  ExpectInvalid(j, "model");
  j = Minimal();
  j["model"]["type"] = "Unigram";
  ExpectInvalid(j, "model.type");
  j = Minimal();
  j["model"]["dropout"] = 0.1;
  ExpectInvalid(j, "model.dropout");
  j = Minimal();
  j["model"]["byte_fallback"] = true;
  ExpectInvalid(j, "model.byte_fallback");
  j = Minimal();
  j["model"]["continuing_subword_prefix"] = "##";
  ExpectInvalid(j, "model.continuing_subword_prefix");
  j = Minimal();
  j["model"]["vocab"]["c"] = "seven";
  ExpectInvalid(j, "model.vocab[\"c\"]");
  j = Minimal();
  j["model"]["vocab"]["c"] = 1;
  ExpectInvalid(j, "id 1 is already used");
  j = Minimal();
  j["model"]["vocab"]["c"] = -4;
  ExpectInvalid(j, "out of range");
  j = Minimal();
  j["model"]["unk_token"] = "<unk>";
  ExpectInvalid(j, "model.unk_token");
  j = Minimal();
  j["model"]["ignore_merges"] = "yes";
  ExpectInvalid(j, "model.ignore_merges");
}

TEST(TokenizerTest, MergesNamingUnknownTokens) {
  Json j = Minimal();
  j["model"]["merges"] = Json::array({"a b", "a zz"});
  ExpectInvalid(j, "model.merges[1]: \"zz\" is not in model.vocab");
  j["model"]["merges"] = Json::array({Json::array({"b", "a"})});
  ExpectInvalid(j, "model.merges[0]: \"ba\" (the merged token) is not in model.vocab");
  j["model"]["merges"] = Json::array({"ab"});
  ExpectInvalid(j, "model.merges[0]");
  j["model"]["merges"] = Json::array({Json::array({"a"})});
  ExpectInvalid(j, "model.merges[0]");
  j["model"]["merges"] = "a b";
  ExpectInvalid(j, "model.merges");
}

TEST(TokenizerTest, BadPreTokenizer) {
  Json j = Minimal();
  j["pre_tokenizer"] = nullptr;
  ExpectInvalid(j, "pre_tokenizer");
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  ExpectInvalid(j, "pre_tokenizer.type");
  Json split = {
      {"type", "Split"}, {"pattern", {{"Regex", "\\s+"}}}, {"behavior", "Removed"}, {"invert", false}};
  Json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}};
  ExpectInvalid(j, "pre_tokenizer.pretokenizers[0].behavior");
  split["behavior"] = "Isolated";
  split["pattern"] = {{"Regex", "(unclosed"}};
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}};
  ExpectInvalid(j, "pre_tokenizer.pretokenizers[0].pattern");
  split["pattern"] = {{"Glob", "*"}};
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}};
  ExpectInvalid(j, "pre_tokenizer.pretokenizers[0].pattern");
  split["pattern"] = {{"Regex", "\\s+"}};
  split["invert"] = true;
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}};
  ExpectInvalid(j, "pre_tokenizer.pretokenizers[0].invert");
  split["invert"] = false;
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {byte_level, split}}};
  ExpectInvalid(j, "pre_tokenizer.pretokenizers[0]");
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", Json::array({split})}};
  ExpectInvalid(j, "must end with a ByteLevel");
  // A literal String pattern works.
  split["pattern"] = {{"String", "b"}};
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}};
  auto tok = Tokenizer::FromJson(j.dump());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Encode("abab", false), (std::vector<int32_t>{0, 1, 0, 1}));
}

TEST(TokenizerTest, BadNormalizerDecoderPostProcessorAddedTokens) {
  Json j = Minimal();
  j["normalizer"] = {{"type", "NFC"}};
  ExpectInvalid(j, "normalizer");
  j = Minimal();
  j["decoder"] = {{"type", "WordPiece"}};
  ExpectInvalid(j, "decoder.type");
  j = Minimal();
  j["decoder"] = nullptr;
  ExpectInvalid(j, "decoder");
  j = Minimal();
  j["post_processor"] = {{"type", "RobertaProcessing"}};
  ExpectInvalid(j, "post_processor.type");
  j = Minimal();
  j["post_processor"]["single"][0]["SpecialToken"]["id"] = "<missing>";
  ExpectInvalid(j, "post_processor.special_tokens");
  j = Minimal();
  j["post_processor"]["single"][1] = 7;
  ExpectInvalid(j, "post_processor.single[1]");
  j = Minimal();
  j["post_processor"]["single"][1]["Sequence"] = "A";
  ExpectInvalid(j, "post_processor.single[1]");
  j = Minimal();
  j["added_tokens"][0]["lstrip"] = true;
  ExpectInvalid(j, "added_tokens[0].lstrip");
  j = Minimal();
  j["added_tokens"][0]["special"] = "yes";
  ExpectInvalid(j, "added_tokens[0].special");
  j = Minimal();
  j["added_tokens"][0].erase("content");
  ExpectInvalid(j, "added_tokens[0]");
}

}  // namespace
}  // namespace shardvec::llm
