// AudioPreprocessor against the golden Python writes (tests/golden/audio_preprocess.json): the same samples and clips.
package dev.gemmaedge.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.junit.Test;

public class AudioPreprocessorGoldenTest {

    /** The golden file: system property audio.golden (run_tests.sh sets it), else the repository's copy. */
    static Map<String, Object> load() throws Exception {
        File f = new File(System.getProperty("audio.golden", "../../tests/golden/audio_preprocess.json"));
        if (!f.isFile())
            throw new IllegalStateException(f + ": expected the audio golden (tests/golden/audio_preprocess.json, "
                    + "written by tests/golden/make_audio_golden.py), found none");
        Map<String, Object> g = Json.asObject(Json.parse(new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8), f.getPath()),
                f.getPath());
        assertEquals(f + " format", "gemma-edge-audio-golden", g.get("format"));
        assertEquals(f + " version", 1L, g.get("version"));
        assertEquals(f + " sample_rate", (long) AudioPreprocessor.SAMPLE_RATE, g.get("sample_rate"));
        assertEquals(f + " hop", (long) AudioPreprocessor.HOP, g.get("hop"));
        return g;
    }

    static final Map<String, Integer> BITS = Map.of("u8", 8, "s16", 16, "s24", 24, "s32", 32, "f32", 16);

    static AudioPreprocessor.Encoding encoding(String name) {
        return AudioPreprocessor.Encoding.valueOf(name.toUpperCase(Locale.ROOT));
    }

    /**
     * make_audio_golden.py's pcm_values and pcm_bytes: interleaved sample k is raw = (a·k + b·k²) mod 2^bits (exact:
     * the long arithmetic throws rather than wrap), signed encodings centred by 2^(bits−1), f32 the s16 value / 32768;
     * little-endian, s24 as three bytes.
     */
    static byte[] pcmBytes(String enc, long count, long a, long b) {
        int bits = BITS.get(enc);
        AudioPreprocessor.Encoding e = encoding(enc);
        ByteBuffer out = ByteBuffer.allocate(Math.toIntExact(count * e.bytes)).order(ByteOrder.LITTLE_ENDIAN);
        for (long k = 0; k < count; k++) {
            long raw = Math.floorMod(Math.addExact(Math.multiplyExact(a, k), Math.multiplyExact(b, Math.multiplyExact(k, k))), 1L << bits);
            long signed = raw - (1L << (bits - 1));
            switch (e) {
                case U8: out.put((byte) raw); break;
                case S16: out.putShort((short) signed); break;
                case S24: out.put((byte) signed).put((byte) (signed >> 8)).put((byte) (signed >> 16)); break;
                case S32: out.putInt((int) signed); break;
                default: out.putFloat((float) signed / 32768f); break;   // F32
            }
        }
        return out.array();
    }

    static float[] floatsLe(byte[] b) {
        float[] f = new float[b.length / 4];
        ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(f);
        return f;
    }

    /** The tolerance for a resampled sample: one float32 ulp of the larger magnitude. */
    static float tolerance(float a, float b) {
        return Math.ulp(Math.max(Math.abs(a), Math.abs(b)));
    }

    /** The largest difference a comparison saw: in absolute terms and in ulps of the tolerance. */
    static final class Largest {
        double abs, ulps;
        int differing;
    }

    /**
     * "" when {@code got} is the case's samples (bit-equal, or within one ulp where Python resampled), else what
     * differs; {@code largest} gets the largest difference seen.
     */
    static String compareSamples(Map<String, Object> c, float[] got, float[] want, Largest largest) throws Exception {
        boolean resampled = (Boolean) c.get("resampled");
        long n = Json.asLong(c.get("samples"), "samples");
        if (got.length != n) return "samples: expected " + n + ", found " + got.length;
        if (want != null && want.length != n) return "samples_f32_b64: holds " + want.length + " samples for " + n;
        if (!resampled) {
            String sha = ImagePreprocessorGoldenTest.sha256(ImagePreprocessorGoldenTest.le(got));
            if (!sha.equals(c.get("samples_sha256"))) return "samples (not resampled: bit-equal): expected SHA-256 " + c.get("samples_sha256") + ", found " + sha;
            if (want != null)
                for (int i = 0; i < n; i++)
                    if (Float.floatToIntBits(got[i]) != Float.floatToIntBits(want[i]))
                        return "sample " + i + ": expected " + want[i] + ", found " + got[i];
            return "";
        }
        if (want == null) return "a resampled case without samples_f32_b64: nothing to compare within an ulp";
        for (int i = 0; i < n; i++) {
            double d = Math.abs((double) got[i] - want[i]);
            float tol = tolerance(got[i], want[i]);
            if (d > 0) largest.differing++;
            if (d > largest.abs) largest.abs = d;
            if (d / tol > largest.ulps) largest.ulps = d / tol;
            if (d > tol)
                return "sample " + i + ": expected " + want[i] + " within one ulp (" + tol + "), found " + got[i] + " (off by " + d + ")";
        }
        return "";
    }

    /** "" when the picks, clips or refusal of the case hold for {@code samples}, else what differs. */
    static String compareClips(Map<String, Object> c, float[] samples) {
        boolean resampled = (Boolean) c.get("resampled");
        for (Object p : Json.asArray(c.get("picks"), "picks")) {
            List<Object> iv = Json.asArray(p, "pick");
            int i = (int) Json.asLong(iv.get(0), "pick index");
            float want = (float) Json.asDouble(iv.get(1), "pick value");
            boolean ok = resampled ? Math.abs((double) samples[i] - want) <= tolerance(samples[i], want)
                    : Float.floatToIntBits(samples[i]) == Float.floatToIntBits(want);
            if (!ok) return "pick " + i + ": expected " + want + ", found " + samples[i];
        }
        List<AudioPreprocessor.Clip> clips;
        try {
            clips = AudioPreprocessor.clips(samples);
        } catch (IllegalArgumentException e) {
            if (!c.containsKey("error")) return "refused: " + e.getMessage();
            Map<String, Object> err = Json.asObject(c.get("error"), "error");
            if (!e.getMessage().contains((String) err.get("message_contains")) || !e.getMessage().equals(err.get("message")))
                return "refusal: expected '" + err.get("message") + "', found '" + e.getMessage() + "'";
            return "";
        }
        if (c.containsKey("error")) return "expected a refusal (" + c.get("error") + "), found " + clips.size() + " clip(s)";
        List<Map<String, Object>> want = Golden.objects(c.get("clips"));
        if (want.size() != clips.size()) return "clips: expected " + want.size() + ", found " + clips.size();
        for (int j = 0; j < clips.size(); j++) {
            AudioPreprocessor.Clip k = clips.get(j);
            Map<String, Object> w = want.get(j);
            int frames = AudioPreprocessor.melFrames(k.samples);
            long[][] pairs = {
                {Json.asLong(w.get("start"), "start"), k.start},
                {Json.asLong(w.get("samples"), "samples"), k.samples},
                {Json.asLong(w.get("mel_frames"), "mel_frames"), frames},
                {Json.asLong(w.get("program_frames"), "program_frames"), k.programFrames()},
                {Json.asLong(w.get("soft_tokens"), "soft_tokens"), k.softTokens},
            };
            String[] names = {"start", "samples", "mel_frames", "program_frames", "soft_tokens"};
            for (int q = 0; q < pairs.length; q++)
                if (pairs[q][0] != pairs[q][1]) return "clip " + j + " " + names[q] + ": expected " + pairs[q][0] + ", found " + pairs[q][1];
            // the program's inputs: the clip's first 160 · mel_frames samples as rows, then zero rows; valid 1 then 0
            if (k.rows.length != k.programFrames() * AudioPreprocessor.HOP) return "clip " + j + " rows: expected program_frames x 160 floats";
            for (int i = 0; i < k.rows.length; i++) {
                float expect = i < frames * AudioPreprocessor.HOP ? samples[(int) k.start + i] : 0f;
                if (Float.floatToIntBits(k.rows[i]) != Float.floatToIntBits(expect))
                    return "clip " + j + " rows[" + i + "]: expected " + expect + ", found " + k.rows[i];
            }
            for (int i = 0; i < k.valid.length; i++)
                if (k.valid[i] != (i < frames ? 1f : 0f)) return "clip " + j + " valid[" + i + "]: expected " + (i < frames ? 1 : 0) + ", found " + k.valid[i];
        }
        return "";
    }

    static float[] decodeCase(Map<String, Object> c) {
        String enc = Json.asString(c.get("encoding"), "encoding");
        int channels = (int) Json.asLong(c.get("channels"), "channels");
        long frames = Json.asLong(c.get("frames"), "frames");
        byte[] pcm = pcmBytes(enc, frames * channels, Json.asLong(c.get("a"), "a"), Json.asLong(c.get("b"), "b"));
        float[] interleaved = AudioPreprocessor.decodePcm(pcm, encoding(enc), channels);
        return AudioPreprocessor.toMono16k(interleaved, channels, (int) Json.asLong(c.get("rate"), "rate"));
    }

    static float[] goldenSamples(Map<String, Object> c) {
        Object b64 = c.get("samples_f32_b64");
        return b64 == null ? null : floatsLe(Base64.getDecoder().decode((String) b64));
    }

    @Test
    public void everyCaseEqualsPython() throws Exception {
        List<String> failures = new ArrayList<>();
        int n = 0, resampled = 0, refused = 0, multiClip = 0;
        for (Map<String, Object> c : Golden.objects(load().get("cases"))) {
            String name = Json.asString(c.get("name"), "name");
            float[] samples = decodeCase(c);
            Largest largest = new Largest();
            String p = compareSamples(c, samples, goldenSamples(c), largest);
            if (p.isEmpty()) p = compareClips(c, samples);
            if (!p.isEmpty()) failures.add(name + ": " + p);
            if ((Boolean) c.get("resampled")) {
                resampled++;
                System.out.printf(Locale.ROOT, "AudioPreprocessorGoldenTest %s: largest difference from scipy %.3g (%.2f ulp), %d of %d samples differ%n",
                        name, largest.abs, largest.ulps, largest.differing, samples.length);
            }
            n++;
            if (c.containsKey("error")) refused++;
            if (c.containsKey("clips") && Json.asArray(c.get("clips"), "clips").size() > 1) multiClip++;
        }
        assertTrue("audio golden cases that do not hold:\n" + String.join("\n", failures), failures.isEmpty());
        assertTrue("the golden has cases", n >= 10);
        assertTrue("the golden has resampled cases", resampled >= 5);
        assertTrue("the golden has a refusal", refused >= 1);
        assertTrue("the golden has an item of several clips", multiClip >= 1);
    }

    @Test
    public void theComparisonCanFail() throws Exception {
        int seen = 0;
        for (Map<String, Object> c : Golden.objects(load().get("cases"))) {
            String name = Json.asString(c.get("name"), "name");
            if (name.equals("s24_44k1_mono")) {   // a resampled sample two ulps off is seen; one ulp is within
                float[] samples = decodeCase(c), want = goldenSamples(c);
                int i = want.length / 3;
                float v = want[i];
                want[i] = Math.nextUp(Math.nextUp(v));
                assertTrue("a sample 2 ulp off passed", !compareSamples(c, samples, want, new Largest()).isEmpty());
                want[i] = v;
                samples[i] = Math.nextDown(Math.nextDown(samples[i]));
                assertTrue("a sample 2 ulp off passed", !compareSamples(c, samples, want, new Largest()).isEmpty());
                seen++;
            }
            if (name.equals("s16_16k_mono")) {   // a sample that was not resampled must be equal
                float[] samples = decodeCase(c);
                samples[7] = Math.nextUp(samples[7]);
                assertTrue("a sample 1 ulp off passed where bit-equality holds", !compareSamples(c, samples, goldenSamples(c), new Largest()).isEmpty());
                samples = decodeCase(c);
                List<Map<String, Object>> clips = Golden.objects(c.get("clips"));
                clips.get(0).put("soft_tokens", 7L);
                assertTrue("a wrong soft-token count passed", !compareClips(c, samples).isEmpty());
                seen++;
            }
            if (name.equals("s16_16k_too_short")) {   // one sample more makes a clip: the refusal is expected
                float[] samples = java.util.Arrays.copyOf(decodeCase(c), 161);
                assertTrue("a clip where Python refuses passed", !compareClips(c, samples).isEmpty());
                seen++;
            }
        }
        assertEquals(3, seen);
    }

    @Test
    public void refusesWhatTheHostCannotRead() {
        String[][] cases = {
            {"rate", "audio sample rate: expected a positive number of Hz, found 0"},
            {"channels", "audio channels: expected >= 1, found 0"},
            {"frames", "audio samples: expected whole frames of 2 channel(s), found 3 samples (1 left over)"},
            {"nan", "audio samples: expected finite values, found NaN at sample 1"},
            {"inf", "audio samples: expected finite values, found Infinity at sample 0"},
            {"bytes", "audio data: expected whole frames of 2 x 3 = 6 bytes (S24), found 8 bytes (2 left over)"},
            {"wav", "WAV format: expected PCM (tag 1) of 8, 16, 24 or 32 bits or float (tag 3) of 32 bits, found tag 3 with 64 bits"},
        };
        for (String[] k : cases) {
            try {
                switch (k[0]) {
                    case "rate": AudioPreprocessor.toMono16k(new float[4], 1, 0); break;
                    case "channels": AudioPreprocessor.toMono16k(new float[4], 0, 16000); break;
                    case "frames": AudioPreprocessor.toMono16k(new float[3], 2, 16000); break;
                    case "nan": AudioPreprocessor.toMono16k(new float[] {0f, Float.NaN}, 1, 8000); break;
                    case "inf": AudioPreprocessor.toMono16k(new float[] {Float.POSITIVE_INFINITY, 0f}, 2, 16000); break;
                    case "bytes": AudioPreprocessor.decodePcm(new byte[8], AudioPreprocessor.Encoding.S24, 2); break;
                    default: AudioPreprocessor.Encoding.ofWav(3, 64); break;
                }
                fail(k[0] + ": accepted");
            } catch (IllegalArgumentException e) {
                assertEquals(k[0], k[1], e.getMessage());
            }
        }
        try {
            AudioPreprocessor.clips(new float[0]);
            fail("no samples made a clip");
        } catch (IllegalArgumentException e) {
            assertEquals("audio: 0 samples make no soft token (expected at least 161, 10 ms at 16000 Hz)", e.getMessage());
        }
    }

    @Test
    public void theFramingIsTheContracts() {
        // contract/audio.py: 161 samples make one frame and one token; 30 s make 2999 frames, 750 tokens, 3021 rows
        assertEquals(0, AudioPreprocessor.softTokens(160));
        assertEquals(1, AudioPreprocessor.melFrames(161));
        assertEquals(1, AudioPreprocessor.softTokens(161));
        assertEquals(45, AudioPreprocessor.programFrames(161));
        assertEquals(2, AudioPreprocessor.softTokens(161 + 4 * 160));
        assertEquals(2999, AudioPreprocessor.melFrames(AudioPreprocessor.MAX_SAMPLES));
        assertEquals(750, AudioPreprocessor.softTokens(AudioPreprocessor.MAX_SAMPLES));
        assertEquals(3021, AudioPreprocessor.programFrames(AudioPreprocessor.MAX_SAMPLES));
        assertEquals(45, AudioPreprocessor.programFrames(161 + 44 * 160));   // 45 frames + 3 = 48: one block
        assertEquals(93, AudioPreprocessor.programFrames(161 + 45 * 160));   // 46 frames: a second block
        // 60 s + 160 samples: two clips, the 160-sample tail dropped
        List<long[]> pieces = AudioPreprocessor.splitSamples(2L * AudioPreprocessor.MAX_SAMPLES + 160);
        assertEquals(2, pieces.size());
        assertEquals(AudioPreprocessor.MAX_SAMPLES, pieces.get(1)[0]);
    }
}
