//! Reading files named by configuration or by a caller, whatever sits at the path: a FIFO
//! must not stall the reader, a device must not be read until memory runs out.
//!
//! A file is opened once, checked through the handle (`fstat`), and read through the same
//! handle with a hard cap, so nothing swapped in between the check and the read is read.

use std::{
    fs::File,
    io::{self, Read as _},
    path::Path,
};

/// Why a file could not be read; none of them quotes the file's bytes.
#[derive(Debug)]
pub(crate) enum FileError {
    /// Opening or reading failed (missing, permissions; `ELOOP`: a symbolic link where none
    /// may be).
    Io(io::Error),
    /// It is a directory, FIFO, socket or device.
    NotRegular,
    /// It holds more than the cap, in bytes (the size seen, at least cap + 1).
    TooLarge(u64),
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::NotRegular => f.write_str("not a regular file"),
            Self::TooLarge(n) => write!(f, "too large ({n} bytes or more)"),
        }
    }
}

/// Opens `path` for reading without blocking (on a FIFO or a device) and keeps it only if it
/// is a regular file; returns the handle and its size. `follow_last` says whether the last
/// component may be a symbolic link (Kubernetes secrets are chains of them; caller-chosen
/// input paths must not be).
pub(crate) fn open_regular(path: &Path, follow_last: bool) -> Result<(File, u64), FileError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let nofollow = if follow_last { 0 } else { libc::O_NOFOLLOW };
        options.custom_flags(libc::O_NONBLOCK | nofollow);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = follow_last;
    let file = options.open(path).map_err(FileError::Io)?;
    let meta = file.metadata().map_err(FileError::Io)?;
    if !meta.is_file() {
        return Err(FileError::NotRegular);
    }
    Ok((file, meta.len()))
}

/// Reads `file` to the end, but never more than `cap` bytes: a file that grew after its size
/// was checked is refused rather than read without bound.
pub(crate) fn read_capped(file: File, cap: u64) -> Result<Vec<u8>, FileError> {
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(FileError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(FileError::TooLarge(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads the regular file at `path` (following symbolic links) as UTF-8, up to `cap` bytes.
pub(crate) fn read_text(path: &Path, cap: u64) -> Result<String, FileError> {
    let (file, len) = open_regular(path, true)?;
    if len > cap {
        return Err(FileError::TooLarge(len));
    }
    let bytes = read_capped(file, cap)?;
    String::from_utf8(bytes).map_err(|_| {
        FileError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_oversized_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(matches!(read_text(&fifo, 10), Err(FileError::NotRegular)));
        assert!(matches!(
            read_text(Path::new("/dev/zero"), 10),
            Err(FileError::NotRegular)
        ));
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(11)).unwrap();
        assert!(matches!(read_text(&big, 10), Err(FileError::TooLarge(11))));
        assert_eq!(read_text(&big, 11).unwrap().len(), 11);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&big, &link).unwrap();
        assert!(read_text(&link, 11).is_ok(), "links are followed here");
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(matches!(open_regular(&link, false), Err(FileError::Io(_))));
    }
}
