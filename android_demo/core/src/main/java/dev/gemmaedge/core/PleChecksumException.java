// The error `PleFile.verify` raises when a data block's CRC-32 differs from the checksum table.
package dev.gemmaedge.core;

/** A data block (or the checksum table via the identity) whose bytes do not match their checksum. */
public class PleChecksumException extends PleFormatException {
    public PleChecksumException(String file, String field, String expected, String found) {
        super(file, field, expected, found);
    }
}
