// I/O accounting of one PLE fetch, defined exactly as in ple_store/FORMAT.md "I/O accounting".
package dev.gemmaedge.core;

/** What one {@code fetch} / {@code fetchOne} cost: rows, bytes, pages, read calls, time. */
public final class FetchStats {
    public final int tokens;           // ids asked for, duplicates included
    public final int uniqueRows;       // distinct ids
    public final long bytesRequested;  // uniqueRows * row_bytes
    public final long pagesTouched;    // distinct pages (offset // page_size) covered by the unique rows' byte ranges
    public final int readCalls;        // read requests issued (here: one bulk copy per unique row)
    public final double wallS;         // seconds spent in the fetch

    public FetchStats(int tokens, int uniqueRows, long bytesRequested, long pagesTouched, int readCalls, double wallS) {
        this.tokens = tokens;
        this.uniqueRows = uniqueRows;
        this.bytesRequested = bytesRequested;
        this.pagesTouched = pagesTouched;
        this.readCalls = readCalls;
        this.wallS = wallS;
    }

    @Override
    public String toString() {
        return "FetchStats(tokens=" + tokens + ", unique_rows=" + uniqueRows + ", bytes_requested=" + bytesRequested
                + ", pages_touched=" + pagesTouched + ", read_calls=" + readCalls + ", wall_s=" + wallS + ")";
    }
}
