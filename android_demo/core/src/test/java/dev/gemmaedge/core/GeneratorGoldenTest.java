// The loop over a real PLE file: a run recorded from Python's Session (eager, tiny checkpoint) must replay with its tokens, PLE fetches, prefill chunks and decode calls; bad runs are refused up front. The loop's other cases are the shared suite (LoopGoldenTest).
package dev.gemmaedge.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

public class GeneratorGoldenTest {

    /** Wraps the real PleFile and records every call. */
    static final class RecordingPle implements PleRows {
        final PleFile file;
        final List<int[]> fetches = new ArrayList<>();
        int batched;

        RecordingPle(PleFile f) { file = f; }

        // throws: PleFile's fetches check each row's CRC (PleChecksumException)
        @Override public float[] fetch(int[] ids) throws java.io.IOException { fetches.add(ids.clone()); batched++; return file.fetch(ids); }
        @Override public float[] fetchOne(int id) throws java.io.IOException { fetches.add(new int[] {id}); return file.fetchOne(id); }
        @Override public int rowFloats() { return file.rowFloats(); }
    }

    /** Replays recorded logits and checks the PLE rows it is handed against the file. */
    static final class ReplayProgram implements Program {
        final List<float[]> steps;
        final PleFile file;
        final List<int[]> prefillCalls = new ArrayList<>(), decodeCalls = new ArrayList<>();
        int next;   // prefill's logits are steps[0]; decode calls return steps[1], steps[2], ...

        ReplayProgram(List<float[]> steps, PleFile file) { this.steps = steps; this.file = file; this.next = 1; }

        private float[] step() {
            if (next >= steps.size()) fail("the loop asked for logits step " + next + ", only " + steps.size() + " were recorded");
            return steps.get(next++);
        }

        @Override
        public float[] prefill(int[] tokens, int startPos, float[] pleRows) throws java.io.IOException {
            prefillCalls.add(new int[] {startPos, tokens.length});
            assertArrayEquals("prefill rows are the slice of the batched fetch", file.fetch(tokens), pleRows, 0f);
            return steps.get(0);   // every chunk returns logits; the loop must sample from the last chunk's only
        }

        @Override
        public float[] decode(int token, int pos, float[] pleRow) throws java.io.IOException {
            decodeCalls.add(new int[] {token, pos});
            assertArrayEquals("decode row of token " + token, file.fetchOne(token), pleRow, 0f);
            return step();
        }
    }

    @Test
    public void replayedRunsMatchPython() throws Exception {
        Map<String, Object> g = Golden.load("generation/golden.json");
        int cases = 0;
        try (PleFile file = PleFile.open((String) g.get("ple_file"))) {
            for (Map<String, Object> c : Golden.objects(g.get("cases"))) {
                String name = (String) c.get("name");
                List<float[]> steps = new ArrayList<>();
                for (Map<String, Object> s : Golden.objects(c.get("steps"))) steps.add(Golden.floats(s.get("logits")));
                Map<String, Object> sc = Json.asObject(c.get("sampler"), "sampler");
                Sampler sampler = new Sampler((float) Json.asDouble(sc.get("temperature"), "t"), (int) Json.asLong(sc.get("top_k"), "k"),
                        (float) Json.asDouble(sc.get("top_p"), "p"), Json.asLong(sc.get("seed"), "seed"));
                RecordingPle ple = new RecordingPle(file);
                ReplayProgram prog = new ReplayProgram(steps, file);
                Generator gen = new Generator(prog, ple, (int) Json.asLong(c.get("vocab_size"), "vocab_size"), (int) Json.asLong(c.get("max_context"), "mc"),
                        (int) Json.asLong(c.get("prefill_chunk"), "pc"), Golden.ints(c.get("eos")), null);
                List<Integer> streamed = new ArrayList<>();
                Generator.Result r = gen.generate(Golden.ints(c.get("prompt")), (int) Json.asLong(c.get("max_new_tokens"), "mn"),
                        sampler, (tok, delta, st) -> streamed.add(tok));
                assertArrayEquals(name + " tokens", Golden.ints(c.get("expected_tokens")), r.tokens);
                assertEquals(name + " streamed tokens", r.tokens.length, streamed.size());
                List<Object> want = Json.asArray(c.get("expected_fetches"), "fetches");
                assertEquals(name + " number of PLE fetches", want.size(), ple.fetches.size());
                for (int i = 0; i < want.size(); i++) assertArrayEquals(name + " fetch " + i, Golden.ints(want.get(i)), ple.fetches.get(i));
                assertEquals(name + ": exactly one batched fetch per prompt", 1, ple.batched);
                List<Object> pc = Json.asArray(c.get("expected_prefill_calls"), "prefill calls");
                assertEquals(name + " prefill calls", pc.size(), prog.prefillCalls.size());
                for (int i = 0; i < pc.size(); i++) assertArrayEquals(name + " prefill call " + i, Golden.ints(pc.get(i)), prog.prefillCalls.get(i));
                List<Object> dc = Json.asArray(c.get("expected_decode_calls"), "decode calls");
                assertEquals(name + " decode calls", dc.size(), prog.decodeCalls.size());
                for (int i = 0; i < dc.size(); i++) assertArrayEquals(name + " decode call " + i, Golden.ints(dc.get(i)), prog.decodeCalls.get(i));
                assertTrue(name + " stop reason " + r.stats.stopReason, r.stats.stopReason != null);
                cases++;
            }
        }
        assertEquals("the run recorded from Python's Session is in the golden file", 1, cases);
    }

    /** A program that must never run: the run is refused before any work. */
    private static final Program NEVER = new Program() {
        @Override public float[] prefill(int[] t, int s, float[] r) { throw new AssertionError("must not run"); }
        @Override public float[] decode(int t, int p, float[] r) { throw new AssertionError("must not run"); }
    };

    private static void expectRefusal(Generator gen, int[] prompt, int maxNew, String... fragments) throws Exception {
        try {
            gen.generate(prompt, maxNew, Sampler.greedy(), null);
            fail("accepted prompt " + Arrays.toString(prompt) + " with max_new_tokens " + maxNew);
        } catch (IllegalArgumentException e) {
            for (String f : fragments) assertTrue(e.getMessage() + " should contain " + f, e.getMessage().contains(f));
        }
    }

    @Test
    public void runsThatDoNotFitTheContextAreRefusedUpFront() throws Exception {
        Map<String, Object> g = Golden.load("generation/golden.json");
        try (PleFile file = PleFile.open((String) g.get("ple_file"))) {
            Generator gen = new Generator(NEVER, file, file.header().vocabSize, 8, 4, new int[] {1}, null);
            // As runtime_py/session.py: prompt + max_new_tokens <= max_context, or nothing runs.
            expectRefusal(gen, new int[] {2, 5, 5, 6, 7}, 4, "context: prompt 5 + max_new_tokens 4 = 9 tokens, expected <= max_context 8");
            expectRefusal(gen, new int[8], 1, "prompt 8 + max_new_tokens 1 = 9 tokens");
            expectRefusal(gen, new int[] {2}, Integer.MAX_VALUE, "= 2147483648 tokens");   // no int overflow
            expectRefusal(gen, new int[] {2}, 0, "max_new_tokens: expected >= 1, found 0");
            expectRefusal(gen, new int[] {2}, -3, "max_new_tokens: expected >= 1, found -3");
            expectRefusal(gen, new int[0], 4, "prompt: expected at least one token id, found 0");
            assertEquals("no PLE read for a refused run", 0, file.fetchLog().size());
        }
    }

    @Test
    public void idsOutsideTheVocabularyNeverReachTheStoreOrTheProgram() throws Exception {
        Map<String, Object> g = Golden.load("generation/golden.json");
        try (PleFile file = PleFile.open((String) g.get("ple_file"))) {
            int v = file.header().vocabSize;
            Generator gen = new Generator(NEVER, file, v, 64, 4, new int[] {1}, null);
            expectRefusal(gen, new int[] {2, v, 5}, 4, "prompt token 1: expected an id in [0, " + v + ") (vocab_size), found " + v);
            expectRefusal(gen, new int[] {2, 5, -1}, 4, "prompt token 2", "found -1");
            assertEquals("no PLE read for a refused prompt", 0, file.fetchLog().size());
            try {
                new Generator(NEVER, file, v, 64, 4, new int[] {1, v + 7}, null);
                fail("accepted an eos id outside the vocabulary");
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("eos_token_ids[1]") && e.getMessage().contains("found " + (v + 7)));
            }
        }
    }

    @Test
    public void logitsOfAnotherVocabularyAreAnErrorNotAToken() throws Exception {
        Map<String, Object> g = Golden.load("generation/golden.json");
        try (PleFile file = PleFile.open((String) g.get("ple_file"))) {
            int v = file.header().vocabSize;
            for (int n : new int[] {v - 1, v + 1}) {   // a program whose vocabulary is not the manifest's
                int fetchesBefore = file.fetchLog().size();
                float[] logits = new float[n];
                logits[n - 1] = 1f;                    // argmax: the last id, V - 2 or V (outside the table)
                List<Integer> fed = new ArrayList<>();
                Program p = new Program() {
                    @Override public float[] prefill(int[] t, int s, float[] r) { return logits; }
                    @Override public float[] decode(int t, int pos, float[] r) { fed.add(t); return logits; }
                };
                Generator gen = new Generator(p, file, v, 64, 4, new int[] {1}, null);
                try {
                    gen.generate(new int[] {2, 5, 5}, 10, Sampler.greedy(), null);
                    fail("sampled from " + n + " logits with vocab_size " + v);
                } catch (IllegalStateException e) {
                    assertTrue(e.getMessage(), e.getMessage().contains("program logits at position 2: expected " + v + " floats (vocab_size), found " + n));
                }
                assertTrue("no token was fed back: " + fed, fed.isEmpty());
                assertEquals("only the prompt's batched fetch", 1, file.fetchLog().size() - fetchesBefore);
            }
        }
    }

    @Test
    public void aManifestClaimingAnotherVocabularyIsRefusedAtLoad() throws Exception {
        Manifest m = Manifest.load(new File(Golden.dir(), "bundle"));
        try (PleFile file = m.openPle()) {
            for (int n : new int[] {m.vocabSize, m.vocabSize - 1}) {   // the program's vocabulary: the manifest's, or one id fewer
                List<int[]> steps = new ArrayList<>();
                Program p = new Program() {
                    @Override public float[] prefill(int[] t, int s, float[] r) { throw new AssertionError("no prompt runs at load"); }
                    @Override public float[] decode(int t, int pos, float[] r) { steps.add(new int[] {t, pos, r.length}); return new float[n]; }
                };
                try {
                    Generator.forBundle(m, p, file, null);
                    assertEquals("a program of the manifest's vocabulary is accepted", m.vocabSize, n);
                } catch (IllegalArgumentException e) {
                    assertTrue("refused only when the vocabularies differ: " + e.getMessage(), n != m.vocabSize);
                    assertEquals(m.source + ": vocab_size: expected " + n + " (the program's logits for one step), found " + m.vocabSize, e.getMessage());
                }
                assertEquals("one probe step", 1, steps.size());
                assertArrayEquals("token 0 at position 0 with a zero PLE row", new int[] {0, 0, file.rowFloats()}, steps.get(0));
            }
            assertEquals("the probe reads no PLE row", 0, file.fetchLog().size());
        }
    }

    @Test
    public void aRunThatFillsTheContextDecodesOnlyInsideIt() throws Exception {
        Map<String, Object> g = Golden.load("generation/golden.json");
        try (PleFile file = PleFile.open((String) g.get("ple_file"))) {
            int v = file.header().vocabSize;
            float[] logits = new float[v];
            logits[7] = 1f;
            List<Integer> positions = new ArrayList<>();
            Program p = new Program() {
                @Override public float[] prefill(int[] t, int s, float[] r) { return logits; }
                @Override public float[] decode(int t, int pos, float[] r) { positions.add(pos); return logits; }
            };
            Generator gen = new Generator(p, file, v, 6, 2, new int[] {1}, null);
            Generator.Result r = gen.generate(new int[] {2, 5, 5}, 3, Sampler.greedy(), null);   // 3 + 3 = max_context
            assertEquals(Generator.StopReason.MAX_NEW_TOKENS, r.stats.stopReason);
            assertArrayEquals(new int[] {7, 7, 7}, r.tokens);
            assertEquals("decoded at positions 3 and 4; the last token is not decoded", Arrays.asList(3, 4), positions);
            assertEquals(1 + 2, file.fetchLog().size());      // one batched fetch + one per decoded token
            assertEquals(2, file.fetchLog().get(0).uniqueRows);
            assertEquals(4L * file.header().rowBytes, r.stats.pleBytesRequested);   // 2 unique prompt rows + 2 decode rows
        }
    }
}
