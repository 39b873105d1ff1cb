//! Client identities and the one grammar of `allowedClients` patterns, shared
//! by the pooler (which matches callers against them), the operator (which
//! validates TenantPools before pushing) and, as far as a regular expression
//! can say it, the CRD.
//!
//! An identity comes from a client certificate: a URI SAN (SPIFFE style, the
//! default), or a DNS SAN or the subject CN where the pooler allows them. A
//! pattern is one of:
//!
//! - `*`: any authenticated identity (never the empty one);
//! - an exact identity, such as `spiffe://teresa.dev/ns/shop/sa/orders`;
//! - a URI prefix ending in `/*`, such as `spiffe://teresa.dev/ns/shop/*`,
//!   which matches one or more whole path segments below the prefix.
//!
//! Identities must be normalized (no `.`, `..` or empty path segments, no
//! percent-encoding, ASCII only), so a prefix can never be escaped. A name
//! identity (DNS SAN or CN) never matches a URI pattern, however it is
//! spelled, and a URI identity never matches a name pattern.

use std::fmt;

/// The longest identity or pattern accepted, in bytes.
pub const MAX_IDENTITY_BYTES: usize = 2048;

/// A regular expression for the CRD's `allowedClients` items: the same
/// grammar as [`Pattern::parse`] as far as a regular expression can say it
/// (the length and segment rules are left to the operator's validation).
pub const PATTERN_REGEX: &str =
    r"^(\*|[a-z][a-z0-9+.-]*://[A-Za-z0-9._~!$&'()+,;=:@/-]+(/\*)?|[A-Za-z0-9][A-Za-z0-9._@-]*)$";

/// Characters a URI identity may have after `scheme://`: unreserved and
/// sub-delimiters of RFC 3986 but `*`, plus `:`, `@` and `/`.
const URI_CHARS: &str = "._~!$&'()+,;=:@/-";
/// Characters a DNS or CN identity may have beside ASCII letters and digits.
const NAME_CHARS: &str = "._@-";

/// Where an identity was read from in the client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// A URI subject alternative name (SPIFFE ID).
    Uri,
    /// A DNS subject alternative name.
    Dns,
    /// The subject common name.
    Cn,
}

impl IdentityKind {
    /// The name used in flags and messages: `uri`, `dns` or `cn`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Uri => "uri",
            IdentityKind::Dns => "dns",
            IdentityKind::Cn => "cn",
        }
    }
}

/// A caller's identity, checked to be normalized.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    kind: IdentityKind,
    value: String,
}

impl Identity {
    /// Checks `value` as an identity of `kind`.
    pub fn new(kind: IdentityKind, value: &str) -> Result<Self, IdentityError> {
        match kind {
            IdentityKind::Uri => check_uri(value)?,
            IdentityKind::Dns | IdentityKind::Cn => check_name(value)?,
        }
        Ok(Identity {
            kind,
            value: value.to_owned(),
        })
    }

    pub fn kind(&self) -> IdentityKind {
        self.kind
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// Why a string is not a usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the identity is empty")]
    Empty,
    #[error("the identity is longer than {MAX_IDENTITY_BYTES} bytes")]
    TooLong,
    #[error("the identity has a non-ASCII, space or control character")]
    NotPrintableAscii,
    #[error("the identity is not a URI of the form scheme://authority/path")]
    NotUri,
    #[error(
        "the identity has percent-encoding ('%'), which is refused so that names compare exactly"
    )]
    PercentEncoded,
    #[error("the identity has an empty, '.' or '..' path segment; identities must be normalized")]
    NotNormalized,
    #[error("the identity has a query ('?') or fragment ('#')")]
    QueryOrFragment,
    #[error("the identity has a '*', which only patterns may have")]
    Wildcard,
    #[error("a DNS or CN identity must not look like a URI (it has '://')")]
    NameLooksLikeUri,
    #[error("the identity has a character outside {0}")]
    BadCharacter(&'static str),
}

fn check_common(value: &str) -> Result<(), IdentityError> {
    if value.is_empty() {
        return Err(IdentityError::Empty);
    }
    if value.len() > MAX_IDENTITY_BYTES {
        return Err(IdentityError::TooLong);
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(IdentityError::NotPrintableAscii);
    }
    if value.contains('*') {
        return Err(IdentityError::Wildcard);
    }
    Ok(())
}

/// A normalized URI identity: `scheme://authority[/segment...]`, every
/// segment non-empty and neither `.` nor `..`, no `%`, `?` or `#`.
fn check_uri(value: &str) -> Result<(), IdentityError> {
    check_common(value)?;
    let (scheme, rest) = value.split_once("://").ok_or(IdentityError::NotUri)?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
    if !scheme_ok {
        return Err(IdentityError::NotUri);
    }
    if value.contains('%') {
        return Err(IdentityError::PercentEncoded);
    }
    if value.contains('?') || value.contains('#') {
        return Err(IdentityError::QueryOrFragment);
    }
    if !rest
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || URI_CHARS.contains(c))
    {
        return Err(IdentityError::BadCharacter(
            "letters, digits and ._~!$&'()+,;=:@/- in a URI identity",
        ));
    }
    let mut parts = rest.split('/');
    let authority = parts.next().unwrap_or_default();
    if authority.is_empty() {
        return Err(IdentityError::NotUri);
    }
    if parts.any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Err(IdentityError::NotNormalized);
    }
    Ok(())
}

fn check_name(value: &str) -> Result<(), IdentityError> {
    check_common(value)?;
    if value.contains("://") {
        return Err(IdentityError::NameLooksLikeUri);
    }
    let starts_ok = value.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !starts_ok
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || NAME_CHARS.contains(c))
    {
        return Err(IdentityError::BadCharacter(
            "letters, digits and ._@- (starting with a letter or digit) in a DNS or CN identity",
        ));
    }
    Ok(())
}

/// One `allowedClients` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `*`: any authenticated identity.
    Any,
    /// Exactly this URI identity.
    ExactUri(String),
    /// Exactly this DNS or CN identity.
    ExactName(String),
    /// URI identities below this prefix (which ends in `/`), by whole segments.
    UriPrefix(String),
}

/// Why a string is not a valid `allowedClients` pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error(
        "{0:?} has a '*' that is not the whole pattern or its last path segment; \
         use an exact identity, a prefix ending in '/*', or '*'"
    )]
    MisplacedWildcard(String),
    #[error("{pattern:?} is not a valid identity: {reason}")]
    BadIdentity {
        pattern: String,
        reason: IdentityError,
    },
    #[error(
        "{0:?}: a prefix pattern ending in '/*' must be a URI such as spiffe://domain/ns/name/*"
    )]
    PrefixNotUri(String),
}

impl Pattern {
    /// Parses one pattern of the grammar above.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text == "*" {
            return Ok(Pattern::Any);
        }
        let bad = |reason| PatternError::BadIdentity {
            pattern: text.to_owned(),
            reason,
        };
        if let Some(prefix) = text.strip_suffix("/*") {
            if prefix.contains('*') {
                return Err(PatternError::MisplacedWildcard(text.to_owned()));
            }
            if !prefix.contains("://") {
                return Err(PatternError::PrefixNotUri(text.to_owned()));
            }
            check_uri(prefix).map_err(bad)?;
            return Ok(Pattern::UriPrefix(format!("{prefix}/")));
        }
        if text.contains('*') {
            return Err(PatternError::MisplacedWildcard(text.to_owned()));
        }
        if text.contains("://") {
            check_uri(text).map_err(bad)?;
            Ok(Pattern::ExactUri(text.to_owned()))
        } else {
            check_name(text).map_err(bad)?;
            Ok(Pattern::ExactName(text.to_owned()))
        }
    }

    /// True when `identity` is one this pattern admits.
    pub fn matches(&self, identity: &Identity) -> bool {
        let value = identity.as_str();
        match (self, identity.kind()) {
            (Pattern::Any, _) => true,
            (Pattern::ExactUri(exact), IdentityKind::Uri) => value == exact,
            (Pattern::UriPrefix(prefix), IdentityKind::Uri) => {
                // A normalized identity's remaining segments are whole and non-empty.
                value.len() > prefix.len() && value.starts_with(prefix.as_str())
            }
            (Pattern::ExactName(exact), IdentityKind::Dns | IdentityKind::Cn) => value == exact,
            _ => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::ExactUri(s) | Pattern::ExactName(s) => f.write_str(s),
            Pattern::UriPrefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

#[cfg(test)]
mod tests;
