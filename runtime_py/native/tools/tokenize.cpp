// gemma-edge-tokenize TOKENIZER.json STRINGS.json [IDS.json]: the runner library's tokenizer (tokenizer.h) over
// a JSON array of strings; prints {"ids": [[...], ...], "decoded": [...]} (each string's ids, and those ids
// decoded), plus "decoded_ids": [...] for IDS.json's id lists — what tests/test_native.py compares with HF
// `tokenizers` in Python. A string the tokenizer refuses gets ids null and its message as decoded text.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "errors.h"
#include "text_file.h"
#include "tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::fprintf(stderr, "usage: gemma-edge-tokenize TOKENIZER.json STRINGS.json [IDS.json]\n");
    return 2;
  }
  try {
    gemma_edge::TextTokenizer tok(argv[1]);
    const auto strings = nlohmann::json::parse(gemma_edge::read_text_file("", argv[2], size_t(1) << 30));
    nlohmann::json ids = nlohmann::json::array(), decoded = nlohmann::json::array();
    for (const auto& s : strings) {
      try {
        const auto v = tok.encode(s.get<std::string>());
        ids.push_back(v);
        decoded.push_back(tok.decode(v));
      } catch (const gemma_edge::BadInput& e) {
        ids.push_back(nullptr);
        decoded.push_back(e.what());
      }
    }
    nlohmann::json out = {{"ids", ids}, {"decoded", decoded}};
    if (argc == 4) {
      out["decoded_ids"] = nlohmann::json::array();
      for (const auto& v : nlohmann::json::parse(gemma_edge::read_text_file("", argv[3], size_t(1) << 30)))
        out["decoded_ids"].push_back(tok.decode(v.get<std::vector<int64_t>>()));
    }
    std::printf("%s\n", out
                            .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gemma-edge-tokenize: %s\n", e.what());
    return 2;
  }
}
