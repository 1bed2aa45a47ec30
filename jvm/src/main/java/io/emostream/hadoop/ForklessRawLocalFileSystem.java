package io.emostream.hadoop;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.attribute.PosixFilePermission;
import java.util.EnumSet;
import java.util.Set;
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
  /** Permission bits from the lowest (others' execute) to owner read, as in a Unix mode. */
  private static final PosixFilePermission[] BITS = {
    PosixFilePermission.OTHERS_EXECUTE,
    PosixFilePermission.OTHERS_WRITE,
    PosixFilePermission.OTHERS_READ,
    PosixFilePermission.GROUP_EXECUTE,
    PosixFilePermission.GROUP_WRITE,
    PosixFilePermission.GROUP_READ,
    PosixFilePermission.OWNER_EXECUTE,
    PosixFilePermission.OWNER_WRITE,
    PosixFilePermission.OWNER_READ,
  };

  @Override
  public void setPermission(Path path, FsPermission permission) throws IOException {
    int mode = permission.toShort();
    if (NativeIO.isAvailable() || (mode & ~0777) != 0) {
      super.setPermission(path, permission);
      return;
    }
    Files.setPosixFilePermissions(pathToFile(path).toPath(), posix(mode));
  }

  static Set<PosixFilePermission> posix(int mode) {
    Set<PosixFilePermission> permissions = EnumSet.noneOf(PosixFilePermission.class);
    for (int bit = 0; bit < BITS.length; bit++) {
      if ((mode & (1 << bit)) != 0) {
        permissions.add(BITS[bit]);
      }
    }
    return permissions;
  }
}
