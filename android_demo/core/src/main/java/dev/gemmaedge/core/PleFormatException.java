// The error a `.ple` reader raises for a file it refuses: it names the file, the field, and expected vs found.
package dev.gemmaedge.core;

import java.io.IOException;

/** A `.ple` file that breaks the format contract (ple_store/FORMAT.md). */
public class PleFormatException extends IOException {
    private final String file;
    private final String field;

    public PleFormatException(String file, String field, String expected, String found) {
        super(file + ": " + field + ": expected " + expected + ", found " + found);
        this.file = file;
        this.field = field;
    }

    /** The path of the refused file. */
    public String file() { return file; }

    /** The header field (or region, e.g. "block 3") that failed. */
    public String field() { return field; }
}
