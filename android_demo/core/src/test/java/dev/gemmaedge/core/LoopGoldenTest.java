// The shared golden suite of the generation loop (tests/golden/loop.json, recorded from Python's Session): Generator and Sampler must replay every case.
package dev.gemmaedge.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

public class LoopGoldenTest {
    static final int BOS = 2;   // make_loop_golden.py's bos: images and audio without placeholders go right after it

    /** The suite's path: system property loop.golden (run_tests.sh sets it), else the repository's copy. */
    static File goldenFile() {
        File f = new File(System.getProperty("loop.golden", "../../tests/golden/loop.json"));
        if (!f.isFile())
            throw new IllegalStateException(f + ": expected the loop golden suite (tests/golden/loop.json, written by "
                    + "tests/golden/make_loop_golden.py), found none");
        return f;
    }

    /** A PLE source whose row for id t is the one value t; records every call. */
    static final class RecordingPle implements PleRows {
        final List<List<Integer>> fetches = new ArrayList<>();

        @Override public float[] fetch(int[] ids) {
            fetches.add(list(ids));
            float[] rows = new float[ids.length];
            for (int i = 0; i < ids.length; i++) rows[i] = ids[i];
            return rows;
        }

        @Override public float[] fetchOne(int id) { fetches.add(list(new int[] {id})); return new float[] {id}; }

        @Override public int rowFloats() { return 1; }
    }

    /**
     * steps[0] from the last prefill chunk (NaN from earlier ones: the loop must not read them), steps[k] from decode k.
     * An image or audio case's program ({@code soft}) records the tokens and the soft rows (their first value: each
     * row must be one value, the replay encoder's) of every prefill call, and checks the PLE row of each of the
     * model's placeholder ids is the pad row.
     */
    static final class ReplayProgram implements Program {
        final List<float[]> steps;
        final int vocab, padId, hidden;
        final boolean soft;
        final int[] placeholders;
        int promptLength;
        final List<List<Integer>> prefillCalls = new ArrayList<>(), decodeCalls = new ArrayList<>();
        final List<Integer> prefillIds = new ArrayList<>();
        final List<List<Double>> prefillSoft = new ArrayList<>();

        ReplayProgram(List<float[]> steps, int promptLength, int vocab) { this(steps, promptLength, vocab, false, new int[0], 0, 0); }

        ReplayProgram(List<float[]> steps, int promptLength, int vocab, boolean soft, int[] placeholders, int padId, int hidden) {
            this.steps = steps; this.promptLength = promptLength; this.vocab = vocab;
            this.soft = soft; this.placeholders = placeholders; this.padId = padId; this.hidden = hidden;
        }

        private boolean placeholder(int t) {
            for (int p : placeholders) if (p == t) return true;
            return false;
        }

        private float[] step(int k) {
            if (k >= steps.size()) throw new AssertionError("the loop asked for logits step " + k + ", the case records " + steps.size());
            return steps.get(k);
        }

        @Override public float[] prefill(int[] tokens, int startPos, float[] pleRows) {
            if (soft) {   // a text chunk of an image or audio case: soft zeros
                List<Double> zeros = new ArrayList<>();
                for (int i = 0; i < tokens.length; i++) zeros.add(0.0);
                prefillSoft.add(zeros);
            }
            return replayPrefill(tokens, startPos, pleRows);
        }

        @Override public float[] prefill(int[] tokens, int startPos, float[] pleRows, float[] soft) {
            if (!this.soft) throw new AssertionError("prefill at " + startPos + ": soft_embeds in a text case");
            if (soft.length != tokens.length * hidden)
                throw new AssertionError("prefill at " + startPos + ": expected " + tokens.length * hidden + " soft floats, found " + soft.length);
            List<Double> firsts = new ArrayList<>();
            for (int i = 0; i < tokens.length; i++) {
                for (int j = 1; j < hidden; j++)
                    if (soft[i * hidden + j] != soft[i * hidden])
                        throw new AssertionError("prefill at " + startPos + ": soft row " + i + " is not one value (the replay encoder's)");
                firsts.add((double) soft[i * hidden]);
            }
            prefillSoft.add(firsts);
            return replayPrefill(tokens, startPos, pleRows);
        }

        private float[] replayPrefill(int[] tokens, int startPos, float[] pleRows) {
            prefillCalls.add(Arrays.asList(startPos, tokens.length));
            for (int t : tokens) prefillIds.add(t);
            for (int i = 0; i < tokens.length; i++) {
                int fetched = placeholder(tokens[i]) ? padId : tokens[i];   // an image or audio placeholder's row is the pad row
                if (pleRows[i] != fetched) throw new AssertionError("prefill at " + startPos + ": row " + i + " is not its token's row");
            }
            if (startPos + tokens.length < promptLength) {
                float[] nan = new float[vocab];
                Arrays.fill(nan, Float.NaN);
                return nan;
            }
            return step(0);
        }

        @Override public float[] decode(int token, int pos, float[] pleRow) {
            decodeCalls.add(Arrays.asList(token, pos));
            if (pleRow.length != 1 || pleRow[0] != token) throw new AssertionError("decode of token " + token + ": handed another token's row");
            return step(decodeCalls.size());
        }
    }

    static List<Integer> list(int[] a) {
        List<Integer> l = new ArrayList<>();
        for (int x : a) l.add(x);
        return l;
    }

    static List<List<Integer>> lists(Object v) {
        List<List<Integer>> out = new ArrayList<>();
        for (Object o : Json.asArray(v, "golden list of lists")) out.add(list(Golden.ints(o)));
        return out;
    }

    /** A u64 seed as the signed long of the same 64 bits (Python writes seeds in [0, 2^64)). */
    static long seed(Object v) {
        if (v instanceof BigInteger) {
            BigInteger b = (BigInteger) v;
            if (b.signum() < 0 || b.bitLength() > 64) throw new IllegalArgumentException("seed: expected a u64, found " + b);
            return b.longValue();
        }
        return Json.asLong(v, "seed");
    }

    /** The replay encoder of loop.md: image k's soft tokens are rows all equal to k + 1; records each call's n_k. */
    static final class ReplayEncoder implements VisionEncoder {
        final int hidden;
        final List<Integer> encodeCalls = new ArrayList<>();
        int released;

        ReplayEncoder(int hidden) { this.hidden = hidden; }

        @Override public float[] encode(ImagePreprocessor.Prepared image) {
            encodeCalls.add(image.softTokens);
            float[] rows = new float[image.softTokens * hidden];
            Arrays.fill(rows, encodeCalls.size());
            return rows;
        }

        @Override public void release() { released++; }
    }

    /** The replay audio encoder of loop.md: clip j (over all items) has soft tokens all equal to −(j + 1); records each call's n_ij. */
    static final class ReplayAudioEncoder implements AudioEncoder {
        final int hidden;
        final List<Integer> encodeCalls = new ArrayList<>();
        int released;

        ReplayAudioEncoder(int hidden) { this.hidden = hidden; }

        @Override public float[] encode(AudioPreprocessor.Clip clip) {
            encodeCalls.add(clip.softTokens);
            float[] rows = new float[clip.softTokens * hidden];
            Arrays.fill(rows, -encodeCalls.size());
            return rows;
        }

        @Override public void release() { released++; }
    }

    /** A clip as the loop sees it once read and cut: its soft-token count (the samples are the encoder's concern). */
    static AudioPreprocessor.Clip replayClip(int softTokens) {
        return new AudioPreprocessor.Clip(new float[0], new float[0], softTokens, 0, 0);
    }

    static final int REPLAY_BUDGET = 70;   // make_loop_golden.py's IMAGE_BUDGET
    static final int[] ALL_BUDGETS = {70, 140, 280, 560, 1120};

    /** An image as the loop sees it once preprocessed: its soft-token count (the pixels are the encoder's concern). */
    static ImagePreprocessor.Prepared replayImage(int softTokens) {
        return new ImagePreprocessor.Prepared(new float[0], new long[0], softTokens, 48, 48 * softTokens, REPLAY_BUDGET);
    }

    static List<Double> doubles(Object v) {
        List<Double> out = new ArrayList<>();
        for (Object o : Json.asArray(v, "golden list of numbers")) out.add(Json.asDouble(o, "golden number"));
        return out;
    }

    static List<List<Double>> doubleLists(Object v) {
        List<List<Double>> out = new ArrayList<>();
        for (Object o : Json.asArray(v, "golden list of lists")) out.add(doubles(o));
        return out;
    }

    static String stopName(Generator.StopReason r) {
        return r == Generator.StopReason.EOS ? "eos" : r == Generator.StopReason.MAX_NEW_TOKENS ? "max_new_tokens" : String.valueOf(r);
    }

    /** "" when Generator does what the case records, else what differs. */
    static String problem(Map<String, Object> c, int vocab) throws Exception {
        List<float[]> steps = new ArrayList<>();
        for (Object s : Json.asArray(c.get("steps"), "steps")) steps.add(Golden.floats(s));
        Map<String, Object> sc = Json.asObject(c.get("sampler"), "sampler");
        int[] prompt = Golden.ints(c.get("prompt"));
        RecordingPle ple = new RecordingPle();
        boolean imageCase = c.containsKey("images"), audioCase = c.containsKey("audio");
        List<ImagePreprocessor.Prepared> images = new ArrayList<>();
        List<List<AudioPreprocessor.Clip>> audio = new ArrayList<>();
        Generator.Vision vision = null;
        Generator.Audio hearing = null;
        ReplayEncoder encoder = null;
        ReplayAudioEncoder audioEncoder = null;
        ReplayProgram prog;
        if (imageCase || audioCase) {
            if (imageCase) for (int n : Golden.ints(c.get("images"))) images.add(replayImage(n));
            if (audioCase)
                for (Object item : Json.asArray(c.get("audio"), "audio")) {
                    List<AudioPreprocessor.Clip> clips = new ArrayList<>();
                    for (int n : Golden.ints(item)) clips.add(replayClip(n));
                    audio.add(clips);
                }
            int hidden = (int) Json.asLong(c.get("hidden"), "hidden"), pad = (int) Json.asLong(c.get("pad_token_id"), "pad_token_id");
            List<Integer> placeholders = new ArrayList<>();   // a model without a tower: none of its ids is one
            if (c.get("image_tokens") != null) {
                Map<String, Object> t = Json.asObject(c.get("image_tokens"), "image_tokens");
                int boi = (int) Json.asLong(t.get("boi"), "boi"), eoi = (int) Json.asLong(t.get("eoi"), "eoi");
                int imageId = (int) Json.asLong(t.get("image"), "image");
                placeholders.add(imageId);
                encoder = new ReplayEncoder(hidden);
                vision = new Generator.Vision(encoder, boi, imageId, eoi, pad, BOS, hidden, ALL_BUDGETS);
            }
            if (c.get("audio_tokens") != null) {
                Map<String, Object> t = Json.asObject(c.get("audio_tokens"), "audio_tokens");
                int boa = (int) Json.asLong(t.get("boa"), "boa"), eoa = (int) Json.asLong(t.get("eoa"), "eoa");
                int audioId = (int) Json.asLong(t.get("audio"), "audio");
                placeholders.add(audioId);
                audioEncoder = new ReplayAudioEncoder(hidden);
                hearing = new Generator.Audio(audioEncoder, boa, audioId, eoa, pad, BOS, hidden);
            }
            int[] ids = new int[placeholders.size()];
            for (int k = 0; k < ids.length; k++) ids[k] = placeholders.get(k);
            prog = new ReplayProgram(steps, prompt.length, vocab, true, ids, pad, hidden);
            if (c.containsKey("expect"))   // the expanded prompt's last chunk gives steps[0]
                prog.promptLength = Json.asArray(Json.asObject(c.get("expect"), "expect").get("expanded_prompt"), "expanded_prompt").size();
        } else {
            prog = new ReplayProgram(steps, prompt.length, vocab);
        }
        Generator gen = new Generator(prog, ple, vocab, (int) Json.asLong(c.get("max_context"), "max_context"),
                (int) Json.asLong(c.get("prefill_chunk"), "prefill_chunk"), Golden.ints(c.get("eos")), null, vision, hearing);
        Sampler sampler = new Sampler((float) Json.asDouble(sc.get("temperature"), "temperature"), (int) Json.asLong(sc.get("top_k"), "top_k"),
                (float) Json.asDouble(sc.get("top_p"), "top_p"), seed(sc.get("seed")));
        List<Integer> streamed = new ArrayList<>();
        Generator.Result r;
        try {
            r = gen.generate(prompt, images, audio, (int) Json.asLong(c.get("max_new_tokens"), "max_new_tokens"), sampler,
                    (Boolean) c.get("stop_on_eos"), (tok, delta, st) -> streamed.add(tok));
        } catch (GenerationException e) {
            if (!c.containsKey("error")) return "refused: " + e.getMessage();
            Map<String, Object> want = Json.asObject(c.get("error"), "error");
            if (!e.field.equals(want.get("field"))) return "refusal field: expected " + want.get("field") + ", found " + e.field + " (" + e.getMessage() + ")";
            if (!e.getMessage().contains((String) want.get("message_contains")))
                return "refusal message: expected it to contain '" + want.get("message_contains") + "', found '" + e.getMessage() + "'";
            if (!ple.fetches.isEmpty() || !prog.prefillCalls.isEmpty()) return "refused after fetching or prefilling";
            if (encoder != null && (!encoder.encodeCalls.isEmpty() || encoder.released > 0)) return "refused after encoding images";
            if (audioEncoder != null && (!audioEncoder.encodeCalls.isEmpty() || audioEncoder.released > 0)) return "refused after encoding audio";
            return "";
        }
        if (c.containsKey("error")) return "expected a refusal (" + c.get("error") + "), generated " + Arrays.toString(r.tokens);
        Map<String, Object> e = Json.asObject(c.get("expect"), "expect");
        Object[][] checks = {
            {"tokens", list(Golden.ints(e.get("tokens"))), list(r.tokens)},
            {"streamed tokens", list(Golden.ints(e.get("tokens"))), streamed},
            {"stop_reason", e.get("stop_reason"), stopName(r.stats.stopReason)},
            {"fetches", lists(e.get("fetches")), ple.fetches},
            {"prefill_calls", lists(e.get("prefill_calls")), prog.prefillCalls},
            {"decode_calls", lists(e.get("decode_calls")), prog.decodeCalls},
        };
        for (Object[] k : checks)
            if (!k[1].equals(k[2])) return k[0] + ": expected " + k[1] + ", found " + k[2];
        if (imageCase || audioCase) {
            int[] imageCalls = Golden.ints(e.get("encode_calls"));
            List<Integer> audioCalls = audioCase ? list(Golden.ints(e.get("audio_encode_calls"))) : List.of();
            int audioTokens = 0;
            for (int n : audioCalls) audioTokens += n;
            Object[][] softChecks = {
                {"expanded_prompt", list(Golden.ints(e.get("expanded_prompt"))), prog.prefillIds},
                {"encode_calls", list(imageCalls), encoder == null ? List.of() : encoder.encodeCalls},
                {"audio_encode_calls", audioCalls, audioEncoder == null ? List.of() : audioEncoder.encodeCalls},
                {"prefill_soft", doubleLists(e.get("prefill_soft")), prog.prefillSoft},
                {"vision encoder released once after its images", images.isEmpty() ? 0 : 1, encoder == null ? 0 : encoder.released},
                {"audio encoder released once after its clips", audio.isEmpty() ? 0 : 1, audioEncoder == null ? 0 : audioEncoder.released},
                {"stats.images", imageCalls.length, r.stats.images},
                {"stats.audioClips", audioCalls.size(), r.stats.audioClips},
                {"stats.audioTokens", audioTokens, r.stats.audioTokens},
                {"stats.promptTokens", prog.prefillIds.size(), r.stats.promptTokens},
            };
            for (Object[] k : softChecks)
                if (!k[1].equals(k[2])) return k[0] + ": expected " + k[1] + ", found " + k[2];
        }
        return "";
    }

    static Map<String, Object> load() throws Exception {
        File f = goldenFile();
        Map<String, Object> g = Json.asObject(Json.parse(new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8), f.getPath()), f.getPath());
        assertEquals(f + " format", "gemma-edge-loop-golden", g.get("format"));
        assertEquals(f + " version", 3L, g.get("version"));
        return g;
    }

    @Test
    public void everyCaseOfTheSharedSuiteHolds() throws Exception {
        Map<String, Object> g = load();
        int vocab = (int) Json.asLong(g.get("vocab_size"), "vocab_size");
        List<String> failures = new ArrayList<>();
        int n = 0, images = 0, audio = 0, audioRefusals = 0, both = 0;
        for (Map<String, Object> c : Golden.objects(g.get("cases"))) {
            String p;
            try {
                p = problem(c, vocab);
            } catch (Exception | AssertionError e) {   // a replay that ran past its recording, a logits error
                p = "failed: " + e;
            }
            if (!p.isEmpty()) failures.add(c.get("name") + ": " + p);
            n++;
            if (c.containsKey("images")) images++;
            if (c.containsKey("audio")) {
                audio++;
                if (c.containsKey("error") && "audio".equals(Json.asObject(c.get("error"), "error").get("field"))) audioRefusals++;
                if (c.containsKey("images") && c.containsKey("expect")) both++;
            }
        }
        assertTrue("loop golden cases that do not hold:\n" + String.join("\n", failures), failures.isEmpty());
        assertTrue("the suite has cases", n >= 20);
        assertTrue("the suite has image cases", images >= 10);
        assertTrue("the suite has audio cases", audio >= 15);
        assertTrue("the suite has audio refusals", audioRefusals >= 5);
        assertTrue("the suite has runs with images and audio", both >= 2);
    }

    @Test
    public void theReplayCanFail() throws Exception {
        // a wrong recording must be seen: a token, a fetch, a refusal's field
        Map<String, Object> g = load();
        int vocab = (int) Json.asLong(g.get("vocab_size"), "vocab_size");
        int seen = 0;
        for (Map<String, Object> c : Golden.objects(g.get("cases"))) {
            String name = (String) c.get("name");
            if (name.equals("greedy_eos_later")) {
                Map<String, Object> e = Json.asObject(c.get("expect"), "expect");
                List<Object> toks = Json.asArray(e.get("tokens"), "tokens");
                Object last = toks.get(toks.size() - 1);
                toks.set(toks.size() - 1, 0L);
                assertTrue("a wrong token passed", !problem(c, vocab).isEmpty());
                toks.set(toks.size() - 1, last);
                List<Object> fetches = Json.asArray(e.get("fetches"), "fetches");
                fetches.remove(fetches.size() - 1);
                assertTrue("a missing fetch passed", !problem(c, vocab).isEmpty());
                seen++;
            }
            if (name.equals("refuse_context")) {
                Json.asObject(c.get("error"), "error").put("field", "prompt");
                assertTrue("a wrong refusal field passed", !problem(c, vocab).isEmpty());
                seen++;
            }
            if (name.equals("two_images_across_chunks")) {   // an image's soft rows, its place, its PLE row
                Map<String, Object> e = Json.asObject(c.get("expect"), "expect");
                List<Object> soft = Json.asArray(Json.asArray(e.get("prefill_soft"), "prefill_soft").get(1), "prefill_soft[1]");
                Object v = soft.get(0);
                soft.set(0, 2.0);
                assertTrue("image 2's rows in image 1's place passed", !problem(c, vocab).isEmpty());
                soft.set(0, v);
                List<Object> fetch = Json.asArray(Json.asArray(e.get("fetches"), "fetches").get(0), "fetches[0]");
                Object row = fetch.get(3);
                fetch.set(3, 94L);
                assertTrue("a placeholder's own PLE row passed", !problem(c, vocab).isEmpty());
                fetch.set(3, row);
                List<Object> calls = Json.asArray(e.get("encode_calls"), "encode_calls");
                calls.set(0, 7L);
                calls.set(1, 4L);
                assertTrue("images encoded out of order passed", !problem(c, vocab).isEmpty());
                seen++;
            }
            if (name.equals("refuse_images_no_tower")) {
                Json.asObject(c.get("error"), "error").put("message_contains", "image frame ids");
                assertTrue("a wrong image refusal passed", !problem(c, vocab).isEmpty());
                seen++;
            }
            if (name.equals("two_audio_items_across_chunks")) {   // a clip's soft rows, the encode order, a clip's PLE row
                Map<String, Object> e = Json.asObject(c.get("expect"), "expect");
                List<Object> soft = Json.asArray(Json.asArray(e.get("prefill_soft"), "prefill_soft").get(3), "prefill_soft[3]");
                Object v = soft.get(2);
                assertEquals("clip 2 starts in chunk 3", -2.0, Json.asDouble(v, "soft"), 0.0);
                soft.set(2, -3.0);
                assertTrue("clip 3's rows in clip 2's place passed", !problem(c, vocab).isEmpty());
                soft.set(2, v);
                List<Object> calls = Json.asArray(e.get("audio_encode_calls"), "audio_encode_calls");
                calls.set(0, 2L);
                calls.set(1, 4L);
                assertTrue("clips encoded out of order passed", !problem(c, vocab).isEmpty());
                calls.set(0, 4L);
                calls.set(1, 2L);
                List<Object> fetch = Json.asArray(Json.asArray(e.get("fetches"), "fetches").get(0), "fetches[0]");
                Object row = fetch.get(3);
                fetch.set(3, 91L);
                assertTrue("an audio placeholder's own PLE row passed", !problem(c, vocab).isEmpty());
                fetch.set(3, row);
                assertEquals("the case holds once restored", "", problem(c, vocab));
                seen++;
            }
            if (name.equals("image_and_audio_placeholders")) {   // images are encoded before audio, each in its place
                Map<String, Object> e = Json.asObject(c.get("expect"), "expect");
                List<Object> soft = Json.asArray(Json.asArray(e.get("prefill_soft"), "prefill_soft").get(0), "prefill_soft[0]");
                soft.set(3, 1.0);
                assertTrue("an image's rows at an audio position passed", !problem(c, vocab).isEmpty());
                seen++;
            }
            if (name.equals("refuse_audio_no_tower")) {
                Json.asObject(c.get("error"), "error").put("message_contains", "audio frame ids");
                assertTrue("a wrong audio refusal passed", !problem(c, vocab).isEmpty());
                seen++;
            }
        }
        assertEquals(7, seen);
    }
}
