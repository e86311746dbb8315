// Unit tests of the tiny JSON parser: values, escapes, numbers, and errors that say where.
package dev.gemmaedge.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

public class JsonTest {
    @Test
    public void parsesNestedValues() {
        Map<String, Object> m = Json.asObject(Json.parse("{\"a\": [1, -2, 3.5, 1e3, true, false, null], \"b\": {\"c\": \"d\"}, \"e\": []}"), "t");
        List<Object> a = Json.asArray(m.get("a"), "a");
        assertEquals(Arrays.asList(1L, -2L, 3.5, 1000.0, true, false, null), a);
        assertEquals("d", Json.asObject(m.get("b"), "b").get("c"));
        assertTrue(Json.asArray(m.get("e"), "e").isEmpty());
        assertEquals(Arrays.asList("a", "b", "e"), Arrays.asList(m.keySet().toArray()));
    }

    @Test
    public void decodesEscapesAndSurrogatePairs() {
        assertEquals("\"\\/\b\f\n\r\t\u2581\uD83D\uDE00", Json.parse("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u2581\\ud83d\\ude00\""));
        assertEquals("▁raw ünïcode 😀", Json.parse("\"▁raw ünïcode 😀\""));
    }

    @Test
    public void float32ValuesRoundTripThroughDouble() {
        float f = 0.1f;
        assertEquals(Float.floatToIntBits(f), Float.floatToIntBits((float) Json.asDouble(Json.parse(Double.toString(f)), "f")));
        assertEquals(-0.0, (Double) Json.parse("-0.0"), 0.0);
        assertEquals(Long.MAX_VALUE, Json.parse("9223372036854775807"));
        assertTrue(Json.parse("92233720368547758070") instanceof BigInteger);   // an integer, too large for a long
        assertNull(Json.parse(" null "));
    }

    @Test
    public void errorsNameSourceLineAndColumn() {
        String[] bad = {"{\"a\": }", "[1, 2", "{\"a\" 1}", "tru", "\"\\x\"", "01x", "[1,]", "{} extra", "\"a\nb\"", "1.",
                        "1e999", "-1e400", "\"\\u00\u0664\u0661\"", "-", "[", "{", "\"", "\"\\", "\"\\u12", "\uFEFF{}", "nul"};
        for (String b : bad) {
            try {
                Json.parse(b, "bad.json");
                fail("accepted " + b);
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().startsWith("bad.json: invalid JSON at line "));
                assertTrue(e.getMessage(), e.getMessage().contains("expected"));
            }
        }
    }

    @Test
    public void integersOutOfRangeAreNamedAsSuch() {
        Object big = Json.parse("9223372036854775808");   // 2^63
        try {
            Json.asLong(big, "m.json: eos_token_ids[0]");
            fail("read 2^63 as a long");
        } catch (IllegalArgumentException e) {
            assertEquals("m.json: eos_token_ids[0]: expected an integer in [-2^63, 2^63), found 9223372036854775808", e.getMessage());
        }
        assertEquals(Long.MIN_VALUE, Json.asLong(Json.parse("-9223372036854775808"), "x"));
        try {
            Json.asInt(Json.parse("4294967297"), "m.json: max_context", 1, Integer.MAX_VALUE);   // 2^32 + 1: not 1
            fail("read 2^32 + 1 as an int");
        } catch (IllegalArgumentException e) {
            assertEquals("m.json: max_context: expected an integer in [1, 2147483647], found 4294967297", e.getMessage());
        }
        try {
            Json.asLong(Json.parse("1.0"), "m.json: vocab_size");
            fail("read 1.0 as an integer");
        } catch (IllegalArgumentException e) {
            assertEquals("m.json: vocab_size: expected an integer, found number 1.0", e.getMessage());
        }
    }

    @Test
    public void invalidUtf8IsRefusedWithItsOffset() {
        byte[] text = "{\"a\": \"x\"}".getBytes(StandardCharsets.UTF_8);
        text[8] = (byte) 0xff;   // inside the string value
        try {
            Json.decodeUtf8(text, "m.json");
            fail("decoded an invalid UTF-8 byte");
        } catch (IllegalArgumentException e) {
            assertEquals("m.json: expected UTF-8 text, found an invalid byte sequence at byte offset 8", e.getMessage());
        }
        assertEquals("é😀", Json.decodeUtf8("é😀".getBytes(StandardCharsets.UTF_8), "m.json"));
    }
}
