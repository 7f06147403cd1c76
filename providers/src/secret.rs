//! Showing which API key was used without showing the key.

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

#[cfg(test)]
mod tests {
    use super::*;

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
