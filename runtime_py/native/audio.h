// Audio input as gemma_edge/contract/audio.py states it: a WAV file read (libsndfile), downmixed to mono, resampled
// to 16 kHz with a port of scipy's resample_poly (what the Python host uses), and cut into clips of at most 30 s
// on the audio program's grid of rows of 160 samples with their validity mask. The log-mel front end itself runs
// inside the program (audio.pte), so every host hands it the same rows and gets the same features.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace gemma_edge {

constexpr int kAudioSampleRate = 16000;  // Hz, what the tower was trained on
constexpr int kAudioHop = 160;           // samples per row of the program's input (10 ms)
constexpr int kAudioMinSamples = 161;    // the fewest samples that give one frame
constexpr int kAudioMaxSamples = 30 * kAudioSampleRate;  // one clip: 30 s, 750 soft tokens
constexpr int kAudioBlock = 12;          // soft tokens per attention block of the tower
constexpr int kAudioBlockRows = 48;      // rows per block (4 frames per soft token)

// The contract's framing (contract/audio.py, same names).
int audio_mel_frames(int64_t samples);
int audio_soft_tokens(int64_t samples);
int audio_program_frames(int64_t samples);
std::vector<std::pair<int64_t, int64_t>> audio_split_samples(int64_t samples);

// Interleaved samples as decoded: integer PCM scaled by its full range (8-bit centred at 128), float as it is.
struct DecodedAudio {
  std::vector<float> interleaved;
  int rate = 0, channels = 0;
  int64_t frames = 0;
};

// A WAV file (RIFF/WAVE or WAVE_FORMAT_EXTENSIBLE; PCM 8/16/24/32-bit, float or double), whole. BadInput naming
// the file for anything else, or for a file with no samples.
DecodedAudio read_wav(const std::string& path);

// scipy.signal.resample_poly(x, up, down) with its defaults (Kaiser window β = 5, zero padding), in float64.
std::vector<double> resample_poly(const std::vector<double>& x, int up, int down);

// Mono (the channels' mean) at 16 kHz, float32: what runtime_py/audio.py's to_mono_16k gives.
std::vector<float> to_mono_16k(const DecodedAudio& audio, const std::string& where);

// One clip on the audio program's grid: rows [program_frames, 160] (its first 160 · mel_frames samples, then
// zeros) and valid [program_frames] (1 for its frames).
struct AudioClip {
  std::vector<float> rows, valid;
  int64_t start = 0, samples = 0;
  int mel_frames = 0, program_frames = 0, soft_tokens = 0;
};

// 16 kHz mono samples as the clips they are encoded as (one per 30 s, a tail too short for a token dropped).
// BadInput ("... make no soft token") when there is none.
std::vector<AudioClip> prepare_audio(const std::vector<float>& samples, const std::string& where);

}  // namespace gemma_edge
