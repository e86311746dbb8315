// Unit tests of the tiny JSON parser: values, escapes, numbers, and errors that say where.
package dev.gemmaedge.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

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
        assertTrue(Json.parse("92233720368547758070") instanceof Double);
        assertNull(Json.parse(" null "));
    }

    @Test
    public void errorsNameSourceLineAndColumn() {
        String[] bad = {"{\"a\": }", "[1, 2", "{\"a\" 1}", "tru", "\"\\x\"", "01x", "[1,]", "{} extra", "\"a\nb\"", "1."};
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
}
