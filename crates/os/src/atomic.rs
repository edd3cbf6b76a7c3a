//! Writing reports and captures atomically: a reader sees the old file or the whole new one, never
//! half, and no temporary file outlives the writer, whatever ends it.
//!
//! The bytes go to an unnamed file in the target's folder (`O_TMPFILE`), which vanishes by itself
//! if the process dies, even by SIGKILL. Once written and synced, it gets a temporary name
//! (`linkat` through `/proc/self/fd`) and is renamed over the target at once. Filesystems without
//! `O_TMPFILE` get a named temporary file instead.
//!
//! # References
//! open(2) (`O_TMPFILE`, and its `linkat` example), rename(2).

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A file that appears at its path, whole, only when committed.
pub struct AtomicFile {
    file: File,
    path: PathBuf,
    tmp: PathBuf,
    /// True when the file has no name yet (O_TMPFILE).
    unnamed: bool,
}

impl AtomicFile {
    /// Starts a file that will replace `path`; the folder is created if missing.
    pub fn create(path: &Path) -> std::io::Result<AtomicFile> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("report");
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let (file, unnamed) = match unnamed(dir) {
            Ok(f) => (f, true),
            Err(_) => {
                guard(&tmp);
                (File::create(&tmp)?, false)
            }
        };
        Ok(AtomicFile { file, path: path.to_path_buf(), tmp, unnamed })
    }

    /// The file, to write to.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Syncs, names and renames the file over its path.
    pub fn commit(self) -> std::io::Result<()> {
        let result = (|| {
            self.file.sync_all()?;
            if self.unnamed {
                guard(&self.tmp);
                // AT_SYMLINK_FOLLOW through /proc links the file the descriptor names (without
                // CAP_DAC_READ_SEARCH, AT_EMPTY_PATH would be refused).
                let from = format!("/proc/self/fd/{}", self.file.as_raw_fd());
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    from.as_str(),
                    rustix::fs::CWD,
                    &self.tmp,
                    rustix::fs::AtFlags::SYMLINK_FOLLOW,
                )?;
            }
            std::fs::rename(&self.tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        crate::signals::guard_temporary(None);
        result
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.unnamed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A second signal removes this name if it exists then.
fn guard(tmp: &Path) {
    if let Ok(c) = CString::new(tmp.as_os_str().as_bytes()) {
        crate::signals::guard_temporary(Some(&c));
    }
}

/// Writes `bytes` to `path` atomically, creating the folder if missing. On error nothing is left.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.file().write_all(bytes)?;
    f.commit()
}

/// An unnamed regular file in `dir`.
fn unnamed(dir: &Path) -> std::io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("cwlab-out-{}", std::process::id()));
        let path = dir.join("sub/r.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let left: Vec<_> = std::fs::read_dir(dir.join("sub")).unwrap().collect();
        assert_eq!(left.len(), 1);
        let abandoned = AtomicFile::create(&dir.join("sub/never.json")).unwrap();
        drop(abandoned);
        assert_eq!(std::fs::read_dir(dir.join("sub")).unwrap().count(), 1, "nothing of it stays");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_place_is_an_error() {
        assert!(write_atomically(Path::new("/proc/cwlab/r.json"), b"x").is_err());
    }
}
