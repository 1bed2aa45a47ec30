package io.emostream.hadoop;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.attribute.PosixFilePermissions;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.io.nativeio.NativeIO;

/**
 * Hadoop's raw local file system, setting permissions through java.nio.
 *
 * <p>Without Hadoop's native library (pyspark ships none), {@link RawLocalFileSystem} runs the
 * {@code chmod} program for every file it creates. A streaming query writes several files per
 * micro-batch (its offset and commit logs, a state delta per shuffle partition), so the driver
 * JVM spawned a process every few milliseconds. java.nio sets the same bits in-process. Modes
 * with the sticky, setuid or setgid bit, which java.nio cannot set, still go to Hadoop.
 */
public class ForklessRawLocalFileSystem extends RawLocalFileSystem {
  @Override
  public void setPermission(Path path, FsPermission permission) throws IOException {
    if (NativeIO.isAvailable() || (permission.toShort() & ~0777) != 0) {
      super.setPermission(path, permission);
      return;
    }
    // Without those bits FsPermission prints the nine "rwxr-x---" characters java.nio reads.
    Files.setPosixFilePermissions(
        pathToFile(path).toPath(), PosixFilePermissions.fromString(permission.toString()));
  }
}
