// Test helper: locates the golden files make_golden.py wrote and reads them.
package dev.gemmaedge.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.List;
import java.util.Map;

final class Golden {
    private Golden() {}

    /** The golden directory: system property golden.dir, else build/golden (run_tests.sh sets it). */
    static File dir() {
        File d = new File(System.getProperty("golden.dir", "build/golden"));
        if (!d.isDirectory())
            throw new IllegalStateException(d + ": expected the golden directory (run android_demo/core/run_tests.sh, "
                    + "which runs golden/make_golden.py first), found none");
        return d;
    }

    static Map<String, Object> load(String rel) throws IOException {
        File f = new File(dir(), rel);
        return Json.asObject(Json.parse(new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8), f.getPath()), f.getPath());
    }

    static byte[] unhex(String s) {
        byte[] b = new byte[s.length() / 2];
        for (int i = 0; i < b.length; i++) b[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
        return b;
    }

    static int[] ints(Object v) {
        List<Object> l = Json.asArray(v, "golden int list");
        int[] a = new int[l.size()];
        for (int i = 0; i < a.length; i++) a[i] = (int) Json.asLong(l.get(i), "golden int");
        return a;
    }

    static float[] floats(Object v) {
        List<Object> l = Json.asArray(v, "golden float list");
        float[] a = new float[l.size()];
        for (int i = 0; i < a.length; i++) a[i] = (float) Json.asDouble(l.get(i), "golden float");
        return a;
    }

    @SuppressWarnings("unchecked")
    static List<Map<String, Object>> objects(Object v) {
        return (List<Map<String, Object>>) (List<?>) Json.asArray(v, "golden object list");
    }
}
