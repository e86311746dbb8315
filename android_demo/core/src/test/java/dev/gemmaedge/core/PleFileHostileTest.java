// Hostile-input tests of the PLE reader: non-regular files, a closed reader, close racing fetches, a bounded fetch log.
package dev.gemmaedge.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;
import static org.junit.Assume.assumeTrue;

import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.Test;

public class PleFileHostileTest {

    private static String goodFile() throws Exception {
        Map<String, Object> g = Golden.load("ple/golden.json");
        return (String) Golden.objects(g.get("files")).get(0).get("path");
    }

    private static void expectRefusedByType(String path, String kind) {
        try {
            PleFile.open(path).close();
            fail(path + ": opened " + kind);
        } catch (PleFormatException e) {
            assertEquals(e.getMessage(), "file type", e.field());
            assertTrue(e.getMessage(), e.getMessage().startsWith(path + ": file type: expected a regular file, found " + kind));
        } catch (Exception e) {
            throw new AssertionError(path + ": expected a PleFormatException naming the file type, found " + e, e);
        }
    }

    // The timeout turns a reader that waits on the FIFO forever into a failure instead of a stuck build.
    @Test(timeout = 60_000)
    public void aFifoIsRefusedWithoutWaitingForAWriter() throws Exception {
        Path dir = Files.createTempDirectory("ple-fifo");
        File fifo = new File(dir.toFile(), "model.ple");
        Process p;
        try {
            p = new ProcessBuilder("mkfifo", fifo.getPath()).inheritIO().start();
        } catch (java.io.IOException e) {
            assumeTrue("mkfifo is not available here: " + e.getMessage(), false);
            return;
        }
        assumeTrue("mkfifo failed", p.waitFor() == 0);
        try {
            expectRefusedByType(fifo.getPath(), "a FIFO (named pipe)");
        } finally {
            Files.delete(fifo.toPath());
            Files.delete(dir);
        }
    }

    @Test
    public void aDirectoryOrDeviceIsRefusedByType() throws Exception {
        Path dir = Files.createTempDirectory("ple-dir");
        try {
            expectRefusedByType(dir.toString(), "a directory");
        } finally {
            Files.delete(dir);
        }
        if (new File("/dev/null").exists()) expectRefusedByType("/dev/null", "a character device");
    }

    @Test
    public void aClosedReaderRefusesEveryCall() throws Exception {
        PleFile p = PleFile.open(goodFile());
        p.fetch(new int[] {1, 2});
        p.close();
        p.close();   // twice is fine
        assertTrue(p.isClosed());
        List<Runnable> calls = new ArrayList<>();
        calls.add(() -> { try { p.fetch(new int[] {1}); } catch (java.io.IOException e) { throw new AssertionError(e); } });
        calls.add(() -> { try { p.fetchOne(1); } catch (java.io.IOException e) { throw new AssertionError(e); } });
        calls.add(() -> { try { p.fetchStored(new int[] {1}); } catch (java.io.IOException e) { throw new AssertionError(e); } });
        calls.add(() -> { try { p.verify(); } catch (java.io.IOException e) { throw new AssertionError(e); } });
        for (Runnable call : calls) {
            try {
                call.run();
                fail("a closed reader answered");
            } catch (IllegalStateException e) {
                assertEquals(p.path() + ": reader is closed", e.getMessage());
            }
        }
    }

    @Test
    public void closeWaitsForRunningFetchesAndLaterOnesAreRefused() throws Exception {
        String path = goodFile();
        int[] ids = {0, 5, 17, 2999, 5};
        float[] want;
        try (PleFile ref = PleFile.open(path)) {
            want = ref.fetch(ids);
        }
        PleFile p = PleFile.open(path);
        int threads = 4;
        CountDownLatch started = new CountDownLatch(threads);
        AtomicInteger ok = new AtomicInteger(), refused = new AtomicInteger();
        AtomicReference<Throwable> wrong = new AtomicReference<>();
        List<Thread> pool = new ArrayList<>();
        for (int k = 0; k < threads; k++) {
            Thread t = new Thread(() -> {
                started.countDown();
                while (true) {
                    try {
                        float[] got = p.fetch(ids);
                        assertArrayEquals("a fetch racing close returns the right rows or nothing", want, got, 0f);
                        ok.incrementAndGet();
                    } catch (IllegalStateException e) {
                        if (!e.getMessage().endsWith("reader is closed")) wrong.compareAndSet(null, e);
                        refused.incrementAndGet();
                        return;
                    } catch (Throwable e) {
                        wrong.compareAndSet(null, e);
                        return;
                    }
                }
            });
            pool.add(t);
            t.start();
        }
        started.await();
        while (ok.get() < 20 && wrong.get() == null) Thread.yield();   // fetches are running
        p.close();
        for (Thread t : pool) t.join();
        if (wrong.get() != null) throw new AssertionError("a fetch racing close failed otherwise", wrong.get());
        assertEquals("every thread ends on the closed reader's error", threads, refused.get());
    }

    @Test
    public void theFetchLogIsBoundedAndTheTotalsStayExact() throws Exception {
        try (PleFile p = PleFile.open(goodFile())) {
            int n = PleFile.FETCH_LOG_MAX + 100;
            for (int i = 0; i < n; i++) p.fetchOne(i % p.header().vocabSize);
            assertEquals(PleFile.FETCH_LOG_MAX, p.fetchLog().size());
            assertEquals((long) n * p.header().rowBytes, p.totalBytesRequested());
            assertEquals(1, p.lastFetch().uniqueRows);
        }
    }
}
