package io.emostream.hadoop;

import org.apache.hadoop.fs.LocalFileSystem;

/**
 * Hadoop's checksummed local file system ({@code file:}) over {@link ForklessRawLocalFileSystem}.
 *
 * <p>Configured as {@code fs.file.impl} by {@code emostream.processor.spark} when Spark runs in local mode
 * with a local checkpoint folder; everything else about the file system is Hadoop's own.
 */
public class ForklessLocalFileSystem extends LocalFileSystem {
  public ForklessLocalFileSystem() {
    super(new ForklessRawLocalFileSystem());
  }
}
