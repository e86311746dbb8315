// Cross-language golden test of the PLE reader: Java must return Python's rows, bytes and I/O counts, and refuse the same files.
package dev.gemmaedge.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.Map;
import org.junit.Test;

public class PleFileGoldenTest {

    @Test
    public void fetchesMatchPythonBitForBit() throws Exception {
        Map<String, Object> g = Golden.load("ple/golden.json");
        int checked = 0;
        for (Map<String, Object> f : Golden.objects(g.get("files"))) {
            String name = (String) f.get("name");
            try (PleFile p = PleFile.open((String) f.get("path"))) {
                PleFile.Header h = p.header();
                assertEquals(name, f.get("identity"), h.identityHex());
                assertEquals(name, f.get("model_hash"), h.modelHashHex());
                assertEquals(name, f.get("dtype"), h.dtypeName());
                assertEquals(name, ((Number) f.get("row_bytes")).intValue(), h.rowBytes);
                assertEquals(name, ((Number) f.get("rows_per_group")).intValue(), h.rowsPerGroup);
                assertEquals(name, ((Number) f.get("num_blocks")).intValue(), h.numBlocks);
                assertEquals(name + " row_crc (flags bit 0)", f.get("row_crc"), h.rowCrc());
                assertEquals(name, (float) Json.asDouble(f.get("embed_scale"), "embed_scale"), h.embedScale, 0f);
                p.verify();
                int lp = h.rowFloats();
                for (Map<String, Object> ft : Golden.objects(f.get("fetches"))) {
                    int[] ids = Golden.ints(ft.get("ids"));
                    String what = name + " ids " + Arrays.toString(ids);
                    int before = p.fetchLog().size();
                    float[] rows = p.fetch(ids);
                    assertEquals(what + ": one fetch", before + 1, p.fetchLog().size());
                    FetchStats st = p.lastFetch();
                    assertEquals(what + " unique_rows", Json.asLong(ft.get("unique_rows"), "u"), st.uniqueRows);
                    assertEquals(what + " bytes_requested", Json.asLong(ft.get("bytes_requested"), "b"), st.bytesRequested);
                    assertEquals(what + " pages_touched", Json.asLong(ft.get("pages_touched"), "p"), st.pagesTouched);
                    assertEquals(what + " tokens", ids.length, st.tokens);
                    byte[] want = Golden.unhex((String) ft.get("floats_hex"));
                    ByteBuffer got = ByteBuffer.allocate(rows.length * 4).order(ByteOrder.LITTLE_ENDIAN);
                    for (float x : rows) got.putInt(Float.floatToRawIntBits(x));
                    assertArrayEquals(what + " dequantized floats (bit-identical)", want, got.array());
                    assertArrayEquals(what + " stored bytes", Golden.unhex((String) ft.get("stored_hex")), p.fetchStored(ids));
                    assertEquals(what + " stored fetch pages", Json.asLong(ft.get("pages_touched"), "p"), p.lastFetch().pagesTouched);
                    for (int t = 0; t < ids.length; t++)
                        assertArrayEquals(what + " fetchOne(" + ids[t] + ")", Arrays.copyOfRange(rows, t * lp, (t + 1) * lp), p.fetchOne(ids[t]), 0f);
                    checked++;
                }
            }
        }
        assertTrue("golden fetches checked: " + checked, checked >= 50);
    }

    @Test
    public void refusesTheFilesPythonRefuses() throws Exception {
        Map<String, Object> g = Golden.load("ple/golden.json");
        int n = 0;
        for (Map<String, Object> c : Golden.objects(g.get("corrupt"))) {
            String name = (String) c.get("name"), path = (String) c.get("path"), stage = (String) c.get("stage");
            assertEquals(name + ": Python's error class", "PleFormatError", c.get("error"));
            String field = (String) c.get("field");
            PleFile p = null;
            String reached = "open";
            try {
                p = PleFile.open(path);
                if (stage.equals("open")) fail(name + ": Python refused it at open (" + c.get("message") + "), Java opened it");
                if (c.get("fetch_ids") != null) {
                    reached = "fetch";
                    p.fetch(Golden.ints(c.get("fetch_ids")));
                    fail(name + ": Python's fetch refused it (" + c.get("message") + "), Java's fetch returned rows");
                }
                reached = "verify";
                p.verify();
                fail(name + ": Python's verify refused it (" + c.get("message") + "), Java's verify passed");
            } catch (PleFormatException e) {
                assertEquals(name + ": stage (Java: " + e.getMessage() + ")", stage, reached);
                if (!reached.equals("open"))
                    assertTrue(name + ": a damaged row or block is a PleChecksumException", e instanceof PleChecksumException);
                assertEquals(name + ": field (Java: " + e.getMessage() + ")", field, e.field());
                assertEquals(name, path, e.file());
                assertTrue(name + ": message names the file: " + e.getMessage(), e.getMessage().startsWith(path + ": "));
                assertTrue(name + ": message says expected/found: " + e.getMessage(), e.getMessage().contains("expected") && e.getMessage().contains("found"));
            } finally {
                if (p != null) p.close();
            }
            n++;
        }
        assertTrue(n >= 10);
    }

    @Test
    public void rejectsOutOfRangeIdsAndMissingFiles() throws Exception {
        Map<String, Object> g = Golden.load("ple/golden.json");
        String path = (String) Golden.objects(g.get("files")).get(0).get("path");
        try (PleFile p = PleFile.open(path)) {
            try {
                p.fetch(new int[] {0, p.header().vocabSize});
                fail("accepted id == vocab_size");
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("position 1") && e.getMessage().contains(path));
            }
            float[] none = p.fetch(new int[0]);
            assertEquals(0, none.length);
            assertEquals(0, p.lastFetch().pagesTouched);
        }
        try {
            PleFile.open(path + ".missing");
            fail("opened a missing file");
        } catch (PleFormatException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("no such file"));
        }
    }
}
