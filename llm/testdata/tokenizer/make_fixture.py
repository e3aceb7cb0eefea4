#!/usr/bin/env python3
"""Makes the fixtures of //llm:tokenizer_test with the Hugging Face `tokenizers` library.

It trains three small byte-level BPE tokenizers on a varied corpus written here (plus
glosses from Debian's WordNet, /usr/share/wordnet/data.noun) and records what
`tokenizers` does with a different test corpus, so the C++ tokenizer can be checked
against it line by line:

  llama3_style.json  Llama 3 shape: Split(Llama 3 regex) + ByteLevel(use_regex=False),
                     ignore_merges, special tokens added after the vocab, a Sequence
                     post-processor whose TemplateProcessing prepends <|begin_of_text|>,
                     merges written as pairs.
  gpt2_style.json    GPT-2 shape: ByteLevel(use_regex=True), <|endoftext|> inside the
                     model vocab, a ByteLevel post-processor, merges written as "a b".
  tiny_unk.json      ASCII-only vocab with an unk token (fuse_unk), so unseen bytes
                     take the unk paths.
  expected.json      cases: a tokenizer file, patches applied to its JSON before loading
                     ([JSON pointer, value] pairs, applied the same way by the test), and
                     for each text the ids with and without special tokens and the
                     decodes with skip_special_tokens False/True.

Run from the repository root (needs tokenizers; checked with 0.20.3):
  python3 llm/testdata/tokenizer/make_fixture.py
"""

import json
import os
import random

import tokenizers
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers,
                        processors, trainers)

OUT_DIR = os.path.dirname(os.path.abspath(__file__))
WORDNET = "/usr/share/wordnet/data.noun"

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# ---------------------------------------------------------------------------------------
# Training corpus.

TRAIN_PROSE = [
    "The lighthouse keeper wrote in his log every evening, even when nothing happened.",
    "She didn't expect the parcel to arrive before Thursday, but it was there at dawn.",
    "We'll need three volunteers, two ladders, and a great deal of patience.",
    "They're saying the bridge won't reopen until the inspectors have finished their work.",
    "I'm not sure whether the recipe calls for baking soda or baking powder; I've used both.",
    "HE'S GONE TO THE MARKET AND HE'LL BE BACK BY NOON, OR SO HE SAID.",
    "You'd think a city this old would have kept better maps of its own tunnels.",
    "The committee met on the 14th of March, 2023, and adjourned at 4:45 p.m.",
    "Prices rose by 3.5% in the first quarter, then fell by 1.25% in the second.",
    "A quick brown fox jumps over the lazy dog while the cat watches from the fence.",
    "Rivers carve valleys slowly; glaciers do it faster and leave boulders behind.",
    "Her grandmother's garden had tomatoes, beans, squash, and an unruly fig tree.",
    "It's the sort of problem that looks easy until you've spent a weekend on it.",
    "The train departs from platform 9 at 07:30 and arrives at 11:05 local time.",
    "Most of the sailors hadn't seen snow before they reached the northern harbour.",
    "Weather permitting, the concert will take place in the park on Saturday night.",
    "The library's reading room is quiet except for the hum of the old radiators.",
    "Could you send me the draft by Friday? I'd like to read it over the weekend.",
    "The experiment failed twice before the third attempt produced a clean signal.",
    "Mountains to the west, the sea to the east, and a long flat plain in between.",
]

TRAIN_CODE = [
    "int main(int argc, char** argv) {\n  std::vector<int> v = {1, 2, 3};\n  return 0;\n}\n",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "for (size_t i = 0; i < n; ++i) {\r\n\tsum += x[i] * y[i];\r\n}\r\n",
    "if (status != OK) { return absl::InvalidArgumentError(\"bad input\"); }",
    "SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY id DESC;",
    "{\"key\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
    "https://example.com/path/to/page?query=1&other=two#section-3",
    "git commit -m 'fix: handle empty input' && git push origin main",
    "const x = arr.map((v) => v * 2).filter((v) => v > 10);",
    "    indented with four spaces\n\tindented with a tab\n        eight spaces\n",
    "<div class=\"note\"><p>Hello &amp; welcome</p></div>",
    "| col a | col b |\n|-------|-------|\n| 1     | 2     |\n",
    "x = 0xDEADBEEF; y = 1e-9; z = 6.022e23; w = -273.15;",
]

TRAIN_WORLD = [
    "今天天气很好，我们去公园散步吧。",
    "北京是中国的首都，有很多历史悠久的建筑。",
    "私は毎朝コーヒーを飲みます。東京の冬は寒いです。",
    "ひらがなとカタカナと漢字を使います。",
    "한국어는 한글로 씁니다. 오늘은 날씨가 맑습니다.",
    "Привет, как дела? Сегодня хорошая погода для прогулки.",
    "Москва — столица России, а Киев — столица Украины.",
    "مرحبا بكم في المكتبة. الكتب مرتبة حسب الموضوع.",
    "اللغة العربية تكتب من اليمين إلى اليسار.",
    "नमस्ते, आप कैसे हैं? आज मौसम बहुत अच्छा है।",
    "हिन्दी देवनागरी लिपि में लिखी जाती है।",
    "Καλημέρα! Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "שלום, מה שלומך? היום יום יפה.",
    "สวัสดีครับ วันนี้อากาศดีมาก",
    "Grüße aus München! Die Straße ist schön, aber die Brücke ist gesperrt.",
    "Ça va très bien, merci. L'été dernier, nous sommes allés à Genève.",
    "¿Dónde está la estación? ¡Está muy lejos de aquí!",
    "Zażółć gęślą jaźń. Český jazyk má háčky a čárky.",
    "Tiếng Việt có nhiều dấu thanh điệu khác nhau.",
    "Türkçe'de ı, ğ, ş ve ç harfleri vardır.",
]

TRAIN_SYMBOLS = [
    "Emoji: 😀 😃 😄 👍 👍🏻 👍🏿 ❤️ 🎉 🚀 🌍",
    "Family: 👨‍👩‍👧‍👦 and 👩‍💻 and 🧑🏽‍🍳 and 🏳️‍🌈 flags 🇫🇷🇩🇪🇯🇵",
    "Combining: e\u0301 a\u0300 o\u0308 n\u0303 c\u0327 and decomposed A\u030a",
    "Spaces:\u00a0no-break,\u2009thin,\u3000ideographic,\u202fnarrow,\u2003em.",
    "Tabs\tand\t\ttabs, CRLF\r\nlines\r\n\r\nand blank lines\n\n\nhere.",
    "Math: ∑ ∫ √ ∞ ≤ ≥ ≠ ± × ÷ π θ λ → ← ⇒ ∀ ∃ ∈ ∉",
    "Currency: $100, €85, £70, ¥1000, ₹500, ₩12000, ₿0.01",
    "Quotes: “double” ‘single’ «guillemets» „low“ — em dash – en dash … ellipsis",
    "Numbers: 0 1 22 333 4444 55555 666666 ١٢٣ ४५६ ½ ¾ ² ³ Ⅳ ①",
    "Special tokens in text: <|endoftext|> <|begin_of_text|> <|eot_id|> <|end_of_text|>",
    "   leading spaces and trailing spaces   ",
    "UPPER lower MiXeD cAsE Don't DON'T don'T I'LL we'Ve THEY'RE she'D it'S",
]


def wordnet_glosses(step, offset, limit):
  """Every step-th gloss of data.noun starting at offset (license header skipped)."""
  out = []
  with open(WORDNET, encoding="utf-8") as f:
    lines = [l for l in f if not l.startswith("  ")]
  for line in lines[offset::step]:
    if "|" in line:
      out.append(line.split("|", 1)[1].strip())
    if len(out) >= limit:
      break
  return out


def training_corpus():
  rng = random.Random(7)
  texts = []
  for _ in range(4):
    texts += TRAIN_PROSE + TRAIN_CODE + TRAIN_WORLD + TRAIN_SYMBOLS
  texts += wordnet_glosses(step=20, offset=0, limit=4000)
  # Numbers of many lengths, so digit merges exist.
  texts += [" ".join(str(rng.randint(0, 10**rng.randint(1, 9))) for _ in range(12))
            for _ in range(100)]
  rng.shuffle(texts)
  return texts


# ---------------------------------------------------------------------------------------
# Test corpus: different text, with the edge cases.

TEST_HANDWRITTEN = [
    "",
    " ",
    "  ",
    "     ",
    "\t",
    "\n",
    "\r\n",
    "\n\n\n",
    " \n ",
    "\t \t\n\r\n \t",
    "a",
    "A",
    "'s",
    "'S",
    "'\u017f",  # long s folds to s under case-insensitive matching
    "'\uff33",  # fullwidth S does not
    "'\u017ft I'\u017f",
    "it's IT'S It'S we'Ll WE'LL you'RE they'Ve I'M he'D SHE'D",
    "y'all'd've, 'tis, rock 'n' roll, ''quoted'', '''s",
    "don't\ndon't\r\ndon't",
    "Hello world",
    " Hello world",
    "Hello  world   again    and     again",
    "trailing spaces   ",
    "   leading spaces",
    "The weary cartographer redrew the coastline after every storm.",
    "Nobody remembered who had planted the orchard, but everyone ate its apples.",
    "Isn't it odd that the clock tower chimes thirteen times at midnight?",
    "WE'RE LATE! THE FERRY LEAVES AT 6:15 AND IT WON'T WAIT.",
    "He said: \"I've been here since 1998, and I'll stay until 2048.\"",
    "1",
    "12",
    "123",
    "1234",
    "12345678901234567890",
    "3.14159265358979 2.71828 -42 +7 1e10 6.02e-23",
    "1,000,000 and 1.000.000 and 1 000 000",
    "0x7fffffff 0b1010 0o777",
    "Arabic-Indic ١٢٣٤٥ Devanagari ४२ Thai ๑๒๓ fullwidth １２３",
    "Ⅻ ½ ¼ ² ³ ① ⑩ 𝟘𝟙",
    "a\u00a0b \u00a0\u00a0x",
    "x\u2009y\u200az",
    "\u3000全角スペース\u3000",
    "a\u202fb\u205fc",
    "a\u180eb",
    "x \u180e\u180e. y \u180e\u180e! end\u180e\u180e",
    "(\u180e) \u180e-\u180e a\u180e b",
    "a\u0085b\u0085",
    "a\u2028b\u2029c",
    "zero\u200bwidth\u200cjoin\u200dners",
    "\ufeffbyte order mark",
    "soft\u00adhyphen",
    "line1\r\nline2\r\nline3",
    "\r\r\n\n",
    "x\ry\rz",
    "tab\tseparated\tvalues\t1\t2",
    "\v\f vertical tab and form feed",
    "a\x00b",
    "\x01\x02\x1f\x7f",
    "👍",
    "👍🏽👍🏻👍🏿",
    "👨‍👩‍👧‍👦",
    "🧑🏿‍🚀 🧑🏻‍🔬 👩🏽‍❤️‍💋‍👨🏾",
    "🏳️‍🌈 🏴‍☠️",
    "🇯🇵🇺🇸🇧🇷🇮🇳",
    "❤️ ❤ ♥️",
    "😀😃😄😁😆😅🤣😂",
    "keycaps 1️⃣ #️⃣ *️⃣",
    "e\u0301 \u00e9",
    "n\u0303o\u0308",
    "Z\u0337\u0322\u034ea\u0338l\u0336g\u0335o\u0334 text",
    "\u0301 starts with a combining mark",
    "ก่ ก้ ก๊",
    "我们明天早上八点在图书馆门口见面。",
    "人工知能の研究は急速に進んでいる。",
    "서울에서 부산까지 기차로 세 시간 걸립니다.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Українська мова має літери ї, є, ґ.",
    "في الصباح الباكر، يذهب الصيادون إلى البحر.",
    "بِسْمِ اللَّهِ",
    "आज रात को बारिश होने की संभावना है।",
    "Τα παιδιά έπαιζαν στην παραλία όλο το απόγευμα.",
    "ΑΥΤΌ ΕΊΝΑΙ ΚΕΦΑΛΑΊΑ",
    "עברית נכתבת מימין לשמאל.",
    "ትግርኛ እና አማርኛ",
    "ქართული ენა",
    "Հայերեն լեզու",
    "தமிழ் மொழி",
    "mixed: English, Русский, 中文, العربية, हिन्दी, Ελληνικά in one line",
    "\ue000\uf8ff",
    "\U000f0000\U000ffffd",
    "\U00100000\U0010fffd\U0010ffff",
    "\uffff\ufffe\ufffd",
    "𓀀𓀁𓂀 hieroglyphs",
    "ꙮ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕕𝕠𝕦𝕓𝕝𝕖",
    "🜁🜂🜃🜄",
    "\u2603\u2604\u2605",
    "<|begin_of_text|>",
    "<|begin_of_text|>Hello<|eot_id|>",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|>",
    "x<|end_of_text|>y",
    " <|eot_id|> ",
    "<|eot_id|><|eot_id|>",
    "<|eot_id",
    "<|EOT_ID|>",
    "<<|eot_id|>>",
    "<|end",
    "<|end_of",
    "<tool>call</tool>",
    "<|reserved_special_token_0|>x<|reserved_special_token_0|>",
    "<|reserved_special_token_0|>y",
    "Hello<|endoftext|>world",
    "Hello <|endoftext|> world",
    "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
    "def add(a, b):\n    return a + b\n",
    "    \n    \n",
    "if (x < 10 && y >= 20) { z = x ^ y; }",
    "std::unordered_map<std::string, int> counts;",
    "{\"id\": 17, \"tags\": [\"a\", \"b\"], \"ok\": false}",
    "https://docs.example.org/v2/api?lang=en&page=3",
    "user.name+tag@example.co.uk",
    "#!/bin/bash\nset -euo pipefail\necho \"$HOME\"",
    "SELECT COUNT(*) FROM orders;",
    "| a | b |\n|---|---|",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!!!!!!!!!!",
    "............",
    "-----",
    "=====\n=====",
    "?!?!?!",
    "...\n\n...",
    " !",
    " . , ; :",
    "'",
    "''",
    "\"",
    "(parenthesized)",
    "[bracketed]",
    "{braced}",
    "C'est l'été à l'île d'Oléron.",
    "Straße, Größe, Maß",
    "İstanbul ıi IĞDIR",
    "ǅ ǈ ǋ titlecase",
    "ﬁ ﬂ ligatures",
    "ＡＢＣ fullwidth ｱｲｳ halfwidth",
]


def random_lines(count, seed):
  """Lines made of random pieces from many classes of characters."""
  rng = random.Random(seed)
  pools = [
      list("abcdefghijklmnopqrstuvwxyz"), list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
      list("0123456789"), list(" \t\n\r"), list("'\".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`"),
      list("\u00a0\u2009\u3000\u202f\u0085\u2028\u180e\u200b"),
      list("你好世界中文字"), list("привет мир"), list("مرحبا"), list("नमस्ते"), list("αβγδε"),
      ["👍", "🏽", "\u200d", "👩", "🚀", "🇯", "🇵", "\ufe0f"],
      ["\u0301", "\u0308", "\u0327"], ["\ue000", "\U0010fffd", "𓀀"],
      ["'s", "'T", "'re", "'LL", "'d"], ["<|eot_id|>", "<|endoftext|>", "<|begin_of_text|>", "<|end"],
  ]
  out = []
  for _ in range(count):
    parts = []
    for _ in range(rng.randint(1, 12)):
      pool = rng.choice(pools)
      parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
    out.append("".join(parts))
  return out


def test_corpus():
  texts = list(TEST_HANDWRITTEN)
  texts += wordnet_glosses(step=20, offset=10, limit=20)
  texts += random_lines(40, seed=11)
  # One long line mixing everything (a few KB).
  texts.append(" ".join(TEST_HANDWRITTEN[20:60]) * 3)
  return texts


# ---------------------------------------------------------------------------------------
# Tokenizers.


def train_llama3_style(corpus):
  tok = Tokenizer(models.BPE(ignore_merges=True))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=3500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(corpus, trainer)
  # As in Llama 3, the special tokens come after the model vocab.
  specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
              "<|reserved_special_token_0|>x", "<|start_header_id|>", "<|end_header_id|>",
              "<|eot_id|>"]
  tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
  # Non-special added tokens (normalized=True: matched in the second pass, after the special ones).
  tok.add_tokens([AddedToken("<tool>", special=False, normalized=True),
                  AddedToken("<|end", special=False, normalized=True)])
  bos = tok.token_to_id("<|begin_of_text|>")
  tok.post_processor = processors.Sequence([
      processors.ByteLevel(trim_offsets=False),
      processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                    pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                    special_tokens=[("<|begin_of_text|>", bos)]),
  ])
  j = json.loads(tok.to_str())
  j["model"]["merges"] = [list(m) if isinstance(m, list) else m.split(" ") for m in j["model"]["merges"]]
  return j


def train_gpt2_style(corpus):
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(vocab_size=3000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                special_tokens=["<|endoftext|>"], show_progress=False)
  tok.train_from_iterator(corpus, trainer)
  j = json.loads(tok.to_str())
  j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
  return j


def train_tiny_unk():
  tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  # No initial alphabet: only the bytes of this ASCII text get tokens.
  trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"], show_progress=False)
  tok.train_from_iterator(TRAIN_PROSE * 3, trainer)
  return json.loads(tok.to_str())


def apply_patches(j, patches):
  """Sets each [JSON pointer, value]; the C++ test does the same with nlohmann::json_pointer."""
  j = json.loads(json.dumps(j))
  for pointer, value in patches:
    keys = pointer.lstrip("/").split("/")
    node = j
    for k in keys[:-1]:
      node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
      node[int(last)] = value
    else:
      node[last] = value
  return j


def expectations(j, texts):
  tok = Tokenizer.from_str(json.dumps(j))
  rows = []
  for t in texts:
    ids = tok.encode(t, add_special_tokens=True).ids
    plain = tok.encode(t, add_special_tokens=False).ids
    rows.append({
        "text": t,
        "ids": ids,
        "ids_plain": plain,
        "decoded": tok.decode(ids, skip_special_tokens=False),
        "decoded_skip": tok.decode(ids, skip_special_tokens=True),
    })
  return rows


def write_json(name, obj, compact):
  path = os.path.join(OUT_DIR, name)
  with open(path, "w", encoding="utf-8") as f:
    if compact:
      json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
    else:
      json.dump(obj, f, ensure_ascii=False, indent=1)
    f.write("\n")
  print(f"wrote {path}: {os.path.getsize(path)} bytes")


def main():
  corpus = training_corpus()
  llama3 = train_llama3_style(corpus)
  gpt2 = train_gpt2_style(corpus)
  tiny = train_tiny_unk()
  write_json("llama3_style.json", llama3, compact=True)
  write_json("gpt2_style.json", gpt2, compact=True)
  write_json("tiny_unk.json", tiny, compact=True)

  texts = test_corpus()
  few = texts[:40] + texts[-45:]
  ascii_heavy = [t for t in texts if t.isascii()][:30] + [t for t in texts if not t.isascii()][:30]
  template_only = llama3["post_processor"]["processors"][1]
  bos_id = template_only["special_tokens"]["<|begin_of_text|>"]["ids"][0]
  # Vocab entries no merge leads to: only ignore_merges emits them whole. tokenizers
  # renumbers added tokens from the vocab's size on load, so they move up with it.
  n = len(llama3["model"]["vocab"])
  unreachable = [["/model/vocab/\u0120QQQ", n], ["/model/vocab/xyzzy", n + 1]]
  unreachable += [[f"/added_tokens/{k}/id", t["id"] + 2] for k, t in enumerate(llama3["added_tokens"])]
  unreachable += [["/post_processor/processors/1/special_tokens/<|begin_of_text|>/ids", [bos_id + 2]]]
  unreachable_texts = few + ["QQQ xyzzy", "the QQQ and xyzzy xyzzyQQQ", " QQQ QQQQ", "xyzzy"]
  cases = [
      ("llama3_style.json", [], texts),
      ("llama3_style.json", [["/post_processor", template_only]], few),
      ("llama3_style.json", unreachable, unreachable_texts),
      ("llama3_style.json", unreachable + [["/model/ignore_merges", False]], unreachable_texts),
      ("gpt2_style.json", [], texts),
      ("gpt2_style.json", [["/pre_tokenizer/add_prefix_space", True]], few),
      ("tiny_unk.json", [], ascii_heavy),
      ("tiny_unk.json", [["/model/fuse_unk", False]], ascii_heavy),
      ("tiny_unk.json", [["/model/unk_token", None]], ascii_heavy),
  ]
  base = {"llama3_style.json": llama3, "gpt2_style.json": gpt2, "tiny_unk.json": tiny}
  out = {"tokenizers_version": tokenizers.__version__, "cases": []}
  for file, patches, case_texts in cases:
    out["cases"].append({
        "file": file,
        "patches": patches,
        "lines": expectations(apply_patches(base[file], patches), case_texts),
    })
  write_json("expected.json", out, compact=True)


if __name__ == "__main__":
  main()
