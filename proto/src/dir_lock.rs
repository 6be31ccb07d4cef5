//! The lock on a directory one process owns: a standalone server's data
//! directory and a daemon's state directory. Two processes on one
//! directory would share what only one may hold (a database whose second
//! writer fences the first, a node's credential and result spool), so the
//! second is refused at start with the holder's PID rather than left to
//! fail later in a confusing way.
//!
//! The lock is `flock(2)` on a file in the directory, held for the life of
//! the process: the kernel releases it when the process ends however it
//! ends (`kill -9` included), so a crashed process never leaves a stale lock
//! behind. The file's descriptor is close-on-exec, so the jobs a daemon
//! starts do not inherit it (a job that outlives its daemon does not keep
//! the next daemon out). The file holds the holder's PID for the message
//! (written when the disk allows; the lock does not depend on it).

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A held lock; released when dropped or when the process ends.
#[derive(Debug)]
pub struct DirLock {
    _lock: Flock<File>,
    path: PathBuf,
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    /// Another live process holds the lock.
    #[error("{} is locked by another process{}", path.display(), holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        path: PathBuf,
        /// The holder's PID, when it had written it.
        holder: Option<u32>,
    },
    /// The lock file could not be opened, written or locked.
    #[error("locking {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DirLock {
    /// Takes the lock file `name` in `dir` (which must exist) without
    /// waiting, and writes this process's PID into it.
    pub fn try_acquire(dir: &Path, name: &str) -> Result<DirLock, DirLockError> {
        let path = dir.join(name);
        let io = |source: std::io::Error| DirLockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // The PID is for the message only: on a full disk the lock
                // holds without it.
                let _ = lock
                    .set_len(0)
                    .and_then(|()| writeln!(lock, "{}", std::process::id()));
                Ok(DirLock { _lock: lock, path })
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                Err(DirLockError::Held { path, holder })
            }
            Err((_, errno)) => Err(io(std::io::Error::from(errno))),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the lock's file holds this process's PID, as written.
    fn holds_own_pid(lock: &DirLock) -> bool {
        std::fs::read_to_string(lock.path()).unwrap() == format!("{}\n", std::process::id())
    }

    #[test]
    fn a_second_lock_on_a_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::try_acquire(dir.path(), "x.lock").unwrap();
        assert!(holds_own_pid(&held));
        // flock locks belong to an open file: a second open in this process
        // is refused as another process's would be.
        match DirLock::try_acquire(dir.path(), "x.lock") {
            Err(DirLockError::Held { path, holder }) => {
                assert_eq!(path, dir.path().join("x.lock"));
                assert_eq!(holder, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        // Another name in the same directory is another lock.
        DirLock::try_acquire(dir.path(), "y.lock").unwrap();
        drop(held);
        let again = DirLock::try_acquire(dir.path(), "x.lock").unwrap();
        assert!(holds_own_pid(&again));
    }

    #[test]
    fn a_stale_lock_file_without_a_holder_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.lock"), "99999999 and more\n").unwrap();
        let lock = DirLock::try_acquire(dir.path(), "x.lock").unwrap();
        assert!(holds_own_pid(&lock));
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = DirLock::try_acquire(&dir.path().join("absent"), "x.lock").unwrap_err();
        assert!(matches!(err, DirLockError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("absent/x.lock"), "{err}");
    }
}
