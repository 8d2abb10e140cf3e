//! Reading back what we rendered: the flags of a systemd unit's ExecStart.
//! Used to refuse duplicate flags (an extra_arg the recipe already sets) and by
//! the version-aware flag check.

/// `--flag[=value]` pairs in order.
pub type Flags = Vec<(String, Option<String>)>;

/// The command and `--flag[=value]` arguments of the unit's `ExecStart=`, with
/// backslash-newline continuations joined.
pub fn exec_start(unit: &str) -> Option<(String, Flags)> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("ExecStart="))?;
    let mut words = line.split_whitespace();
    let cmd = words.next()?.to_string();
    let flags = words
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (w.to_string(), None),
        })
        .collect();
    Some((cmd, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_lines_are_joined() {
        let unit = "[Service]\nExecStart=/usr/local/bin/x \\\n  --a=1 \\\n  --b \\\n  --c=d=e\nRestart=no\n";
        let (cmd, flags) = exec_start(unit).unwrap();
        assert_eq!(cmd, "/usr/local/bin/x");
        assert_eq!(
            flags,
            vec![
                ("a".into(), Some("1".into())),
                ("b".into(), None),
                ("c".into(), Some("d=e".into()))
            ]
        );
    }
}
