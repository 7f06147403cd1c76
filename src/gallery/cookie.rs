//! The gallery's login cookie: `v1.<caller>.<expiry>.<mac>`, signed with HMAC-SHA256 under a
//! key derived from the static token the caller logged in with, so every replica checks it
//! without shared state, and rotating (or removing) the token ends its sessions.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::config::{LoadedConfig as Loaded, ResolvedToken};

/// The cookie's name.
pub const NAME: &str = "imagegen_gallery";

/// How long a login lasts.
pub const LIFETIME_S: u64 = 12 * 3600;

/// What the derived signing key is for (a token's other derived keys differ).
const PURPOSE: &str = "gallery-cookie-v1";

/// The longest cookie value read; anything longer is not one of ours.
const MAX_VALUE: usize = 1024;

/// The MAC of `caller` and `expiry` under `token`'s derived key.
fn mac(token: &ResolvedToken, caller: &str, expiry: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&token.derived_key(PURPOSE))
        .expect("HMAC takes keys of any length");
    mac.update(caller.as_bytes());
    mac.update(b"\0");
    mac.update(expiry.to_string().as_bytes());
    mac
}

/// The cookie value naming `token`'s holder until `now + LIFETIME_S` (seconds since the epoch).
pub fn issue(token: &ResolvedToken, now: u64) -> String {
    let expiry = now.saturating_add(LIFETIME_S);
    let tag = mac(token, &token.name, expiry).finalize().into_bytes();
    format!(
        "v1.{}.{expiry}.{}",
        URL_SAFE_NO_PAD.encode(token.name.as_bytes()),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// The caller a cookie value names, if one of the configured tokens of that name signed it
/// and it has not expired at `now`. The MAC is compared in constant time.
pub fn verify(value: &str, loaded: &Loaded, now: u64) -> Option<String> {
    if value.len() > MAX_VALUE {
        return None;
    }
    let mut parts = value.split('.');
    let (Some("v1"), Some(name), Some(expiry), Some(tag), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let caller = String::from_utf8(URL_SAFE_NO_PAD.decode(name).ok()?).ok()?;
    let expiry: u64 = expiry.parse().ok()?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    if expiry <= now || expiry > now.saturating_add(LIFETIME_S) {
        return None;
    }
    // A name may have more than one token while it is rotated: any of them may have signed.
    loaded
        .tokens()
        .iter()
        .filter(|t| t.name == caller)
        .any(|t| mac(t, &caller, expiry).verify_slice(&tag).is_ok())
        .then_some(caller)
}

/// The value of cookie [`NAME`] in a `Cookie` header, if present.
pub fn find(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == NAME)
        .map(|(_, value)| value.trim_matches('"'))
}

/// The `Set-Cookie` value that sets `value`; `secure` when clients reach the server over HTTPS.
pub fn set_header(value: &str, secure: bool) -> String {
    format!(
        "{NAME}={value}; Path=/gallery; Max-Age={LIFETIME_S}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that clears the cookie (logging out).
pub fn clear_header(secure: bool) -> String {
    format!(
        "{NAME}=; Path=/gallery; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        assert_eq!(find("a=1; imagegen_gallery=v1.x; b=2"), Some("v1.x"));
        assert_eq!(find("imagegen_galleryx=1"), None);
        assert_eq!(find(""), None);
    }
}
