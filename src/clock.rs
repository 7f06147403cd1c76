//! Times as this server writes them: RFC 3339, UTC.

use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// `t` as RFC 3339.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Now, as RFC 3339.
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}
