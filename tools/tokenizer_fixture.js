#!/usr/bin/env node
// Golden tokenizer fixtures from Hugging Face's own `tokenizers` (its Rust code through the Node
// binding; npm package "tokenizers", pinned in tools/package.json). Runs offline.
//
//   cd tools && npm install && cd ..
//   node tools/tokenizer_fixture.js /path/to/gpt-neox-20b/tokenizer.json tests/fixtures/tokenizer
//
// Writes, one JSON object per line (deterministic: the random cases use a fixed seed):
//   corpus.jsonl            {"name", "text"} or {"name", "hex"}: raw bytes, not all valid UTF-8
//   expected.jsonl          {"name", "ids", "decoded"}: HF's encode (no added specials) and HF's decode
//                           of those ids: the text as HF normalizes it (NFC with Unicode 9.0 tables),
//                           which is what a round trip must give
//   variant_expected.jsonl  the same for a variant of the tokenizer that exercises options the
//                           GPT-NeoX file leaves off: add_prefix_space, and added tokens with lstrip,
//                           rstrip, single_word and a normalized non-ASCII content. The test makes the
//                           variant from the same file with the same edits (variant() below).
// A "hex" case is turned into text the way a JavaScript caller would get it, by TextDecoder, which
// replaces invalid UTF-8 with U+FFFD as mamba::Tokenizer::encode does.
"use strict";
const fs = require("fs");
const path = require("path");
const { Tokenizer } = require("tokenizers");

// ---- the corpus ----

const cases = [];
const add = (name, text) => cases.push({ name, text });
const addHex = (name, hex) => cases.push({ name, hex });
const nfd = (s) => s.normalize("NFD");

// English prose
add("prose-1", "The quick brown fox jumps over the lazy dog.");
add("prose-2", "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness...");
add("prose-3", "Mamba is a selective state space model: its parameters depend on the input, so it can choose what to remember.");
add("prose-4", "\"Hello,\" she said. 'Are you there?' — No answer; only the wind… (and the rain).");
add("prose-5", "Mr. O'Neil's well-known co-op re-opened on 3rd St. in the U.S.A. at 9:30 a.m.");
add("prose-multiline", "First line.\nSecond line.\n\nAfter a blank line.\n");
add("prose-unicode-punct", "“Curly quotes” and ‘single ones’, en–dash, em—dash, ellipsis…, bullet • and §7 ¶2.");
add("prose-long", "Language models assign probabilities to sequences of tokens. ".repeat(12));
// contractions
add("contractions", "it's don't you're we've I'm they'll he'd");
add("contractions-upper", "IT'S DON'T YOU'RE WE'VE I'M THEY'LL HE'D");
add("contractions-mixed", "It'S dOn't You'Re we'Ve i'M They'Ll he'D 's 't 're 've 'm 'll 'd");
add("contractions-space", "' s ' t 're'd'll''s'''");
add("possessive", "James's cat's toy, the students' books, the boss's desk");
add("apostrophes-unicode", "it’s don’t ʼs");
// source code
add("code-python", "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n");
add("code-c", "#include <stdio.h>\n\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n");
add("code-cpp", "template <typename T>\nstd::vector<T> v{1, 2, 3};\nauto it = std::find_if(v.begin(), v.end(), [](const T& x) { return x > 1; });");
add("code-js", "const f = async (x) => { await fetch(`/api/${x}?q=1&r=2`); return x ?? null; };");
add("code-rust", "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}");
add("code-go", "func (s *Server) Handle(w http.ResponseWriter, r *http.Request) {\n\tif err != nil {\n\t\treturn\n\t}\n}");
add("code-html", "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Test</title></head>\n<body><p class='x'>Hi &amp; bye</p></body></html>");
add("code-json", "{\"name\": \"mamba\", \"layers\": 24, \"d_model\": 768, \"tied\": true, \"eps\": 1e-5, \"list\": [1, 2.5, null]}");
add("code-sql", "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC LIMIT 10;");
add("code-shell", "for f in *.txt; do grep -c 'foo' \"$f\" | awk '{s+=$1} END {print s}'; done 2>/dev/null");
add("code-latex", "\\begin{equation} h_t = \\exp(\\Delta A) h_{t-1} + \\Delta B x_t, \\quad y_t = C h_t \\end{equation}");
add("code-regex", "^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@(?:[a-z0-9-]+\\.)+[a-z]{2,}$");
add("code-indent-spaces", "class A:\n    def f(self):\n        for i in range(10):\n            if i % 2:\n                print(i)\n");
add("code-indent-tabs", "if (x) {\n\tif (y) {\n\t\tif (z) {\n\t\t\treturn;\n\t\t}\n\t}\n}");
add("code-makefile", "all: main.o util.o\n\t$(CC) -o app $^ $(LDFLAGS)\n\n%.o: %.c\n\t$(CC) -c $< -o $@\n");
// numbers and dates
add("numbers", "0 1 12 123 1234 12345 123456 1234567 3.14159 -2.5e-10 1,000,000 0x1F 0b1010 007");
add("numbers-glued", "abc123def 4567ghi 12ab34 v1.2.3-rc4 2nd 3rd 21st");
add("dates", "2024-02-29 29/02/2024 Feb 29, 2024 12:34:56.789Z 1999年12月31日 T+00:00");
add("money", "$5.99 €12,50 £3 ¥1000 ₹250 100% 3/4 ½ ¼ ²³ ⅔");
add("numbers-unicode", "٠١٢٣٤٥٦٧٨٩ ०१२३४५६७८९ 〇一二三 Ⅻ ⅷ ①②③ 𝟙𝟚𝟛");
add("phone", "+1 (555) 123-4567, ext. 89");
// URLs, emails, paths
add("url-1", "https://huggingface.co/state-spaces/mamba-130m-hf/resolve/main/config.json?download=true#L10");
add("url-2", "Visit http://example.com/a_b-c.d/~user/index.php?x=1&y=%20z or ftp://ftp.example.org/pub/.");
add("email", "Contact: first.last+tag@sub.example.co.uk, <admin@localhost>");
add("path", "C:\\Program Files\\App\\bin\\app.exe and /usr/local/lib/libfoo.so.1.2");
// CJK
add("chinese", "状态空间模型是一种序列模型。它可以高效地处理长序列！");
add("japanese", "吾輩は猫である。名前はまだ無い。カタカナとひらがなと漢字。");
add("korean", "안녕하세요, 세계! 한국어 텍스트입니다.");
add("cjk-mixed", "Mamba模型 (2023) は Transformer より速い。한국어 mixed with English.");
add("cjk-fullwidth", "ＡＢＣ１２３！？　全角スペース");
// RTL
add("arabic", "مرحبا بالعالم! هذا نص عربي مع أرقام ١٢٣ و 456.");
add("hebrew", "שלום עולם! זה טקסט בעברית עם ניקוד: שָׁלוֹם.");
add("rtl-mixed", "The word سلام means peace; שלום too.");
// Indic with combining marks
add("hindi", "नमस्ते दुनिया। हिन्दी में संयुक्ताक्षर: क्षत्रिय, ज्ञान, श्री।");
add("tamil", "வணக்கம் உலகம்");
add("bengali", "আমি বাংলায় গান গাই");
add("thai", "สวัสดีครับ ภาษาไทยไม่มีช่องว่างระหว่างคำ");
// other scripts
add("russian", "Съешь же ещё этих мягких французских булок, да выпей чаю.");
add("greek", "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. ΑΒΓ αβγ ς");
add("vietnamese", "Tiếng Việt có dấu: Đà Nẵng, Hồ Chí Minh, Nguyễn.");
add("german", "Größe, Straße, Fußgängerübergänge, Äpfel und Öl.");
add("french", "À l'école, où naïve Noël a dîné — ça coûte cher.");
add("turkish", "İstanbul ıiIİ dotless ı and dotted İ");
add("armenian-georgian", "Բարեւ աշխարհ · გამარჯობა მსოფლიო");
// emoji
add("emoji-simple", "I love it 😀😃😄 👍 ❤️ ✨");
add("emoji-skin", "👋🏻 👋🏼 👋🏽 👋🏾 👋🏿 👍🏽");
add("emoji-zwj", "👨‍👩‍👧‍👦 👩‍💻 🏳️‍🌈 🧑🏽‍🚀 👨🏿‍❤️‍💋‍👨🏻");
add("emoji-flags", "🇺🇸🇬🇧🇯🇵🇩🇪 🏴󠁧󠁢󠁳󠁣󠁴󠁿");
add("emoji-keycap", "1️⃣ #️⃣ *️⃣ ©️ ®️ ™️");
add("emoji-dense", "😀😀😀😀😀😀😀😀🎉🎉🎉");
add("emoji-in-words", "good😀job, yes👍no, a🙂b");
// NFD input: NFC must recompose
add("nfd-latin", nfd("café résumé naïve Ångström Über façade"));
add("nfd-vietnamese", nfd("Nguyễn Thị Minh Khai, Đà Nẵng"));
add("nfd-korean", nfd("한국어 정규화"));
add("nfd-greek", nfd("ἄλφα ὠμέγα ῥῆμα"));
add("nfd-mixed", "e\u0301 a\u0300 o\u0308 n\u0303 c\u0327 " + nfd("élan"));
add("combining-stack", "Z\u0351\u036b\u0343\u036a\u0302\u036b a\u0300\u0301\u0302\u0303\u0304 x\u20d7");
add("combining-nocompose", "q\u0301 x\u0308 \u0301alone");
add("nfc-singletons", "\u212b \u2126 \u212a \u0340\u0341 \u1e9b\u0323");
add("hangul-jamo", "\u1100\u1161\u11a8 \u1112\u1161\u11ab");
add("nfc-already", "café résumé naïve");
// HF's NFC has Unicode 9.0 tables: marks assigned later are neither reordered nor composed across
add("nfc-unicode9", "b\u1df6\u0316 a\u1df6\u0301 b\u08d3\u0334 x\u{10d24}\u0316 b\u08d4\u0316 a\u0301\u1df6");
// letters of Unicode 15.0 (CJK Extension H, Kawi), newer than PCRE2 10.42's tables
add("letters-unicode15", "\u{31350}'d \u{31412}abc \u{11f04}\u{11f05}x \u{1e4d0}y");
// whitespace
for (const n of [2, 3, 4, 5, 7, 8, 12, 16, 23, 24, 25, 26, 30]) add(`spaces-${n}`, `a${" ".repeat(n)}b`);
add("spaces-48", "x" + " ".repeat(48) + "y");
add("spaces-leading", "   leading spaces");
add("spaces-trailing", "trailing spaces   ");
add("spaces-only", "     ");
add("space-one", " ");
add("spaces-before-newline", "end of line   \nnext");
add("tabs", "a\tb\t\tc\t\t\td");
add("tabs-only", "\t\t\t");
add("newlines", "a\nb\n\nc\n\n\nd");
add("newlines-only", "\n\n\n\n");
add("crlf", "line one\r\nline two\r\n\r\nline four\r\n");
add("cr-only", "old\rmac\rline\r");
add("mixed-whitespace", "a \t b\t \tc \n d\n \n e \r\n\t f");
add("whitespace-unicode", "nbsp\u00a0here, thin\u2009space, ideographic\u3000space, nel\u0085x, ls\u2028ps\u2029end");
add("whitespace-edge", "em\u2003\u2003space, mvs\u180e\u180ex, zwsp\u200b\u200bx, bom\ufeffx, fs\u001c\u001dx, vt\u000bff\u000cx");
add("space-then-punct", "hello , world ! ( x ) [ y ] { z }");
add("space-runs-punct", "a  ,  b   .   c    !");
// special tokens inside text
add("special-eot", "First document.<|endoftext|>Second document.");
add("special-eot-spaces", "end <|endoftext|> start");
add("special-eot-only", "<|endoftext|>");
add("special-eot-repeat", "<|endoftext|><|endoftext|>x<|endoftext|>");
add("special-padding", "a<|padding|>b <|padding|>");
add("special-partial", "<|endoftext| <|endof <endoftext|> |endoftext|>");
add("special-with-spaces-run", "  <|endoftext|>   x");
add("special-in-word", "foo<|endoftext|>bar");
// long words and repetition
add("long-word", "Pneumonoultramicroscopicsilicovolcanoconiosis and Donaudampfschifffahrtsgesellschaftskapitän");
add("long-random-letters", "qwxzjvkqpmztrbnlsdfghjklwertyuiopzxcvbnmqazwsxedcrfvtgbyhnujmikolp");
add("repeat-char", "a".repeat(100));
add("repeat-dots", ".".repeat(64));
add("repeat-dash", "-".repeat(40) + " " + "=".repeat(40));
add("repeat-digits", "1".repeat(50));
add("repeat-syllable", "lalalalalalalalalalalalalalala hahahahaha");
add("camel-snake", "getHTTPResponseCode parse_json_file XMLHttpRequest __init__ kebab-case-name");
add("hashtags", "#MachineLearning @user_name $TICKER ^_^ :-) <3");
add("math-symbols", "∀x∈ℝ: x²≥0, ∑ᵢ aᵢ = ∫₀¹ f(x)dx ≈ π ≠ ∞ → ⇒ ≤ ≥");
add("box-drawing", "┌──┬──┐\n│a │b │\n└──┴──┘");
add("control-chars", "bell\u0007 nul\u0000 esc\u001b[0m del\u007f");
add("private-use", "\ue000\uf8ff\u{f0000}");
add("astral", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 𓀀 🜁 𠀋");
add("replacement-char", "\ufffd already a replacement \ufffd\ufffd");
add("empty", "");
add("single-letter", "a");
add("single-space-letter", " a");
add("single-emoji", "🤖");
add("single-cjk", "猫");
// invalid UTF-8 (raw bytes; TextDecoder replaces maximal invalid subparts with U+FFFD)
addHex("invalid-lone-continuation", "61806263");
addHex("invalid-truncated-2", "61c3");
addHex("invalid-truncated-3", "e282");
addHex("invalid-truncated-4", "f09f9880f09f98");
addHex("invalid-overlong", "c0afe080af41");
addHex("invalid-surrogate", "eda080edbfbf41");
addHex("invalid-above-max", "f4908080f5ff41");
addHex("invalid-mixed", "48656c6c6f20ff20776f726c6420e2828220e282ac");
addHex("invalid-latin1", "63616ce920e0206c61");

// Random mixes from a fixed seed: fragments of every kind above, glued with and without spaces.
function lcg(seed) {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296);
}
const rand = lcg(20240229);
const fragments = [
  "the", "The", "Mamba", "state", " space", "model", "'s", "'t", "'re", "'S", "don't", "123", "4.56", "1e9",
  "猫", "状态", "한국", "مرحبا", "שלום", "नमस्ते", "ñ", nfd("é"), nfd("Å"), "ß", "😀", "👍🏽", "👩‍💻", "🇯🇵",
  " ", "  ", "   ", "     ", "\t", "\n", "\r\n", "\n\n", " \n", "\u00a0", "\u3000", "<|endoftext|>", ".", ",", "!",
  "?", "...", "—", "(", ")", "{", "}", "<", ">", "=", "==", "->", "::", "_", "__", "#", "@", "http://x.y/z",
  "x\u0301", "\u0300", "e\u0308\u0301", "ok", "A", "zz", "qu", "-", "--", "'", "\"", "`", "$", "%", "0", "00",
];
for (let i = 0; i < 120; i++) {
  const n = 1 + Math.floor(rand() * 24);
  let s = "";
  for (let k = 0; k < n; k++) s += fragments[Math.floor(rand() * fragments.length)];
  add(`random-${String(i).padStart(3, "0")}`, s);
}

// ---- the variant tokenizer (must match variant() in tests/test_tokenizer.cpp) ----

function variant(json) {
  const j = JSON.parse(json);
  j.pre_tokenizer.add_prefix_space = true;
  const t = (id, content, special, o) =>
    Object.assign({ id, content, special, single_word: false, lstrip: false, rstrip: false, normalized: !special }, o);
  j.added_tokens.push(t(50277, "<mask>", true, { lstrip: true }));
  j.added_tokens.push(t(50278, "<sep>", true, { rstrip: true }));
  j.added_tokens.push(t(50279, "ony", false, { single_word: true }));
  j.added_tokens.push(t(50280, "Ångström", false, {}));
  return JSON.stringify(j);
}
const variantTexts = [
  "Hello world", " leading space", "I saw a <mask> here", "a   <mask>b", "<mask> at start", "x\t<mask>",
  "one<sep>   two", "end <sep>\n\nnext", "<sep>", "ony Tony phony ony. (ony) ony_x ony1", "Anthony ony",
  nfd("the Ångström unit"), "Ångström", "Ångströms", "x<mask><sep>y", "<|endoftext|>after", "  two spaces",
  "\u3000ideographic <mask>", "lstrip\u2003<mask>", "ony\u0301", "mix <mask> ony <sep> Ångström <|endoftext|> end",
];

// ---- run ----

async function main() {
  const [tokenizerPath, outDir] = process.argv.slice(2);
  if (!tokenizerPath || !outDir) {
    console.error("usage: node tools/tokenizer_fixture.js TOKENIZER_JSON OUT_DIR");
    process.exit(2);
  }
  const json = fs.readFileSync(tokenizerPath, "utf8");
  const tokenizer = Tokenizer.fromString(json);
  const variantTokenizer = Tokenizer.fromString(variant(json));
  const names = new Set();
  const corpus = [], expected = [], variantExpected = [];
  const run = async (tok, name, text) => {
    const ids = Array.from((await tok.encode(text, null, { addSpecialTokens: false })).getIds());
    return { name, ids, decoded: await tok.decode(ids, false) };
  };
  for (const c of cases) {
    if (names.has(c.name)) throw new Error(`duplicate case name ${c.name}`);
    names.add(c.name);
    corpus.push(JSON.stringify(c));
    const text = c.text !== undefined ? c.text : new TextDecoder("utf-8").decode(Buffer.from(c.hex, "hex"));
    expected.push(JSON.stringify(await run(tokenizer, c.name, text)));
  }
  for (let i = 0; i < variantTexts.length; i++) {
    const r = await run(variantTokenizer, `variant-${String(i).padStart(2, "0")}`, variantTexts[i]);
    variantExpected.push(JSON.stringify(Object.assign({ text: variantTexts[i] }, r)));
  }
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, "corpus.jsonl"), corpus.join("\n") + "\n");
  fs.writeFileSync(path.join(outDir, "expected.jsonl"), expected.join("\n") + "\n");
  fs.writeFileSync(path.join(outDir, "variant_expected.jsonl"), variantExpected.join("\n") + "\n");
  const version = require("tokenizers/package.json").version;
  console.log(`wrote ${cases.length} cases and ${variantTexts.length} variant cases to ${outDir} (tokenizers ${version})`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
