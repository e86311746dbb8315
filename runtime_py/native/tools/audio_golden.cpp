// gemma-edge-audio-golden WAV OUT.f32: one WAV file through the native host's audio input (audio.h) — read,
// downmixed, resampled to 16 kHz, cut into clips — its 16 kHz samples written raw (float32, little-endian) and one
// JSON line printed: the sample count and each clip's start, samples, mel frames, program rows and soft tokens.
// tests/test_native.py compares both with tests/golden/audio_preprocess.json. A refused file exits 2 with one line.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "audio.h"
#include "errors.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: gemma-edge-audio-golden WAV OUT.f32\n");
    return 2;
  }
  try {
    const std::vector<float> samples = gemma_edge::to_mono_16k(gemma_edge::read_wav(argv[1]), argv[1]);
    std::ofstream out(argv[2], std::ios::binary);
    out.write(reinterpret_cast<const char*>(samples.data()), std::streamsize(4 * samples.size()));
    if (!out) throw gemma_edge::BadInput(std::string(argv[2]) + ": write failed");
    nlohmann::json o = {{"samples", samples.size()}, {"clips", nlohmann::json::array()}};
    for (const auto& c : gemma_edge::prepare_audio(samples, argv[1]))
      o["clips"].push_back({{"start", c.start}, {"samples", c.samples}, {"mel_frames", c.mel_frames},
                            {"program_frames", c.program_frames}, {"soft_tokens", c.soft_tokens}});
    std::printf("%s\n", o.dump().c_str());
    return 0;
  } catch (const gemma_edge::BadInput& e) {
    std::fprintf(stderr, "gemma-edge-audio-golden: %s\n", e.what());
    return 2;
  }
}
