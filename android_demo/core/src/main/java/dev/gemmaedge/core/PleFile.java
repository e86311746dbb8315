// Reader of the `.ple` per-layer-embedding file (ple_store/FORMAT.md): header checks, read-only mmap, batched fetch.
package dev.gemmaedge.core;

import java.io.Closeable;
import java.io.File;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.Buffer;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.attribute.BasicFileAttributes;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import java.util.zip.CRC32;

/**
 * The Java twin of Python's {@code gemma_edge.ple_store} reader. {@link #open} refuses anything but a
 * regular file, validates every header field FORMAT.md defines, recomputes the identity (SHA-256 of
 * header[0:144] + checksum table) and maps the file read-only; {@link #fetch} reads each distinct token's
 * row once (one batched fetch per prompt), checks it (the CRC-32 stored after it, or in a minor-0 file its
 * block's CRC the first time a fetch touches the block) and returns rows in prompt order, dequantized ×
 * embed_scale. Accounting ({@link FetchStats}) follows FORMAT.md's "I/O accounting" section exactly.
 * Fetches may run from several threads; {@link #close} waits for running ones, later calls throw
 * IllegalStateException.
 */
public final class PleFile implements PleRows, Closeable {

    // ------------------------------------------------------------------ format constants (FORMAT.md)
    public static final byte[] MAGIC = {'G', 'E', 'M', 'M', 'A', 'P', 'L', 'E'};
    public static final int VERSION_MAJOR = 1;
    public static final int HEADER_BYTES = 4096;
    public static final int PAGE_SIZE = 4096;
    public static final int DTYPE_FP32 = 0, DTYPE_BF16 = 1, DTYPE_INT8 = 2, DTYPE_INT4 = 3;
    public static final String[] DTYPE_NAMES = {"fp32", "bf16", "int8", "int4"};
    public static final int QUANT_NONE = 0, QUANT_SYM_ABSMAX = 1;
    static final int IDENTITY_PREFIX = 144;   // identity = sha256(header[0:144] + checksum table)
    static final int CRC_COVERED = 176;       // header_crc32 covers header[0:176)
    public static final int FLAG_ROW_CRC = 1;  // flags bit 0 (minor 1): a CRC-32 after every row
    static final int ROW_CRC_BYTES = 4;
    static final int FETCH_LOG_MAX = 1024;    // fetchLog keeps this many recent fetches; the totals count all

    /** The parsed header; field names are FORMAT.md's. */
    public static final class Header {
        public int versionMajor, versionMinor, headerBytes;
        public int vocabSize, numLayers, pleDim, dtype, quantScheme, quantGroupSize;
        public int rowBytes, rowStride, rowsPerGroup, groupBytes, pageSize, blockGroups, numBlocks, flags;
        public long dataOffset, dataBytes, checksumOffset, fileBytes;
        public float embedScale;
        public byte[] modelHash = new byte[32];
        public byte[] identity = new byte[32];
        public long headerCrc32;

        public long numGroups() { return ((long) vocabSize + rowsPerGroup - 1) / rowsPerGroup; }
        public String dtypeName() { return DTYPE_NAMES[dtype]; }
        public int rowFloats() { return numLayers * pleDim; }
        /** Whether each row is followed by the CRC-32 of its payload (flags bit 0). */
        public boolean rowCrc() { return (flags & FLAG_ROW_CRC) != 0; }
        /** What a fetch reads for one row: the payload and, with ROW_CRC, its CRC. */
        public int recordBytes() { return rowBytes + (rowCrc() ? ROW_CRC_BYTES : 0); }
        public String identityHex() { return hex(identity); }
        public String modelHashHex() { return hex(modelHash); }

        /** Byte offset of row t: data_offset + (t // rows_per_group) * group_bytes + (t % rows_per_group) * row_stride. */
        public long rowOffset(int t) {
            return dataOffset + (long) (t / rowsPerGroup) * groupBytes + (long) (t % rowsPerGroup) * rowStride;
        }
    }

    /** Payload bytes of one row for the given layout (scales first, then values), or -1 if dtype is unknown. */
    public static long expectedRowBytes(int dtype, long lp, int quantGroupSize) {
        switch (dtype) {
            case DTYPE_FP32: return lp * 4;
            case DTYPE_BF16: return lp * 2;
            case DTYPE_INT8: return (lp / quantGroupSize) * 4 + lp;
            case DTYPE_INT4: return (lp / quantGroupSize) * 4 + (lp + 1) / 2;
            default: return -1;
        }
    }

    private final String path;
    private final Header h;
    private final RandomAccessFile raf;
    private final MappedByteBuffer[] maps;  // windows of whole groups, so no row straddles two windows
    private final long windowBytes;
    private final byte[] head;
    private final byte[] checksumTable;
    private final boolean[] blockOk;   // minor-0 files: blocks a fetch has checked (guarded by this)
    private final ArrayDeque<FetchStats> fetchLog = new ArrayDeque<>();   // the last FETCH_LOG_MAX (guarded by this)
    private long totalBytesRequested, totalPagesTouched;
    private final ReentrantReadWriteLock lifecycle = new ReentrantReadWriteLock();  // fetches read, close writes
    private boolean closed;   // guarded by lifecycle

    private PleFile(String path, Header h, RandomAccessFile raf, MappedByteBuffer[] maps, long windowBytes, byte[] head, byte[] table) {
        this.head = head;
        this.path = path;
        this.h = h;
        this.raf = raf;
        this.maps = maps;
        this.windowBytes = windowBytes;
        this.checksumTable = table;
        this.blockOk = h.rowCrc() ? null : new boolean[h.numBlocks];
    }

    // ------------------------------------------------------------------ open + validation

    /** Opens and validates {@code path}; throws {@link PleFormatException} naming the failing field. */
    public static PleFile open(String path) throws IOException {
        File f = new File(path);
        requireRegularFile(path);
        // Java cannot open without blocking (O_NONBLOCK) nor stat what it opened: the type is checked just
        // before, which leaves a race with whoever replaces the file in between (Python and C++ have none).
        RandomAccessFile raf = new RandomAccessFile(f, "r");
        try {
            long size = raf.length();
            if (size < HEADER_BYTES)
                throw new PleFormatException(path, "file size (truncated header)", "at least " + HEADER_BYTES + " bytes", size + " bytes");
            byte[] head = new byte[HEADER_BYTES];
            raf.readFully(head);
            Header h = parseHeader(path, head, size);
            byte[] table = new byte[4 * h.numBlocks];
            raf.seek(h.checksumOffset);
            raf.readFully(table);
            checkIdentity(path, h, head, table);
            FileChannel ch = raf.getChannel();
            // Map the data in windows of whole groups (a MappedByteBuffer holds < 2 GiB).
            long groupsPerWindow = Math.max(1, (1L << 30) / h.groupBytes);
            long windowBytes = groupsPerWindow * h.groupBytes;
            int nWindows = (int) ((h.dataBytes + windowBytes - 1) / windowBytes);
            MappedByteBuffer[] maps = new MappedByteBuffer[nWindows];
            for (int w = 0; w < nWindows; w++) {
                long start = h.dataOffset + w * windowBytes;
                long len = Math.min(windowBytes, h.dataBytes - w * windowBytes);
                maps[w] = ch.map(FileChannel.MapMode.READ_ONLY, start, len);
            }
            return new PleFile(path, h, raf, maps, windowBytes, head, table);
        } catch (IOException | RuntimeException e) {
            raf.close();
            throw e;
        }
    }

    /** A FIFO would block the open forever, a directory or device is no .ple: refuse them by type, by name. */
    static void requireRegularFile(String path) throws PleFormatException {
        Path p = Paths.get(path);
        BasicFileAttributes a;
        try {
            a = Files.readAttributes(p, BasicFileAttributes.class);   // follows symlinks, as opening does
        } catch (NoSuchFileException e) {
            throw new PleFormatException(path, "file", "an existing regular file", "no such file");
        } catch (IOException e) {
            throw new PleFormatException(path, "file", "a readable regular file", "cannot stat (" + e.getMessage() + ")");
        }
        if (a.isRegularFile()) return;
        String kind = a.isDirectory() ? "a directory" : a.isSymbolicLink() ? "a dangling symbolic link" : "a FIFO, socket or device";
        try {   // the precise kind where the platform tells it (Linux, Android: the "unix" view)
            int mode = (Integer) Files.getAttribute(p, "unix:mode");
            int type = mode & 0170000;
            if (type == 0010000) kind = "a FIFO (named pipe)";
            else if (type == 0140000) kind = "a socket";
            else if (type == 0020000) kind = "a character device";
            else if (type == 0060000) kind = "a block device";
        } catch (IOException | RuntimeException e) {
            // no "unix" view here: the generic kind above stands
        }
        throw new PleFormatException(path, "file type", "a regular file", kind);
    }

    static Header parseHeader(String path, byte[] head, long fileSize) throws PleFormatException {
        ByteBuffer b = ByteBuffer.wrap(head).order(ByteOrder.LITTLE_ENDIAN);
        byte[] magic = Arrays.copyOfRange(head, 0, 8);
        if (!Arrays.equals(magic, MAGIC))
            throw new PleFormatException(path, "magic", "b\"GEMMAPLE\"", printable(magic) + " (not a .ple file)");
        Header h = new Header();
        h.versionMajor = u16(b, 8);
        h.versionMinor = u16(b, 10);
        if (h.versionMajor != VERSION_MAJOR)
            throw new PleFormatException(path, "version_major", String.valueOf(VERSION_MAJOR),
                    h.versionMajor + " (written by an incompatible ple_store)");
        h.headerCrc32 = b.getInt(176) & 0xFFFFFFFFL;
        CRC32 crc = new CRC32();
        crc.update(head, 0, CRC_COVERED);
        if (crc.getValue() != h.headerCrc32)
            throw new PleFormatException(path, "header_crc32", String.format("0x%08x (stored)", h.headerCrc32),
                    String.format("0x%08x (computed over header bytes [0, 176); the header is damaged)", crc.getValue()));
        h.headerBytes = i32(b, 12);
        h.vocabSize = i32(b, 16);
        h.numLayers = i32(b, 20);
        h.pleDim = i32(b, 24);
        h.dtype = i32(b, 28);
        h.quantScheme = i32(b, 32);
        h.quantGroupSize = i32(b, 36);
        h.rowBytes = i32(b, 40);
        h.rowStride = i32(b, 44);
        h.rowsPerGroup = i32(b, 48);
        h.groupBytes = i32(b, 52);
        h.pageSize = i32(b, 56);
        h.blockGroups = i32(b, 60);
        h.numBlocks = i32(b, 64);
        h.flags = b.getInt(68);   // bit 0 ROW_CRC; a reader ignores bits it does not know
        h.dataOffset = b.getLong(72);
        h.dataBytes = b.getLong(80);
        h.checksumOffset = b.getLong(88);
        h.fileBytes = b.getLong(96);
        h.embedScale = b.getFloat(104);
        System.arraycopy(head, 112, h.modelHash, 0, 32);
        System.arraycopy(head, 144, h.identity, 0, 32);

        // Same checks, same order as Python's validate_header (ple_store/reader.py).
        check(path, "header_bytes", HEADER_BYTES, h.headerBytes);
        check(path, "page_size", PAGE_SIZE, h.pageSize);
        check(path, "data_offset", HEADER_BYTES, h.dataOffset);
        if (h.vocabSize <= 0) bad(path, "vocab_size", "> 0", u32(b, 16));
        if (h.numLayers <= 0) bad(path, "num_layers", "> 0", u32(b, 20));
        if (h.pleDim <= 0) bad(path, "ple_dim", "> 0", u32(b, 24));
        if (h.rowsPerGroup <= 0) bad(path, "rows_per_group", "> 0", u32(b, 48));
        if (h.blockGroups <= 0) bad(path, "block_groups", "> 0", u32(b, 60));
        if (h.dtype < 0 || h.dtype > 3) bad(path, "dtype", "0 fp32, 1 bf16, 2 int8 or 3 int4", u32(b, 28));
        long lp = (long) h.numLayers * h.pleDim;
        boolean quantized = h.dtype == DTYPE_INT8 || h.dtype == DTYPE_INT4;
        if (quantized) {
            if (h.quantScheme != QUANT_SYM_ABSMAX)
                bad(path, "quant_scheme (dtype " + DTYPE_NAMES[h.dtype] + ")", QUANT_SYM_ABSMAX + " (symmetric absmax)", u32(b, 32));
            if (h.quantGroupSize <= 0 || lp % h.quantGroupSize != 0)
                bad(path, "quant_group_size", "a divisor of L·P = " + lp, u32(b, 36));
        } else {
            if (h.quantScheme != QUANT_NONE)
                bad(path, "quant_scheme (dtype " + DTYPE_NAMES[h.dtype] + ")", QUANT_NONE + " (none)", u32(b, 32));
            if (h.quantGroupSize != 0) bad(path, "quant_group_size (quant_scheme 0)", "0", u32(b, 36));
        }
        long rowBytes = expectedRowBytes(h.dtype, lp, h.quantGroupSize);
        if (h.rowBytes != rowBytes) bad(path, "row_bytes", rowBytes + " for " + DTYPE_NAMES[h.dtype] + " L=" + h.numLayers + " P=" + h.pleDim, u32(b, 40));
        String record = "row_bytes " + h.rowBytes + (h.rowCrc() ? " + 4 (flags ROW_CRC)" : "");
        if (h.rowStride < h.recordBytes() || h.rowStride % 16 != 0)
            bad(path, "row_stride", "a multiple of 16 ≥ " + record, u32(b, 44));
        long lastRowEnd = (long) (h.rowsPerGroup - 1) * h.rowStride + h.recordBytes();
        if (h.groupBytes < 0 || h.groupBytes % PAGE_SIZE != 0 || h.groupBytes < lastRowEnd)
            bad(path, "group_bytes", "a multiple of " + PAGE_SIZE + " >= " + lastRowEnd + " (rows_per_group·stride)", u32(b, 52));
        long numGroups = h.numGroups();
        check(path, "num_blocks", (numGroups + h.blockGroups - 1) / h.blockGroups, u32(b, 64),
                " = ceil(num_groups " + numGroups + " / block_groups " + h.blockGroups + ")");
        check(path, "data_bytes", numGroups * h.groupBytes, h.dataBytes, " = num_groups × group_bytes");
        check(path, "checksum_offset", h.dataOffset + numGroups * h.groupBytes, h.checksumOffset, " = data_offset + data_bytes");
        long fileBytes = h.checksumOffset + (4L * h.numBlocks + PAGE_SIZE - 1) / PAGE_SIZE * PAGE_SIZE;
        check(path, "file_bytes", fileBytes, h.fileBytes, " = checksum_offset + checksum table padded to a page");
        if (fileSize != h.fileBytes)
            throw new PleFormatException(path, "file size (truncated or trailing bytes)", h.fileBytes + " bytes (header file_bytes)",
                    fileSize + " bytes");
        if (!Float.isFinite(h.embedScale)) bad(path, "embed_scale", "a finite float", h.embedScale);
        return h;
    }

    private static void check(String path, String field, long expected, long found) throws PleFormatException {
        check(path, field, expected, found, "");
    }

    private static void check(String path, String field, long expected, long found, String why) throws PleFormatException {
        if (expected != found) throw new PleFormatException(path, field, expected + why, String.valueOf(found));
    }

    private static void bad(String path, String field, String expected, Object found) throws PleFormatException {
        throw new PleFormatException(path, field, expected, String.valueOf(found));
    }

    private static int u16(ByteBuffer b, int off) { return b.getShort(off) & 0xFFFF; }

    private static long u32(ByteBuffer b, int off) { return b.getInt(off) & 0xFFFFFFFFL; }

    /** A u32 field as int; values >= 2^31 (no real layout needs them) become -1 and fail the checks below. */
    private static int i32(ByteBuffer b, int off) {
        long v = b.getInt(off) & 0xFFFFFFFFL;
        return v > Integer.MAX_VALUE ? -1 : (int) v;
    }

    static byte[] computeIdentity(byte[] head, byte[] table) {
        MessageDigest md = sha256();
        md.update(head, 0, IDENTITY_PREFIX);
        md.update(table);
        return md.digest();
    }

    static MessageDigest sha256() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is missing from this JVM", e);
        }
    }

    static String hex(byte[] b) {
        StringBuilder s = new StringBuilder(b.length * 2);
        for (byte x : b) s.append(String.format("%02x", x & 0xFF));
        return s.toString();
    }

    private static String printable(byte[] b) {
        StringBuilder s = new StringBuilder("b\"");
        for (byte x : b) {
            int c = x & 0xFF;
            if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') s.append((char) c); else s.append(String.format("\\x%02x", c));
        }
        return s.append('"').toString();
    }

    // ------------------------------------------------------------------ accessors

    public Header header() { return h; }
    public String path() { return path; }
    public String identityHex() { return h.identityHex(); }
    @Override public int rowFloats() { return h.rowFloats(); }

    /** The most recent fetches (at most FETCH_LOG_MAX), oldest first (Python's {@code fetch_log}). */
    public synchronized List<FetchStats> fetchLog() { return new ArrayList<>(fetchLog); }

    public synchronized FetchStats lastFetch() { return fetchLog.peekLast(); }

    /** Sum of bytes_requested over all fetches (also those fetchLog no longer keeps): the PLE bytes read from flash. */
    public synchronized long totalBytesRequested() { return totalBytesRequested; }

    public synchronized long totalPagesTouched() { return totalPagesTouched; }

    /**
     * Refuses this file unless its identity equals {@code expectedHex} (the manifest's files.ple.identity);
     * {@link #open} has already recomputed the header's identity from the header and the checksum table.
     */
    public void checkIdentity(String expectedHex, String expectedFrom) throws PleFormatException {
        if (!h.identityHex().equalsIgnoreCase(expectedHex))
            throw new PleFormatException(path, "identity", expectedHex + " (" + expectedFrom + ")", h.identityHex() + " (this file's header)");
    }

    // ------------------------------------------------------------------ fetch

    /** Distinct ids in ascending order (= file order). */
    private int[] unique(int[] ids) {
        int[] u = ids.clone();
        for (int t = 0; t < u.length; t++) {
            if (u[t] < 0 || u[t] >= h.vocabSize)
                throw new IllegalArgumentException(path + ": token id at position " + t + ": expected 0 <= id < vocab_size "
                        + h.vocabSize + ", found " + u[t]);
        }
        Arrays.sort(u);
        int n = 0;
        for (int t = 0; t < u.length; t++) if (n == 0 || u[t] != u[n - 1]) u[n++] = u[t];
        return Arrays.copyOf(u, n);
    }

    /**
     * Reads each unique row once (its stored bytes), checks it, records the accounting, returns
     * [unique][row_bytes]. The caller holds the lifecycle's read lock.
     */
    private byte[][] readUnique(int[] uniq, int numIds, long t0) throws PleChecksumException {
        if (!h.rowCrc()) checkBlocksOf(uniq);
        int rec = h.recordBytes();
        byte[][] raw = new byte[uniq.length][h.rowBytes];
        byte[] crcBytes = new byte[ROW_CRC_BYTES];
        CRC32 crc = new CRC32();
        long pages = 0, lastPage = -1;
        for (int k = 0; k < uniq.length; k++) {
            long off = h.rowOffset(uniq[k]);
            long first = off / PAGE_SIZE, last = (off + rec - 1) / PAGE_SIZE;
            if (last > lastPage) {
                pages += last - Math.max(first, lastPage + 1) + 1;
                lastPage = last;
            }
            long rel = off - h.dataOffset;
            ByteBuffer w = maps[(int) (rel / windowBytes)].duplicate();
            ((Buffer) w).position((int) (rel % windowBytes));   // Buffer.position: the covariant override is not on every Android
            w.get(raw[k]);
            if (h.rowCrc()) {   // the payload against the CRC-32 stored after it, over the bytes returned
                w.get(crcBytes);
                long want = ByteBuffer.wrap(crcBytes).order(ByteOrder.LITTLE_ENDIAN).getInt() & 0xFFFFFFFFL;
                crc.reset();
                crc.update(raw[k], 0, h.rowBytes);
                if (crc.getValue() != want)
                    throw new PleChecksumException(path, "row " + uniq[k] + " (bytes [" + off + ", " + (off + h.rowBytes) + "))",
                            String.format("CRC-32 0x%08x (stored after the row)", want), String.format("0x%08x", crc.getValue()));
            }
        }
        long bytes = (long) uniq.length * h.rowBytes;
        FetchStats st = new FetchStats(numIds, uniq.length, bytes, pages, uniq.length, (System.nanoTime() - t0) / 1e9);
        synchronized (this) {
            if (fetchLog.size() == FETCH_LOG_MAX) fetchLog.removeFirst();
            fetchLog.addLast(st);
            totalBytesRequested += bytes;
            totalPagesTouched += pages;
        }
        return raw;
    }

    /** A minor-0 file (no row CRCs): each block holding one of these rows against the table, once per reader. */
    private void checkBlocksOf(int[] uniq) throws PleChecksumException {
        long rowsPerBlock = (long) h.rowsPerGroup * h.blockGroups;
        for (int k = 0; k < uniq.length; k++) {
            int blk = (int) (uniq[k] / rowsPerBlock);
            synchronized (this) { if (blockOk[blk]) continue; }
            verifyBlock(blk);
            synchronized (this) { blockOk[blk] = true; }
        }
    }

    /** Runs {@code body} while this reader is open; close() waits for it. */
    private <T> T whileOpen(IoBody<T> body) throws IOException {
        ReentrantReadWriteLock.ReadLock lock = lifecycle.readLock();
        lock.lock();
        try {
            if (closed) throw new IllegalStateException(path + ": reader is closed");
            return body.run();
        } finally {
            lock.unlock();
        }
    }

    private interface IoBody<T> { T run() throws IOException; }

    /** Rows of {@code ids} in prompt order, dequantized × embed_scale: float[T * L * P]. One batched read. */
    @Override
    public float[] fetch(int[] ids) throws IOException {
        return whileOpen(() -> {
            long t0 = System.nanoTime();
            int[] uniq = unique(ids);
            byte[][] raw = readUnique(uniq, ids.length, t0);
            int lp = h.rowFloats();
            float[][] rows = new float[uniq.length][lp];
            for (int k = 0; k < uniq.length; k++) dequantize(raw[k], rows[k], 0);
            float[] out = new float[ids.length * lp];
            for (int t = 0; t < ids.length; t++) System.arraycopy(rows[Arrays.binarySearch(uniq, ids[t])], 0, out, t * lp, lp);
            return out;
        });
    }

    /** Stored bytes (scales + values, no padding) of {@code ids} in prompt order: byte[T * row_bytes]. One batched read. */
    public byte[] fetchStored(int[] ids) throws IOException {
        return whileOpen(() -> {
            long t0 = System.nanoTime();
            int[] uniq = unique(ids);
            byte[][] raw = readUnique(uniq, ids.length, t0);
            byte[] out = new byte[ids.length * h.rowBytes];
            for (int t = 0; t < ids.length; t++) System.arraycopy(raw[Arrays.binarySearch(uniq, ids[t])], 0, out, t * h.rowBytes, h.rowBytes);
            return out;
        });
    }

    /** One decode step's row: float[L * P]. */
    @Override
    public float[] fetchOne(int id) throws IOException {
        return fetch(new int[] {id});
    }

    /** Dequantizes one stored row into out[outOff, outOff + L*P): x = q * s * embed_scale or stored * embed_scale, in float32. */
    public void dequantize(byte[] raw, float[] out, int outOff) {
        ByteBuffer b = ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN);
        int lp = h.rowFloats();
        float es = h.embedScale;
        switch (h.dtype) {
            case DTYPE_FP32:
                for (int k = 0; k < lp; k++) out[outOff + k] = b.getFloat(4 * k) * es;
                break;
            case DTYPE_BF16:
                for (int k = 0; k < lp; k++) out[outOff + k] = Float.intBitsToFloat((b.getShort(2 * k) & 0xFFFF) << 16) * es;
                break;
            case DTYPE_INT8: {
                int g = h.quantGroupSize, base = (lp / g) * 4;
                for (int k = 0; k < lp; k++) {
                    float s = b.getFloat(4 * (k / g));
                    out[outOff + k] = (float) raw[base + k] * s * es;
                }
                break;
            }
            case DTYPE_INT4: {
                int g = h.quantGroupSize, base = (lp / g) * 4;
                for (int k = 0; k < lp; k++) {
                    int byt = raw[base + (k >> 1)];
                    int q = (k & 1) == 0 ? (byt << 28) >> 28 : (byt << 24) >> 28;  // low nibble: even value
                    float s = b.getFloat(4 * (k / g));
                    out[outOff + k] = (float) q * s * es;
                }
                break;
            }
            default:
                throw new IllegalStateException("unreachable dtype " + h.dtype);
        }
    }

    // ------------------------------------------------------------------ verify

    /**
     * Checks the identity (sha256 of header[0:144] + checksum table), then every block's CRC-32;
     * throws {@link PleChecksumException} at the first mismatch (as Python's {@code verify}).
     */
    public void verify() throws IOException {
        whileOpen(() -> {
            verifyIdentity();
            for (int blk = 0; blk < h.numBlocks; blk++) verifyBlock(blk);
            return null;
        });
    }

    /** Recomputes the identity from the header and the checksum table and compares it with the header's. */
    public void verifyIdentity() throws PleChecksumException {
        checkIdentity(path, h, head, checksumTable);
    }

    private static void checkIdentity(String path, Header h, byte[] head, byte[] table) throws PleChecksumException {
        byte[] identity = computeIdentity(head, table);
        if (!Arrays.equals(identity, h.identity))
            throw new PleChecksumException(path, "identity", h.identityHex() + " (header)",
                    hex(identity) + " (sha256 of header[0:144] + checksum table)");
    }

    /** Checks block {@code blk} (groups [blk·block_groups, ...)) against checksum table entry {@code blk}. */
    public void verifyBlock(int blk) throws PleChecksumException {
        if (blk < 0 || blk >= h.numBlocks)
            throw new IllegalArgumentException(path + ": block: expected 0 <= block < num_blocks " + h.numBlocks + ", found " + blk);
        long numGroups = h.numGroups();
        long g0 = (long) blk * h.blockGroups, g1 = Math.min(g0 + h.blockGroups, numGroups);
        CRC32 crc = new CRC32();
        byte[] buf = new byte[1 << 16];
        for (long rel = g0 * h.groupBytes, end = g1 * h.groupBytes; rel < end; ) {
            ByteBuffer w = maps[(int) (rel / windowBytes)].duplicate();
            int pos = (int) (rel % windowBytes);
            int n = (int) Math.min(Math.min(buf.length, end - rel), w.capacity() - pos);
            ((Buffer) w).position(pos);
            w.get(buf, 0, n);
            crc.update(buf, 0, n);
            rel += n;
        }
        long stored = ByteBuffer.wrap(checksumTable).order(ByteOrder.LITTLE_ENDIAN).getInt(4 * blk) & 0xFFFFFFFFL;
        if (crc.getValue() != stored) {
            long from = h.dataOffset + g0 * h.groupBytes, to = h.dataOffset + g1 * h.groupBytes;
            long r0 = g0 * h.rowsPerGroup, r1 = Math.min(h.vocabSize, g1 * h.rowsPerGroup);
            throw new PleChecksumException(path, "data block " + blk + " (bytes [" + from + ", " + to + "), rows [" + r0 + ", " + r1 + "))",
                    String.format("crc32 0x%08x (checksum table)", stored), String.format("crc32 0x%08x (data is damaged)", crc.getValue()));
        }
    }

    /** Waits for running fetches, then closes; any later fetch or verify throws IllegalStateException. */
    @Override
    public void close() throws IOException {
        ReentrantReadWriteLock.WriteLock lock = lifecycle.writeLock();
        lock.lock();
        try {
            if (closed) return;
            closed = true;
            raf.close();   // the mappings stay valid until collected: `closed` is what stops their use
        } finally {
            lock.unlock();
        }
    }

    public boolean isClosed() {
        lifecycle.readLock().lock();
        try { return closed; } finally { lifecycle.readLock().unlock(); }
    }
}
