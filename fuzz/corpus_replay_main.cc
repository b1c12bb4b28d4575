// Runs a libFuzzer target's LLVMFuzzerTestOneInput over files, without
// libFuzzer: the corpus replay tests (//fuzz:*_corpus_test) build the fuzz
// targets with the regular toolchain and feed them their committed corpus, so
// the targets keep compiling and every reproducer added to a corpus stays fixed.
//
//   value_codec_corpus_test FILE...
//
// A failed check aborts (the test fails naming the input); no input at all is
// an error too, so an empty corpus glob cannot pass silently.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s CORPUS_FILE...\n(no corpus files given)\n", argv[0]);
    return 1;
  }
  for (int i = 1; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    if (!in) {
      fprintf(stderr, "cannot read %s\n", argv[i]);
      return 1;
    }
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string data = buffer.str();
    fprintf(stderr, "%s (%zu bytes)\n", argv[i], data.size());
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  }
  printf("%d inputs passed\n", argc - 1);
  return 0;
}
