//! What `pki check` reports: one finding per checked fact, each with its
//! severity and the fix that makes it go away, and how the report reads.

use std::fmt;
use std::path::PathBuf;

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Ok,
    Warning,
    Error,
}

/// What makes a finding go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fix {
    /// `imgbuild pki init` adds the missing file.
    Init,
    /// `imgbuild pki init --renew` re-issues from the same CA, keeping keys.
    Renew,
    /// Only `imgbuild pki init --force` (a new CA: rebuild every node) helps,
    /// or restoring the file from a backup.
    Force,
    /// Something for the user to do by hand (e.g. chmod); the message says what.
    Manual,
}

impl Fix {
    /// The command that makes the finding go away, when it is `pki init`'s.
    pub fn command(self) -> Option<&'static str> {
        match self {
            Fix::Init => Some("imgbuild pki init"),
            Fix::Renew => Some("imgbuild pki init --renew"),
            Fix::Force => Some("imgbuild pki init --force"),
            Fix::Manual => None,
        }
    }
}

/// A value read from a file, for a message: quoted with control characters
/// escaped, and cut after 64 characters, so that a hostile file can neither
/// flood the terminal nor write escape sequences to it.
pub(crate) fn shown(value: &str) -> String {
    const MAX: usize = 64;
    let cut: String = value.chars().take(MAX).collect();
    if cut.len() < value.len() {
        format!("{cut:?}… ({} bytes)", value.len())
    } else {
        format!("{cut:?}")
    }
}

#[derive(Debug, Clone)]
pub struct Finding {
    /// File name inside the PKI folder (or the folder itself).
    pub file: String,
    pub severity: Severity,
    /// What was checked and what was found; never file content.
    pub message: String,
    pub fix: Option<Fix>,
}

#[derive(Debug, Clone)]
pub struct CheckReport {
    pub dir: PathBuf,
    pub inventory: PathBuf,
    pub findings: Vec<Finding>,
    /// Days left per certificate (file, days), including those in kubeconfigs.
    pub expiry_days: Vec<(String, i64)>,
}

impl CheckReport {
    /// No error: the build may use this PKI for this inventory.
    pub fn fits_inventory(&self) -> bool {
        !self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }

    /// The strongest `pki init` fix the errors need; `Manual` only when no
    /// error has one (the messages of manual fixes say what to do).
    pub fn needed_fix(&self) -> Option<Fix> {
        let fixes = || {
            self.findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .filter_map(|f| f.fix)
        };
        fixes()
            .filter(|f| *f != Fix::Manual)
            .max()
            .or(fixes().max())
    }

    /// The command that repairs the errors, if one does.
    pub fn fix_command(&self) -> Option<String> {
        let inv = self.inventory.display();
        match self.needed_fix()? {
            Fix::Init => Some(format!("imgbuild pki init --inventory {inv}")),
            Fix::Renew => Some(format!("imgbuild pki init --renew --inventory {inv}")),
            Fix::Force => Some(format!(
                "imgbuild pki init --force --inventory {inv} (a new CA: every node must then be rebuilt)"
            )),
            Fix::Manual => None,
        }
    }

    /// An input error listing what does not fit and what to run, or None.
    pub fn error(&self) -> Option<Error> {
        if self.fits_inventory() {
            return None;
        }
        let mut msg = format!(
            "the PKI in {} does not fit the inventory {}:",
            self.dir.display(),
            self.inventory.display()
        );
        for f in self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
        {
            msg.push_str(&format!("\n  {f}"));
        }
        if let Some(cmd) = self.fix_command() {
            msg.push_str(&format!("\nrun: {cmd}"));
        }
        Some(Error::input(msg))
    }

    pub(super) fn push(
        &mut self,
        file: &str,
        severity: Severity,
        message: String,
        fix: Option<Fix>,
    ) {
        self.findings.push(Finding {
            file: file.to_string(),
            severity,
            message,
            fix,
        });
    }
}

impl fmt::Display for Finding {
    /// `file: message`, and for a problem `pki init` fixes, `[fix: command]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)?;
        if self.severity != Severity::Ok
            && let Some(cmd) = self.fix.and_then(Fix::command)
        {
            write!(f, " [fix: {cmd}]")?;
        }
        Ok(())
    }
}

impl fmt::Display for CheckReport {
    /// One line per finding: `ok|WARN|ERROR  file: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "PKI folder {}", self.dir.display())?;
        for finding in &self.findings {
            let tag = match finding.severity {
                Severity::Ok => "ok",
                Severity::Warning => "WARN",
                Severity::Error => "ERROR",
            };
            writeln!(f, "{tag:<6} {finding}")?;
        }
        let errors = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        let warnings = self.warnings().count();
        if errors == 0 {
            write!(
                f,
                "the PKI fits {} ({warnings} warning(s))",
                self.inventory.display()
            )?;
        } else {
            write!(
                f,
                "{errors} error(s), {warnings} warning(s): the PKI does not fit {}",
                self.inventory.display()
            )?;
        }
        if let Some(cmd) = self.fix_command() {
            write!(f, "\nrun: {cmd}")?;
        }
        Ok(())
    }
}
