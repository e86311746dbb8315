// Tests of the sampler: greedy ties, the SplitMix64 spec, and Python's reference picks on varied logits.
package dev.gemmaedge.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.Arrays;
import java.util.SplittableRandom;
import java.util.List;
import java.util.Map;
import org.junit.Test;

public class SamplerTest {
    @Test
    public void greedyPicksLowestIndexOnTies() {
        assertEquals(1, Sampler.greedy().sample(new float[] {0f, 3f, -1f, 3f}));
        assertEquals(0, Sampler.greedy().sample(new float[] {Float.NEGATIVE_INFINITY, Float.NEGATIVE_INFINITY}));
        assertEquals(2, new Sampler(0.7f, 1, 1f, 9).sample(new float[] {0f, 1f, 5f, 5f}));   // top_k 1 is greedy
    }

    @Test
    public void rngIsSplittableRandom() {
        for (long seed : new long[] {0, 1, -7, 12345, Long.MIN_VALUE, 0x4000000000000003L}) {
            Sampler s = new Sampler(1f, 0, 1f, seed);
            SplittableRandom r = new SplittableRandom(seed);
            for (int i = 0; i < 100; i++) assertEquals(r.nextDouble(), s.nextDouble(), 0.0);
        }
    }

    @Test
    public void refusesNaN() {
        try {
            Sampler.greedy().sample(new float[] {0f, Float.NaN});
            fail("accepted NaN");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("logits[1]"));
        }
        try {
            new Sampler(1f, 0, 0f, 1);
            fail("accepted top_p 0");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("top_p"));
        }
    }

    @Test
    public void refusesToSampleFromAnInfiniteLargestLogit() {
        // Every weight would be NaN and the pick would fall to the last kept index, which no logit chose.
        float[][] bad = {{0f, Float.POSITIVE_INFINITY, 1f}, {Float.NEGATIVE_INFINITY, Float.NEGATIVE_INFINITY}};
        for (float[] logits : bad) {
            try {
                new Sampler(0.8f, 0, 1f, 3).sample(logits);
                fail("sampled from " + Arrays.toString(logits));
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("expected a finite largest logit"));
            }
        }
        assertEquals(1, Sampler.greedy().sample(bad[0]));   // greedy needs no weights: the largest is the pick
        assertEquals(2, new Sampler(0.8f, 0, 1f, 3).sample(new float[] {Float.NEGATIVE_INFINITY, -50f, 5f}));   // -inf elsewhere is a zero weight
    }

    @Test
    public void matchesPythonReferencePicks() throws Exception {
        Map<String, Object> g = Golden.load("generation/golden.json");
        int n = 0;
        for (Map<String, Object> d : Golden.objects(g.get("draws"))) {
            Map<String, Object> c = Json.asObject(d.get("sampler"), "sampler");
            Sampler s = new Sampler((float) Json.asDouble(c.get("temperature"), "t"), (int) Json.asLong(c.get("top_k"), "k"),
                    (float) Json.asDouble(c.get("top_p"), "p"), Json.asLong(c.get("seed"), "seed"));
            float[] logits = Golden.floats(d.get("logits"));
            List<Object> picks = Json.asArray(d.get("picks"), "picks");
            for (int i = 0; i < picks.size(); i++)
                assertEquals("draw " + n + " pick " + i + " sampler " + c, Json.asLong(picks.get(i), "pick"), s.sample(logits));
            n++;
        }
        assertTrue(n >= 50);
    }
}
