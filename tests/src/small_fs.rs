//! A small filesystem for a test to fill: a tmpfs of a few MiB mounted on a
//! temporary directory (mounting needs root: the test fails, it does not
//! skip, without it), a filler file that takes all but a little of its
//! space, and the filler's removal. Unmounted when dropped.

use anyhow::{bail, Context, Result};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a fixed size, mounted for one test.
pub struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `bytes` on a new temporary directory.
    pub fn mount(bytes: u64) -> Result<SmallFs> {
        let dir = tempfile::Builder::new()
            .prefix("confab-small-fs-")
            .tempdir()
            .context("a mount point")?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .context("run mount")?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs on {} failed (the disk-full tests need root): {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(SmallFs { dir })
    }

    /// A directory `name` on it, created if missing.
    pub fn dir(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("a directory on the small filesystem");
        path
    }

    fn filler(&self) -> PathBuf {
        self.dir.path().join("filler")
    }

    /// Fills the filesystem with a filler file until a write fails for want
    /// of space, then gives `leave` bytes of it back.
    pub fn fill_leaving(&self, leave: u64) -> Result<()> {
        let mut file = std::fs::File::create(self.filler()).context("create the filler")?;
        let chunk = vec![0x5a_u8; 64 << 10];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => return Err(e).context("write the filler"),
            }
        }
        file.set_len(written.saturating_sub(leave))
            .context("give space back")?;
        Ok(())
    }

    /// Removes the filler: the space is free again.
    pub fn free(&self) -> Result<()> {
        std::fs::remove_file(self.filler()).context("remove the filler")
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file on it lets go later.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
