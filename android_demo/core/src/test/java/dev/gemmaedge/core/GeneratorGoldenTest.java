// Golden test of the generation loop: replayed logits must give Python's tokens, PLE fetches, prefill chunks and decode calls.
package dev.gemmaedge.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

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

        @Override public float[] fetch(int[] ids) { fetches.add(ids.clone()); batched++; return file.fetch(ids); }
        @Override public float[] fetchOne(int id) { fetches.add(new int[] {id}); return file.fetchOne(id); }
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
        public float[] prefill(int[] tokens, int startPos, float[] pleRows) {
            prefillCalls.add(new int[] {startPos, tokens.length});
            assertArrayEquals("prefill rows are the slice of the batched fetch", file.fetch(tokens), pleRows, 0f);
            return steps.get(0);   // every chunk returns logits; the loop must sample from the last chunk's only
        }

        @Override
        public float[] decode(int token, int pos, float[] pleRow) {
            decodeCalls.add(new int[] {token, pos});
            assertArrayEquals("decode row of token " + token, file.fetchOne(token), pleRow, 0f);
            return step();
        }
    }

    @Test
    public void replayedRunsMatchPython() throws Exception {
        Map<String, Object> g = Golden.load("generation/golden.json");
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
                Generator gen = new Generator(prog, ple, (int) Json.asLong(c.get("max_context"), "mc"),
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
            }
        }
    }

    @Test
    public void promptThatDoesNotFitTheContextIsRefused() throws Exception {
        Map<String, Object> g = Golden.load("generation/golden.json");
        try (PleFile file = PleFile.open((String) g.get("ple_file"))) {
            Program never = new Program() {
                @Override public float[] prefill(int[] t, int s, float[] r) { throw new AssertionError("must not run"); }
                @Override public float[] decode(int t, int p, float[] r) { throw new AssertionError("must not run"); }
            };
            Generator gen = new Generator(never, file, 8, 4, new int[] {1}, null);
            try {
                gen.generate(new int[8], 4, Sampler.greedy(), null);
                fail("accepted an 8-token prompt with max_context 8");
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("max_context") && e.getMessage().contains("found 8 tokens"));
            }
            assertEquals("no PLE read for a refused prompt", 0, file.fetchLog().size());
        }
    }

    @Test
    public void stopsAtTheContextLimitWithoutFetchingTheLastToken() throws Exception {
        Map<String, Object> g = Golden.load("generation/golden.json");
        try (PleFile file = PleFile.open((String) g.get("ple_file"))) {
            int v = file.header().vocabSize;
            float[] logits = new float[v];
            logits[7] = 1f;
            Program p = new Program() {
                @Override public float[] prefill(int[] t, int s, float[] r) { return logits; }
                @Override public float[] decode(int t, int pos, float[] r) { assertTrue("pos " + pos, pos < 6); return logits; }
            };
            Generator gen = new Generator(p, file, 6, 2, new int[] {1}, null);
            Generator.Result r = gen.generate(new int[] {2, 5, 5}, 100, Sampler.greedy(), null);
            assertEquals(Generator.StopReason.MAX_CONTEXT, r.stats.stopReason);
            assertEquals(4, r.tokens.length);                 // decoded at positions 3, 4, 5; the 4th token has no slot
            assertEquals(1 + 3, file.fetchLog().size());      // one batched fetch + one per decoded token
            assertEquals(2, file.fetchLog().get(0).uniqueRows);
            assertEquals(5L * file.header().rowBytes, r.stats.pleBytesRequested);   // 2 unique prompt rows + 3 decode rows
        }
    }
}
