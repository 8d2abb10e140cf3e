//! One error type for the library; the CLI maps its kind to an exit code.

use std::fmt;
use std::path::Path;

/// What went wrong, coarsely: it decides the exit code and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The user's input (inventory, recipe, arguments, PKI files) is wrong.
    Input,
    /// Something the build needs is not in the cache (and we may not fetch it).
    Missing,
    /// Bytes did not match their pinned digest.
    Integrity,
    /// A download failed after its retries.
    Network,
    /// Reading or writing the filesystem failed.
    Io,
}

impl Kind {
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Input => 2,
            Kind::Missing => 3,
            Kind::Integrity => 4,
            Kind::Network => 5,
            Kind::Io => 6,
        }
    }
}

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A parser's message that quotes the input (TOML's shows the offending line
/// and a caret under it), each line cut like [`clip`]: a megabyte-long line
/// must not come back whole.
pub fn clip_lines(message: &str) -> String {
    let lines: Vec<String> = message.trim_end().lines().map(clip).collect();
    lines.join("\n")
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(Kind::Input, message)
    }
    pub fn missing(message: impl Into<String>) -> Self {
        Self::new(Kind::Missing, message)
    }
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(Kind::Integrity, message)
    }
    pub fn network(message: impl Into<String>) -> Self {
        Self::new(Kind::Network, message)
    }
    /// An I/O error on `path`, with what we were doing.
    pub fn io(action: &str, path: &Path, err: std::io::Error) -> Self {
        Self::new(Kind::Io, format!("{action} {}: {err}", path.display()))
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Prefix the message with more context, keeping the kind.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A value from the input, cut to a length fit for a message (errors quote
/// what they refuse; a megabyte-long name must not become a megabyte error),
/// with control characters escaped ([`printable`]).
pub fn clip(value: &str) -> String {
    const MAX: usize = 120;
    if value.chars().count() <= MAX {
        return printable(value).into_owned();
    }
    let head: String = value.chars().take(MAX).collect();
    format!("{}… ({} bytes in all)", printable(&head), value.len())
}

/// `value` with every control character (ESC of a terminal escape sequence,
/// a carriage return, a newline) and every bidirectional override escaped as
/// `\u{..}`: a name printed from a hostile file cannot drive the terminal or
/// hide what it is.
pub fn printable(value: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !value.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if hidden(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Attach a path and an action to `std::io::Result`s.
pub trait IoContext<T> {
    fn with_path(self, action: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn with_path(self, action: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_and_escapes() {
        assert_eq!(clip("plain"), "plain");
        assert_eq!(clip("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\u{a}");
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
        assert!(matches!(printable("é ok"), std::borrow::Cow::Borrowed(_)));
        let long = "\u{1b}".repeat(1000);
        let cut = clip(&long);
        assert!(cut.ends_with("… (1000 bytes in all)"), "{cut}");
        assert!(!cut.contains('\u{1b}'));
    }
}
