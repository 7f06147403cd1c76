//! Short-lived bearer tokens (Entra ID for Azure, Google access tokens for Vertex AI), read
//! from a file or printed by a command, cached and refreshed before they expire.
//!
//! A token file is re-read whenever the cached token is older than the refresh interval, so a
//! sidecar that rewrites it (Kubernetes workload identity, `gcloud` in a cron job) rotates
//! it without a restart. A command (`["gcloud", "auth", "print-access-token"]`) runs without
//! a shell, under a time limit, and only its first line of standard output is kept; nothing
//! it prints is ever logged or quoted in an error, because that output is the secret.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::{io::AsyncReadExt, sync::Mutex};

use crate::{ErrorKind, ProviderError};

/// The most bytes a token file or command output may have: real tokens are a few KiB.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Where a bearer token comes from, as configured (`token_file` or `token_command`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// A file holding the token (trimmed), re-read when the cached one is due.
    File(PathBuf),
    /// A program and its arguments whose standard output's first line is the token.
    Command(Vec<String>),
}

impl TokenSource {
    /// What the source is, for messages: the file's path or the program's name (never its output).
    pub fn describe(&self) -> String {
        match self {
            Self::File(path) => format!("token file {}", path.display()),
            Self::Command(argv) => format!(
                "token command `{}`",
                argv.first().map(String::as_str).unwrap_or("")
            ),
        }
    }
}

/// A [`TokenSource`] with its current token cached until the refresh interval passes.
///
/// Concurrent calls that find the token due wait for one refresh rather than each running the
/// command.
pub struct Tokens {
    source: TokenSource,
    refresh_after: Duration,
    command_timeout: Duration,
    cached: Mutex<Option<(SecretString, Instant)>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("source", &self.source.describe())
            .field("refresh_after", &self.refresh_after)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens from `source`, fetched again once one is `refresh_after` old (Google and Entra
    /// tokens live an hour: 45 minutes leaves room for the calls in flight).
    pub fn new(source: TokenSource, refresh_after: Duration) -> Self {
        Self {
            source,
            refresh_after,
            command_timeout: Duration::from_secs(30),
            cached: Mutex::new(None),
        }
    }

    /// The same, with another limit on how long the command may run.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Where the tokens come from.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// The current token, fetched when none is cached or the cached one is due.
    pub async fn token(&self) -> Result<SecretString, ProviderError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, at)) = cached.as_ref() {
            if at.elapsed() < self.refresh_after {
                return Ok(token.clone());
            }
        }
        let token = self.fetch().await?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// Forgets the cached token, so the next call fetches a new one: for after the server
    /// refused it (expired early, revoked).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self) -> Result<SecretString, ProviderError> {
        let what = self.source.describe();
        let fail = |why: String| ProviderError::new(ErrorKind::Auth, format!("{what}: {why}"));
        let raw = match &self.source {
            TokenSource::File(path) => read_capped_file(path).await.map_err(fail)?,
            TokenSource::Command(argv) => self.run(argv).await.map_err(fail)?,
        };
        let token = first_line(&raw);
        if token.is_empty() {
            return Err(fail("gave no token".into()));
        }
        Ok(SecretString::from(token.to_string()))
    }

    async fn run(&self, argv: &[String]) -> Result<Vec<u8>, String> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| "is empty: give the program and its arguments".to_string())?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot be started ({})", e.kind()))?;
        let mut stdout = child.stdout.take().expect("piped above");
        let work = async {
            let mut out = Vec::new();
            (&mut stdout)
                .take(MAX_TOKEN_BYTES + 1)
                .read_to_end(&mut out)
                .await
                .map_err(|e| format!("output unreadable ({})", e.kind()))?;
            if out.len() as u64 > MAX_TOKEN_BYTES {
                return Err(format!("printed more than {MAX_TOKEN_BYTES} bytes"));
            }
            let status = child
                .wait()
                .await
                .map_err(|e| format!("did not finish ({})", e.kind()))?;
            if !status.success() {
                return Err(format!("failed ({status})"));
            }
            Ok(out)
        };
        match tokio::time::timeout(self.command_timeout, work).await {
            Ok(out) => out,
            Err(_) => Err(format!(
                "took longer than {} s",
                self.command_timeout.as_secs_f32()
            )),
        }
    }
}

async fn read_capped_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot be read ({})", e.kind()))?;
    let mut out = Vec::new();
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut out)
        .await
        .map_err(|e| format!("cannot be read ({})", e.kind()))?;
    if out.len() as u64 > MAX_TOKEN_BYTES {
        return Err(format!("is larger than {MAX_TOKEN_BYTES} bytes"));
    }
    Ok(out)
}

/// The first non-empty line, trimmed: `gcloud` ends its token with a newline, and some tools
/// print a notice after it.
fn first_line(raw: &[u8]) -> &str {
    std::str::from_utf8(raw)
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// The `Authorization` value for `token`, marked sensitive so it never shows in reqwest's logs.
pub fn bearer(token: &SecretString) -> reqwest::header::HeaderValue {
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Bearer invalid"));
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    const SENTINEL: &str = "tok-SENTINEL-123";

    fn script(dir: &std::path::Path, body: &str) -> Vec<String> {
        let path = dir.join(format!("token-{:x}.sh", Sha256::digest(body)));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        vec!["sh".into(), path.display().to_string()]
    }

    #[tokio::test]
    async fn a_command_token_is_cached_then_refreshed_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let argv = script(
            dir.path(),
            &format!(
                "echo x >> {c}; n=$(wc -l < {c}); echo \"{SENTINEL}-$n\"; echo 'Updates are available' ",
                c = count.display()
            ),
        );
        let tokens = Tokens::new(
            TokenSource::Command(argv.clone()),
            Duration::from_secs(3600),
        );
        let first = tokens.token().await.unwrap();
        assert_eq!(first.expose_secret().trim(), format!("{SENTINEL}-1"));
        // Cached: the command does not run again.
        assert_eq!(
            tokens.token().await.unwrap().expose_secret(),
            first.expose_secret()
        );
        tokens.invalidate().await;
        assert!(tokens
            .token()
            .await
            .unwrap()
            .expose_secret()
            .ends_with("-2"));
        // Due at once: every call fetches.
        let due = Tokens::new(TokenSource::Command(argv), Duration::ZERO);
        let a = due.token().await.unwrap();
        let b = due.token().await.unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(!format!("{due:?}").contains(SENTINEL));
    }

    #[tokio::test]
    async fn a_token_file_is_reread_so_a_rewritten_file_rotates_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("  {SENTINEL}-a\n")).unwrap();
        let tokens = Tokens::new(TokenSource::File(path.clone()), Duration::ZERO);
        assert_eq!(
            tokens.token().await.unwrap().expose_secret(),
            format!("{SENTINEL}-a")
        );
        std::fs::write(&path, format!("{SENTINEL}-b")).unwrap();
        assert_eq!(
            tokens.token().await.unwrap().expose_secret(),
            format!("{SENTINEL}-b")
        );
    }

    #[tokio::test]
    async fn failures_are_auth_errors_that_quote_nothing_the_command_printed() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                script(dir.path(), &format!("echo {SENTINEL}; exit 3")),
                "failed",
            ),
            (script(dir.path(), "echo"), "gave no token"),
            (vec!["/nonexistent/gcloud".into()], "cannot be started"),
            (vec![], "is empty"),
        ];
        for (argv, says) in cases {
            let err = Tokens::new(TokenSource::Command(argv), Duration::ZERO)
                .token()
                .await
                .unwrap_err();
            assert_eq!(err.kind, ErrorKind::Auth);
            assert!(err.message.contains(says), "{err}");
            assert!(!err.message.contains(SENTINEL), "{err}");
        }
        let slow = Tokens::new(
            TokenSource::Command(script(dir.path(), "sleep 5; echo late")),
            Duration::ZERO,
        )
        .with_command_timeout(Duration::from_millis(100));
        let err = slow.token().await.unwrap_err();
        assert!(err.message.contains("took longer than"), "{err}");
        let missing = Tokens::new(TokenSource::File(dir.path().join("nope")), Duration::ZERO);
        let err = missing.token().await.unwrap_err();
        assert!(err.message.contains("token file") && err.message.contains("cannot be read"));
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'a'; 70_000]).unwrap();
        let err = Tokens::new(TokenSource::File(huge), Duration::ZERO)
            .token()
            .await
            .unwrap_err();
        assert!(err.message.contains("larger than"), "{err}");
    }

    #[test]
    fn the_bearer_header_is_marked_sensitive() {
        let value = bearer(&SecretString::from(SENTINEL.to_string()));
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains(SENTINEL));
    }
}
