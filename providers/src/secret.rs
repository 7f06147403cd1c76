//! Showing which API key was used without showing the key, and keeping every secret out of
//! what an upstream sends back.

use base64::Engine as _;

use crate::{keys::KeyPool, ProviderError};

/// A short, safe hint of `key` for error messages, such as `sk-…abcd`.
///
/// Reveals at most the `sk-` prefix and the last 4 characters, and fewer for short keys, so a
/// user can tell which of their keys was rejected while logs never hold a usable secret.
pub fn fingerprint(key: &str) -> String {
    let chars: Vec<char> = key.trim().chars().collect();
    let tail = |n: usize| -> String { chars[chars.len() - n..].iter().collect() };
    match chars.len() {
        // Too short to hide anything by truncation: a few trailing characters would be most of it.
        0..=5 => "…".to_string(),
        6..=11 => format!("…{}", tail(2)),
        _ => {
            let prefix = if key.trim().starts_with("sk-") {
                "sk-"
            } else {
                ""
            };
            format!("{prefix}…{}", tail(4))
        }
    }
}

/// The shortest secret worth scrubbing, and the shortest fragment of one dropped from the end
/// of a text: shorter ones are no use to anyone, and replacing them would garble messages.
const MIN_SECRET: usize = 4;

/// The longest request id kept: real ones are a few dozen characters.
const MAX_REQUEST_ID: usize = 128;

/// Removes a provider's secrets (its pool's keys and its base URL's password) from text an
/// upstream sent, before that text reaches a message, a log, an event or a result.
///
/// Compatible servers, proxies and gateways echo what they were sent: in error messages,
/// codes, headers, quoted bodies, even revised prompts. Every string from an upstream passes
/// through here at the provider's edge, always whole: a cut made first could leave most of a
/// key on one side of it.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Each secret and what stands in for it, longest first so that a secret holding another
    /// is replaced whole.
    secrets: Vec<(String, String)>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} secrets)", self.secrets.len())
    }
}

impl Scrubber {
    /// A scrubber for `pool`'s keys (shown as their fingerprints) and `base_url`'s password,
    /// as written, decoded, and as the base64 of an HTTP Basic `user:password`.
    pub fn new(pool: &KeyPool, base_url: &url::Url) -> Self {
        let mut secrets: Vec<(String, String)> = pool
            .secrets()
            .map(|(key, shown)| (key.to_string(), shown.to_string()))
            .collect();
        if let Some(raw) = base_url.password() {
            let decoded = percent_decode(raw);
            let user = percent_decode(base_url.username());
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{decoded}").as_bytes());
            for secret in [raw.to_string(), decoded, basic] {
                secrets.push((secret, "***".to_string()));
            }
        }
        secrets.retain(|(s, _)| s.chars().count() >= MIN_SECRET);
        // Equal secrets end up side by side for `dedup_by`.
        secrets.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        secrets.dedup_by(|a, b| a.0 == b.0);
        Self { secrets }
    }

    /// `text` with every secret replaced, and a secret's beginning at its very end dropped
    /// (left by a cut someone made before, such as a capped body read).
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (secret, shown) in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), shown);
            }
        }
        self.drop_trailing_fragment(&mut out);
        out
    }

    /// Whether `text` holds a secret, whole or as a trailing fragment.
    pub fn finds(&self, text: &str) -> bool {
        self.scrub(text) != text
    }

    /// Scrubbed `text` with whitespace runs collapsed, cut to its first `max` characters.
    pub fn excerpt(&self, text: &str, max: usize) -> String {
        let clean = self.scrub(text);
        let collapsed = clean.split_whitespace().collect::<Vec<_>>().join(" ");
        match collapsed.char_indices().nth(max) {
            Some((cut, _)) => {
                let mut kept = collapsed[..cut].to_string();
                self.drop_trailing_fragment(&mut kept);
                format!("{kept}…")
            }
            None => collapsed,
        }
    }

    /// `err` with every text field scrubbed, and its request id dropped if it held a secret.
    pub fn error(&self, mut err: ProviderError) -> ProviderError {
        if self.secrets.is_empty() {
            return err;
        }
        err.message = self.scrub(&err.message);
        let fields = [
            &mut err.param,
            &mut err.provider_code,
            &mut err.provider_message,
        ];
        for text in fields.into_iter().flatten() {
            *text = self.scrub(text);
        }
        err.request_id = err.request_id.filter(|id| !self.finds(id));
        err
    }

    /// An identifier an upstream gives (a request id, a model id, a date) if it is a plain
    /// token (`[A-Za-z0-9._:-]`, at most 128 characters) holding no secret: such values are
    /// logged and printed as they are, so nothing else is kept.
    pub fn token(&self, raw: &str) -> Option<String> {
        let id = raw.trim();
        let plain = !id.is_empty()
            && id.len() <= MAX_REQUEST_ID
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        (plain && !self.finds(id)).then(|| id.to_string())
    }

    /// Drops the end of `text` when it is the beginning of a secret.
    fn drop_trailing_fragment(&self, text: &mut String) {
        for (secret, _) in &self.secrets {
            let longest = (MIN_SECRET..secret.len())
                .rev()
                .filter(|&n| secret.is_char_boundary(n))
                .find(|&n| text.ends_with(&secret[..n]));
            if let Some(n) = longest {
                text.truncate(text.len() - n);
                text.push('…');
            }
        }
    }
}

/// `%XX` escapes decoded, as a URL's user and password are written; invalid UTF-8 is replaced.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubber() -> Scrubber {
        let pool = KeyPool::new(
            [(
                secrecy::SecretString::from("sk-SENTINEL-hostile-0123456789abcdef"),
                "t".to_string(),
            )],
            std::time::Duration::from_secs(1),
        );
        Scrubber::new(&pool, &"http://u:SENTINEL%2FPASS@h/v1".parse().unwrap())
    }

    #[test]
    fn scrubs_keys_passwords_and_fragments_left_by_a_cut() {
        let s = scrubber();
        let key = "sk-SENTINEL-hostile-0123456789abcdef";
        assert_eq!(s.scrub(&format!("bad key {key}!")), "bad key sk-…cdef!");
        assert_eq!(
            s.scrub("pw SENTINEL/PASS and SENTINEL%2FPASS"),
            "pw *** and ***"
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("u:SENTINEL/PASS");
        assert_eq!(s.scrub(&format!("Basic {basic}")), "Basic ***");
        assert_eq!(s.scrub(&format!("cut at {}", &key[..20])), "cut at …");
        for pad in 180..=200 {
            let text = format!("{}{key} after", "e".repeat(pad));
            let cut = s.excerpt(&text, 200);
            assert!(
                !cut.contains("SENTINEL") && !cut.contains("0123"),
                "{pad}: {cut}"
            );
        }
        assert_eq!(s.excerpt("a \n\t b", 200), "a b");
        assert_eq!(s.excerpt("a \n\t b", 1), "a…");
        assert_eq!(s.excerpt("é✓🙂é✓🙂", 4), "é✓🙂é…");
    }

    #[test]
    fn upstream_identifiers_are_plain_tokens_without_secrets() {
        let s = scrubber();
        assert_eq!(s.token(" req_1.a:b-c ").as_deref(), Some("req_1.a:b-c"));
        assert_eq!(s.token("sk-SENTINEL-hostile-0123456789abcdef"), None);
        assert_eq!(s.token("a b"), None);
        assert_eq!(s.token("gpt-image-9\nERROR forged"), None);
        assert_eq!(s.token(&"x".repeat(129)), None);
        assert_eq!(s.token(""), None);
    }

    #[test]
    fn shows_the_sk_prefix_and_last_four() {
        assert_eq!(fingerprint("sk-SENTINEL-abcdef0123456789"), "sk-…6789");
        assert_eq!(fingerprint("sk-proj-aaaaaaaaaaaaabcd"), "sk-…abcd");
        assert_eq!(fingerprint("0123456789abcdefwxyz"), "…wxyz");
    }

    #[test]
    fn short_keys_reveal_less() {
        assert_eq!(fingerprint(""), "…");
        assert_eq!(fingerprint("abcde"), "…");
        assert_eq!(fingerprint("sk-abcdefg"), "…fg");
        assert_eq!(fingerprint("abcdefghijk"), "…jk");
    }

    #[test]
    fn never_reveals_more_than_four_trailing_characters() {
        let key = "sk-proj-0123456789ABCDEFGHIJ";
        for len in 0..=key.len() {
            let fp = fingerprint(&key[..len]);
            let shown = fp.trim_start_matches("sk-").trim_start_matches('…');
            assert!(shown.chars().count() <= 4, "{len}: {fp}");
            assert!(key[..len].ends_with(shown), "{len}: {fp}");
        }
        assert_eq!(fingerprint("ключ-ключ-ключ-1234"), "…1234");
    }
}
