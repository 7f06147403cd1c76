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

use crate::{error::ToolError, storage::ImageStore};

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
    /// Inputs from `store`'s directory and `extra` directories (missing ones are skipped).
    pub fn new(
        store: &ImageStore,
        extra: &[PathBuf],
        max_image_bytes: u64,
        max_mask_bytes: u64,
    ) -> Self {
        let base = store.dir().to_path_buf();
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
        let ext = imagegen_providers::image_info::sniff(&bytes).map_or("bin", |f| f.extension());
        InputImage::sniffed(bytes, role.file_name(ext)).map_err(|mut e| {
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
        let meta = std::fs::metadata(&real).map_err(|e| {
            ToolError::new(
                ErrorKind::NotFound,
                format!("{param}: cannot read `{spec}`: {e}"),
            )
        })?;
        if !meta.is_file() {
            return Err(ToolError::invalid_param(
                &param,
                format!("`{spec}` is not a file"),
            ));
        }
        if meta.len() > self.limit(role) {
            return Err(self.too_large(role, meta.len()));
        }
        std::fs::read(&real).map_err(|e| {
            ToolError::new(
                ErrorKind::NotFound,
                format!("{param}: cannot read `{spec}`: {e}"),
            )
        })
    }

    fn allows(&self, path: &Path) -> bool {
        self.allowed.iter().any(|dir| path.starts_with(dir))
    }
}

/// Whether `spec` names a file rather than carrying base64 (which may contain `/` too).
fn looks_like_path(spec: &str) -> bool {
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
        let policy = InputPolicy::new(&ImageStore::new(&out), &[], 1_000_000, 100_000);
        Fixture {
            _root: root,
            out,
            outside,
            policy,
        }
    }

    async fn png() -> Vec<u8> {
        use imagegen_providers::{mock::MockProvider, GenerateRequest, ImageProvider as _};
        let mut r = GenerateRequest::new("input", "mock-image-1");
        r.size = Some("32x32".into());
        let result = MockProvider::new(Default::default())
            .generate(&r)
            .await
            .unwrap();
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
            assert_eq!(err.kind, "permission", "{spec}: {err:?}");
            assert!(err.message.contains("allowed_dirs"), "{}", err.message);
        }
        let err = fx
            .policy
            .resolve("imagegen://images/../../etc/passwd", InputRole::Mask)
            .unwrap_err();
        assert_eq!(err.kind, "invalid_request");
    }

    #[tokio::test]
    async fn non_images_and_oversized_inputs_are_refused_by_their_bytes() {
        let fx = fixture().await;
        let err = fx
            .policy
            .resolve("notes.png", InputRole::Image(0))
            .unwrap_err();
        assert_eq!(err.kind, "invalid_request");
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
        assert_eq!(err.kind, "not_found");
    }
}
