//! Input images for edits and variations: where they may come from, and the checks every
//! input passes before any upload.
//!
//! A model chooses these strings, so a path is a request to read a file on the server: it is
//! canonicalised (`..` and symbolic links resolved) and must land inside an allowed
//! directory. Stored images are reachable by their `imagegen://images/<name>` URI, and bytes
//! can come inline as base64 or a `data:` URL.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use imagegen_providers::{ErrorKind, InputImage};

use crate::{
    config::files::{self, FileError},
    error::ToolError,
};

/// Where inputs may be read from, and how large they may be.
#[derive(Debug, Clone)]
pub struct InputPolicy {
    /// Canonical directories paths may point into; the output directory is always one.
    allowed: Vec<PathBuf>,
    /// Relative paths are resolved against this directory (the output directory).
    base: PathBuf,
    /// The largest input image, in bytes.
    max_image_bytes: u64,
    /// The largest mask, in bytes.
    max_mask_bytes: u64,
}

/// What an input is for: its position in the request, for error messages and file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRole {
    /// `images[i]` (0-based).
    Image(usize),
    /// `mask`.
    Mask,
    /// `markup`: annotations, held to the mask's size limit (both are PNG layers).
    Markup,
}

impl InputRole {
    /// The parameter name as the caller wrote it.
    fn param(self) -> String {
        match self {
            Self::Image(i) => format!("images[{i}]"),
            Self::Mask => "mask".into(),
            Self::Markup => "markup".into(),
        }
    }

    /// The file name the input is uploaded under.
    fn file_name(self, ext: &str) -> String {
        match self {
            Self::Image(i) => format!("image-{}.{ext}", i + 1),
            Self::Mask => format!("mask.{ext}"),
            Self::Markup => format!("markup.{ext}"),
        }
    }
}

impl InputPolicy {
    /// Inputs from the output directory `base` and `extra` directories (missing ones are
    /// skipped).
    pub fn new(base: &Path, extra: &[PathBuf], max_image_bytes: u64, max_mask_bytes: u64) -> Self {
        let base = base.to_path_buf();
        // The output directory may not exist before the first save: keep its plain path then.
        let allowed = std::iter::once(&base)
            .chain(extra)
            .filter_map(|d| {
                std::fs::canonicalize(d)
                    .ok()
                    .or_else(|| (d == &base).then(|| d.clone()))
            })
            .collect();
        Self {
            allowed,
            base,
            max_image_bytes,
            max_mask_bytes,
        }
    }

    /// Reads one input: a stored image's URI, a path inside the allowed directories, a
    /// `data:` URL or bare base64. The bytes must be a PNG, JPEG or WebP image.
    pub fn resolve(&self, spec: &str, role: InputRole) -> Result<InputImage, ToolError> {
        let spec = spec.trim();
        let param = role.param();
        let from_file = spec.starts_with(crate::storage::IMAGE_URI_PREFIX)
            || (!spec.starts_with("data:") && looks_like_path(spec));
        let bytes = if let Some(name) = spec.strip_prefix(crate::storage::IMAGE_URI_PREFIX) {
            if !crate::storage::is_valid_name(name) {
                return Err(ToolError::invalid_param(
                    &param,
                    format!("`{spec}` is not a valid image URI"),
                ));
            }
            self.read_path(&self.base.join(name), spec, role)?
        } else if let Some(data) = spec.strip_prefix("data:") {
            let (_, payload) = data.split_once(";base64,").ok_or_else(|| {
                ToolError::invalid_param(
                    &param,
                    "a data: URL must be base64 (data:image/png;base64,...)",
                )
            })?;
            self.decode(payload, role)?
        } else if looks_like_path(spec) {
            let path = expand(spec, &self.base);
            self.read_path(&path, spec, role)?
        } else {
            self.decode(spec, role)?
        };
        self.finish(bytes, spec, role, from_file)
    }

    /// An input the caller named by its `imagegen://` URI, already read from an object store.
    pub fn resolve_stored(
        &self,
        bytes: Vec<u8>,
        spec: &str,
        role: InputRole,
    ) -> Result<InputImage, ToolError> {
        if bytes.len() as u64 > self.limit(role) {
            return Err(self.too_large(role, bytes.len() as u64));
        }
        self.finish(bytes, spec.trim(), role, true)
    }

    fn finish(
        &self,
        bytes: Vec<u8>,
        spec: &str,
        role: InputRole,
        from_file: bool,
    ) -> Result<InputImage, ToolError> {
        let param = role.param();
        let ext = imagegen_providers::image_info::sniff(&bytes).map_or("bin", |f| f.extension());
        InputImage::sniffed(bytes, role.file_name(ext)).map_err(|mut e| {
            if from_file {
                // The error quotes the first bytes: fine for the caller's own data, not for a
                // file on this machine.
                e.message = format!("`{spec}` is not a PNG, JPEG or WebP image");
            }
            e.param = Some(param);
            ToolError::from_provider(e, None, None)
        })
    }

    fn limit(&self, role: InputRole) -> u64 {
        match role {
            InputRole::Image(_) => self.max_image_bytes,
            InputRole::Mask | InputRole::Markup => self.max_mask_bytes,
        }
    }

    fn too_large(&self, role: InputRole, size: u64) -> ToolError {
        ToolError::invalid_param(
            &role.param(),
            format!(
                "is {:.1} MB; the limit is {:.1} MB",
                size as f64 / 1e6,
                self.limit(role) as f64 / 1e6
            ),
        )
    }

    fn decode(&self, text: &str, role: InputRole) -> Result<Vec<u8>, ToolError> {
        // Base64 grows data by 4/3: refuse oversized input before decoding it.
        if (text.len() as u64 / 4) * 3 > self.limit(role) + 3 {
            return Err(self.too_large(role, text.len() as u64 / 4 * 3));
        }
        let clean: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(clean.as_bytes())
            .map_err(|_| {
                ToolError::invalid_param(
                    &role.param(),
                    "is not an image URI (imagegen://images/...), a file path, a data: URL or base64 data",
                )
            })
    }

    fn read_path(&self, path: &Path, spec: &str, role: InputRole) -> Result<Vec<u8>, ToolError> {
        let param = role.param();
        let refused = || {
            ToolError::new(
                ErrorKind::Permission,
                format!(
                    "{param}: `{spec}` is outside the directories inputs may be read from ({}); \
                     add its directory to [input] allowed_dirs to allow it",
                    self.allowed
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        };
        // Resolving `..` and every symbolic link first means the check sees the real file.
        let real = match std::fs::canonicalize(path) {
            Ok(real) => real,
            // Say "not found" only inside the allowed directories: elsewhere that would tell
            // the caller which files exist.
            Err(_) if !self.allows(&lexical(path)) => return Err(refused()),
            Err(e) => {
                return Err(ToolError::new(
                    ErrorKind::NotFound,
                    format!("{param}: cannot read `{spec}`: {e}"),
                ))
            }
        };
        if !self.allows(&real) {
            return Err(refused());
        }
        // The checked name may be swapped for a link, a FIFO or a device before it is opened:
        // open it once, without following a link, and check what was opened, through the
        // handle, before reading through the same handle. No byte of a refused file is read.
        let limit = self.limit(role);
        let (file, len) = files::open_regular(&real, false).map_err(|e| match e {
            FileError::NotRegular => {
                ToolError::invalid_param(&param, format!("`{spec}` is not a regular file"))
            }
            FileError::TooLarge(n) => self.too_large(role, n),
            FileError::Io(e) if is_link_refusal(&e) => refused(),
            FileError::Io(e) => ToolError::new(
                ErrorKind::NotFound,
                format!("{param}: cannot read `{spec}`: {e}"),
            ),
        })?;
        if !self.opened_inside(&file) {
            return Err(refused());
        }
        if len > limit {
            return Err(self.too_large(role, len));
        }
        files::read_capped(file, limit).map_err(|e| match e {
            FileError::TooLarge(n) => self.too_large(role, n),
            e => ToolError::new(
                ErrorKind::NotFound,
                format!("{param}: cannot read `{spec}`: {e}"),
            ),
        })
    }

    /// Whether the file behind the open handle lies in an allowed directory: a directory
    /// along the checked path may have been swapped for a link since the check.
    fn opened_inside(&self, file: &std::fs::File) -> bool {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd as _;
            match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
                Ok(opened) => self.allows(&opened),
                // Without /proc (a sandbox) the name check above is what remains.
                Err(_) => true,
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = file;
            true
        }
    }

    fn allows(&self, path: &Path) -> bool {
        self.allowed.iter().any(|dir| path.starts_with(dir))
    }
}

/// Whether opening failed because the last component had become a symbolic link.
fn is_link_refusal(e: &std::io::Error) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let eloop = Some(libc::ELOOP);
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let eloop: Option<i32> = None;
    eloop.is_some() && e.raw_os_error() == eloop
}

/// Whether `spec` names a file rather than carrying base64 (which may contain `/` too).
pub(crate) fn looks_like_path(spec: &str) -> bool {
    let lower = spec.to_ascii_lowercase();
    spec.starts_with(['/', '.', '~', '\\'])
        || spec.contains('\\')
        || [".png", ".jpg", ".jpeg", ".webp"]
            .iter()
            .any(|ext| lower.ends_with(ext))
}

/// `~/x` under the home directory, a relative path under `base`.
fn expand(spec: &str, base: &Path) -> PathBuf {
    if let Some(rest) = spec.strip_prefix("~/") {
        if let Some(home) = dirs::home_dir() {
            return home.join(rest);
        }
    }
    base.join(spec)
}

/// `path` with `.` and `..` removed without touching the filesystem.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _root: tempfile::TempDir,
        out: PathBuf,
        outside: PathBuf,
        policy: InputPolicy,
    }

    async fn fixture() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let png = png().await;
        std::fs::write(out.join("inside.png"), &png).unwrap();
        std::fs::write(outside.join("secret.png"), &png).unwrap();
        std::fs::write(out.join("notes.png"), b"%PDF-1.7 not an image").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.png"), out.join("link.png")).unwrap();
        let policy = InputPolicy::new(&out, &[], 1_000_000, 100_000);
        Fixture {
            _root: root,
            out,
            outside,
            policy,
        }
    }

    async fn png() -> Vec<u8> {
        use imagegen_providers::{build::stand_in, GenerateRequest, ImageProviderExt as _};
        let mut r = GenerateRequest::new("input", "mock-image-1");
        r.options.size = Some("32x32".into());
        let result = stand_in().generate(&r).await.unwrap();
        result.images[0].bytes.to_vec()
    }

    #[tokio::test]
    async fn uris_relative_paths_and_base64_are_read() {
        let fx = fixture().await;
        let png = png().await;
        for spec in [
            "imagegen://images/inside.png".to_string(),
            "inside.png".to_string(),
            fx.out.join("inside.png").display().to_string(),
            base64::engine::general_purpose::STANDARD.encode(&png),
            format!(
                "data:image/png;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(&png)
            ),
        ] {
            let image = fx.policy.resolve(&spec, InputRole::Image(0)).unwrap();
            assert_eq!(image.bytes.as_ref(), png.as_slice(), "{spec}");
            assert_eq!(image.name, "image-1.png");
        }
    }

    #[tokio::test]
    async fn escapes_by_dots_symlinks_and_absolute_paths_are_refused() {
        let fx = fixture().await;
        let escapes = [
            "../outside/secret.png".to_string(),
            "link.png".to_string(),
            fx.outside.join("secret.png").display().to_string(),
            "/etc/passwd".to_string(),
            "../outside/missing.png".to_string(),
        ];
        for spec in escapes {
            let err = fx.policy.resolve(&spec, InputRole::Image(1)).unwrap_err();
            assert_eq!(err.kind.as_str(), "permission", "{spec}: {err:?}");
            assert!(err.message.contains("allowed_dirs"), "{}", err.message);
        }
        let err = fx
            .policy
            .resolve("imagegen://images/../../etc/passwd", InputRole::Mask)
            .unwrap_err();
        assert_eq!(err.kind.as_str(), "invalid_request");
    }

    /// A name swapped between a regular file and links out of the allowed directories, as
    /// fast as possible, while it is read: only the allowed file's bytes are ever returned,
    /// and no error quotes a byte of another file.
    #[tokio::test]
    async fn a_link_swapped_in_after_the_check_is_never_followed() {
        let fx = fixture().await;
        let inside = png().await;
        std::fs::write(fx.outside.join("secret.txt"), "SECRET-BYTES").unwrap();
        let mut bigger = inside.clone();
        bigger.extend_from_slice(b"trailing bytes make it another file");
        std::fs::write(fx.outside.join("secret.png"), &bigger).unwrap();
        let race = fx.out.join("race.png");
        std::fs::write(&race, &inside).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (out, outside, stop) = (fx.out.clone(), fx.outside.clone(), stop.clone());
            let inside = inside.clone();
            std::thread::spawn(move || {
                let targets = [outside.join("secret.txt"), outside.join("secret.png")];
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tmp = out.join(".swap");
                    let _ = std::fs::remove_file(&tmp);
                    if i % 2 == 0 {
                        std::os::unix::fs::symlink(&targets[i / 2 % 2], &tmp).unwrap();
                    } else {
                        std::fs::write(&tmp, &inside).unwrap();
                    }
                    std::fs::rename(&tmp, out.join("race.png")).unwrap();
                    i += 1;
                }
            })
        };
        let started = std::time::Instant::now();
        let (mut read, mut refused) = (0, 0);
        while started.elapsed() < std::time::Duration::from_millis(1500) {
            match fx.policy.resolve("race.png", InputRole::Image(0)) {
                Ok(image) => {
                    assert_eq!(
                        image.bytes.as_ref(),
                        inside.as_slice(),
                        "a swapped-in file was read"
                    );
                    read += 1;
                }
                Err(e) => {
                    // "SECR" in hex, as the not-an-image message would quote it.
                    assert!(!e.message.contains("53 45 43 52"), "{}", e.message);
                    assert!(!e.message.contains("SECRET"), "{}", e.message);
                    assert!(
                        ["permission", "not_found"].contains(&e.kind.as_str()),
                        "{e:?}"
                    );
                    refused += 1;
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert!(read > 0 && refused > 0, "read {read}, refused {refused}");
    }

    #[tokio::test]
    async fn fifos_and_devices_are_refused_without_reading() {
        let fx = fixture().await;
        assert!(std::process::Command::new("mkfifo")
            .arg(fx.out.join("pipe.png"))
            .status()
            .unwrap()
            .success());
        let policy = InputPolicy::new(&fx.out, &[PathBuf::from("/dev")], 1_000_000, 100_000);
        for spec in ["pipe.png", "/dev/zero"] {
            let err = policy.resolve(spec, InputRole::Image(0)).unwrap_err();
            assert!(
                err.message.contains("not a regular file"),
                "{spec}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn non_images_and_oversized_inputs_are_refused_by_their_bytes() {
        let fx = fixture().await;
        let err = fx
            .policy
            .resolve("notes.png", InputRole::Image(0))
            .unwrap_err();
        assert_eq!(err.kind.as_str(), "invalid_request");
        assert!(
            err.message.contains("not a PNG, JPEG or WebP"),
            "{}",
            err.message
        );
        let err = fx
            .policy
            .resolve("bm90IGFuIGltYWdl", InputRole::Image(0))
            .unwrap_err();
        assert!(
            err.message.contains("not a PNG, JPEG or WebP"),
            "{}",
            err.message
        );
        let big = "A".repeat(200_000);
        let err = fx.policy.resolve(&big, InputRole::Mask).unwrap_err();
        assert!(err.message.contains("limit"), "{}", err.message);
        let err = fx
            .policy
            .resolve("missing.png", InputRole::Image(0))
            .unwrap_err();
        assert_eq!(err.kind.as_str(), "not_found");
    }
}
