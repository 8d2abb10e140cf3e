//! The layout's rules, checked on the source: which of the library's top-level
//! modules may import which (read from `use` items, `use crate::{a, b::c}`
//! groups, `super::` paths that climb out of a folder, and paths like
//! `crate::plan::Entry` written inline), and how long a file may grow.
//! Every violation is printed with its file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The library's top-level modules (`src/<name>.rs` or `src/<name>/`).
const MODULES: &[&str] = &[
    "input", "plan", "output", "codec", "store", "acquire", "util", "inspect", "pki", "error",
    "progress", "build",
];

/// The binary's part (`src/main.rs`, `src/cli/`): outside the import rules, it
/// may use anything.
const BINARY: &[&str] = &["main", "cli"];

/// What a module may import of ours; its own parts are always allowed.
enum Rule {
    /// Anything but these.
    Not(&'static [&'static str]),
    /// Nothing but these.
    Only(&'static [&'static str]),
}

/// Data flows input → plan → output; getting and keeping artifacts knows
/// nothing of plans or formats; codecs and utilities stand on their own.
const RULES: &[(&str, Rule)] = &[
    ("input", Rule::Not(&["plan", "output"])),
    ("plan", Rule::Not(&["output"])),
    ("output", Rule::Not(&["input"])),
    ("acquire", Rule::Not(&["plan", "output", "build"])),
    ("store", Rule::Not(&["plan", "output", "build"])),
    ("codec", Rule::Only(&["error"])),
    ("util", Rule::Only(&["error"])),
];

/// Lines of non-test code a file may hold: lines before its first
/// `#[cfg(test)]`, blank lines and `//` comment lines not counted.
const MAX_LINES: usize = 600;

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

// ---------------------------------------------------------------- tests

#[test]
fn imports_follow_the_layers() {
    let reexports = root_reexports(&fs::read_to_string(Path::new(SRC).join("lib.rs")).unwrap());
    let mut found = Vec::new();
    for rel in library_files() {
        let source = fs::read_to_string(Path::new(SRC).join(&rel)).unwrap();
        found.extend(violations(&rel, &source, &reexports));
    }
    assert!(
        found.is_empty(),
        "{} import(s) break the layout's rules:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn every_top_level_module_has_a_place_in_the_rules() {
    let mut unknown = Vec::new();
    for rel in rust_files() {
        let top = module_path(&rel).first().cloned().unwrap_or_default();
        if !top.is_empty() && !MODULES.contains(&top.as_str()) && !BINARY.contains(&top.as_str()) {
            unknown.push(format!(
                "src/{rel}: top-level module `{top}` is not in MODULES"
            ));
        }
    }
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
}

#[test]
fn no_file_holds_over_600_lines_of_non_test_code() {
    let mut over = Vec::new();
    for rel in rust_files() {
        let n = non_test_lines(&fs::read_to_string(Path::new(SRC).join(&rel)).unwrap());
        if n > MAX_LINES {
            over.push(format!("src/{rel}: {n} lines of non-test code"));
        }
    }
    assert!(
        over.is_empty(),
        "{} file(s) over {MAX_LINES} lines of non-test code:\n{}",
        over.len(),
        over.join("\n")
    );
}

/// The checker has teeth: each form of import is seen, and what is only text
/// (comments, strings) is not.
#[test]
fn the_checker_catches_violations() {
    let reexports = root_reexports("pub mod error;\npub use error::{Error, Kind, Result};\n");
    let check = |file: &str, source: &str| violations(file, source, &reexports);
    // Exactly one violation, reported as `starts`.
    let one = |file: &str, source: &str, starts: &str| {
        let found = check(file, source);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with(starts), "{found:?}");
    };

    one(
        "input/foo.rs",
        "use std::fs;\nuse crate::output::x;\n",
        "src/input/foo.rs:2: input imports output (crate::output::x)",
    );

    // A group: `error` is allowed in a codec, `plan` is not; the line is the name's.
    one(
        "codec/x.rs",
        "use crate::{\n    error::Error,\n    plan::{Entry, Plan},\n    Result,\n};\n",
        "src/codec/x.rs:3: codec imports plan",
    );

    // `super` out of the folder (from a test module inside plan/x.rs), and
    // `super` that stays inside it.
    one(
        "plan/x.rs",
        "use super::sibling;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::super::output::Thing;\n}\n",
        "src/plan/x.rs:5: plan imports output (super::super::super::output::Thing) [test code]",
    );
    assert_eq!(check("plan/mod.rs", "use super::input::X;\n").len(), 0);
    one(
        "plan/mod.rs",
        "use super::output::X;\n",
        "src/plan/mod.rs:1: plan imports output",
    );

    // Inline paths, in code; not in comments or strings.
    one(
        "store/cache.rs",
        "// crate::plan::Entry\n/* crate::plan */\nfn f(e: crate::plan::Entry) -> &'static str {\n    \"crate::plan::x\"\n}\n",
        "src/store/cache.rs:3: store imports plan (crate::plan::Entry)",
    );

    // A quote in a character literal does not start a string.
    one(
        "store/x.rs",
        "fn q() -> char { '\\'' }\nfn r() { crate::output::f(\"crate::plan\") }\n",
        "src/store/x.rs:2: store imports output",
    );

    // Anything of ours but `error` in util; a module's own parts are fine.
    assert_eq!(
        check("util/a.rs", "use crate::util::b;\nuse crate::Error;\n").len(),
        0
    );
    assert_eq!(check("util/a.rs", "use crate::pki::Pki;\n").len(), 1);
    assert_eq!(
        check(
            "output/a.rs",
            "use crate::{plan::Plan, input::Inventory};\n"
        )
        .len(),
        1
    );

    // Line counting: blank and comment lines and the test module do not count.
    let source = "//! doc\n\nfn a() {}\n    // note\nfn b() {}\n#[cfg(test)]\nmod tests {}\n";
    assert_eq!(non_test_lines(source), 2);
}

// ---------------------------------------------------------------- files

/// Every `.rs` file under `src/`, relative to it, sorted.
fn rust_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(Path::new(SRC), &mut files);
    let mut out: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(SRC).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

/// The files the import rules apply to: all but the binary's.
fn library_files() -> Vec<String> {
    rust_files()
        .into_iter()
        .filter(|rel| {
            let top = module_path(rel).first().cloned().unwrap_or_default();
            !BINARY.contains(&top.as_str())
        })
        .collect()
}

/// `input/recipe.rs` → `[input, recipe]`, `plan/mod.rs` → `[plan]`, `lib.rs` → `[]`.
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if parts.last().is_some_and(|p| p == "mod") || parts == ["lib"] {
        parts.pop();
    }
    parts
}

fn non_test_lines(source: &str) -> usize {
    source
        .lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .filter(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with("//")
        })
        .count()
}

// ---------------------------------------------------------------- imports

/// An import, resolved: the top-level module it reaches, where, and as written.
struct Import {
    top: String,
    line: usize,
    written: String,
}

/// The violations in one file (`rel` is its path under `src/`).
fn violations(rel: &str, source: &str, reexports: &BTreeMap<String, String>) -> Vec<String> {
    let file_module = module_path(rel);
    let Some(own) = file_module.first() else {
        return Vec::new(); // the crate root
    };
    let Some((_, rule)) = RULES.iter().find(|(m, _)| m == own) else {
        return Vec::new();
    };
    let tests_from = source
        .lines()
        .position(|l| l.trim_start().starts_with("#[cfg(test)]"))
        .map_or(usize::MAX, |i| i + 1);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for import in imports(&file_module, source, reexports) {
        let broken = import.top != *own
            && match rule {
                Rule::Not(banned) => banned.contains(&import.top.as_str()),
                Rule::Only(allowed) => !allowed.contains(&import.top.as_str()),
            };
        if broken && seen.insert((import.line, import.top.clone())) {
            let test = if import.line >= tests_from {
                " [test code]"
            } else {
                ""
            };
            out.push(format!(
                "src/{rel}:{}: {own} imports {} ({}){test}: {}",
                import.line,
                import.top,
                import.written,
                describe(rule)
            ));
        }
    }
    out
}

fn describe(rule: &Rule) -> String {
    match rule {
        Rule::Not(banned) => format!("must not import {}", banned.join(" or ")),
        Rule::Only(allowed) => format!("imports nothing of ours but {}", allowed.join(", ")),
    }
}

/// Names the crate root re-exports (`pub use error::{Error, Result}`), by the
/// module they come from: `crate::Error` reaches `error`.
fn root_reexports(lib_rs: &str) -> BTreeMap<String, String> {
    let tokens = tokenize(lib_rs);
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i].text == "use" {
            let (paths, end) = use_tree(&tokens, i + 1);
            for path in paths {
                let (first, last) = (&path[0].text, &path[path.len() - 1].text);
                if MODULES.contains(&first.as_str()) {
                    out.insert(last.clone(), first.clone());
                }
            }
            i = end;
        }
        i += 1;
    }
    out
}

/// Every path into the crate that `source` writes, in `use` items or inline.
fn imports(
    file_module: &[String],
    source: &str,
    reexports: &BTreeMap<String, String>,
) -> Vec<Import> {
    let tokens = tokenize(source);
    // Inline modules (`mod tests { … }`) around the current token: name, brace depth.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let module: Vec<String> = file_module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        match tokens[i].text.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).is_some_and(|t| t.text == "{") => {
                inline.push((tokens[i + 1].text.clone(), depth));
            }
            "use" => {
                let (paths, end) = use_tree(&tokens, i + 1);
                out.extend(paths.iter().filter_map(|p| resolve(&module, p, reexports)));
                i = end;
            }
            "crate" | "super" | "self"
                if tokens.get(i + 1).is_some_and(|t| t.text == "::")
                    && (i == 0 || tokens[i - 1].text != "::") =>
            {
                let mut path = vec![tokens[i].clone()];
                let mut j = i + 1;
                while tokens.get(j).is_some_and(|t| t.text == "::")
                    && tokens.get(j + 1).is_some_and(|t| is_ident(&t.text))
                {
                    path.push(tokens[j + 1].clone());
                    j += 2;
                }
                out.extend(resolve(&module, &path, reexports));
                i = j - 1;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The top-level module a path written in `module` reaches, if it is ours.
fn resolve(
    module: &[String],
    path: &[Token],
    reexports: &BTreeMap<String, String>,
) -> Option<Import> {
    let written = path
        .iter()
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join("::");
    let supers = path.iter().take_while(|t| t.text == "super").count();
    let (base, rest): (&[String], &[Token]) = match path[0].text.as_str() {
        "crate" => (&[], &path[1..]),
        "self" => (module, &path[1..]),
        "super" => (
            &module[..module.len().checked_sub(supers)?],
            &path[supers..],
        ),
        _ if module.is_empty() => (&[], path),
        _ => return None, // another crate, or a name in scope
    };
    let (top, line) = match base.first() {
        Some(top) => (top.clone(), path[0].line),
        None => {
            let first = rest.first()?;
            let top = reexports.get(&first.text).unwrap_or(&first.text).clone();
            (top, first.line)
        }
    };
    Some(Import { top, line, written })
}

/// The paths of a `use` tree starting at `tokens[start]`, and the index of its `;`.
fn use_tree(tokens: &[Token], start: usize) -> (Vec<Vec<Token>>, usize) {
    fn tree(tokens: &[Token], mut i: usize, prefix: &[Token], out: &mut Vec<Vec<Token>>) -> usize {
        let mut path = prefix.to_vec();
        while i < tokens.len() {
            match tokens[i].text.as_str() {
                "::" => i += 1,
                "{" => {
                    i += 1;
                    while i < tokens.len() && tokens[i].text != "}" {
                        i = tree(tokens, i, &path, out);
                        if tokens.get(i).is_some_and(|t| t.text == ",") {
                            i += 1;
                        }
                    }
                    return i + 1;
                }
                "*" => {
                    out.push(path);
                    return i + 1;
                }
                "as" => i += 2,
                "," | "}" | ";" => {
                    if path.len() > prefix.len() {
                        out.push(path);
                    }
                    return i;
                }
                _ => {
                    path.push(tokens[i].clone());
                    i += 1;
                }
            }
        }
        i
    }
    let mut out = Vec::new();
    let mut i = tree(tokens, start, &[], &mut out);
    while i < tokens.len() && tokens[i].text != ";" {
        i += 1;
    }
    // `use self::x` or `use {…}` groups may leave `self` as a leaf: `a::{self}` is `a`.
    for p in &mut out {
        if p.len() > 1 && p.last().is_some_and(|t| t.text == "self") {
            p.pop();
        }
    }
    (out, i)
}

// ---------------------------------------------------------------- tokens

#[derive(Clone, Debug)]
struct Token {
    text: String,
    line: usize,
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::` and single punctuation, with their lines; comments,
/// strings and character literals dropped.
fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut nest = 0;
            loop {
                if at(i) == '/' && at(i + 1) == '*' {
                    nest += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    nest -= 1;
                    i += 2;
                    if nest == 0 {
                        break;
                    }
                } else if i >= chars.len() {
                    break;
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&chars, i) {
            // r"…", r#"…"#, br"…": up to the quote followed by as many #.
            i += chars[i..].iter().position(|&c| c == '"').unwrap() + 1;
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            while i < chars.len() && !chars[i..].starts_with(&close) {
                line += usize::from(chars[i] == '\n');
                i += 1;
            }
            i += close.len();
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                line += usize::from(at(i) == '\n');
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 3; // the quote, the backslash and the escaped character
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                text: chars[start..i].iter().collect(),
                line,
            });
        } else if c == ':' && at(i + 1) == ':' {
            out.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

/// At a raw string (`r"`, `r#"`, `br"`, …): how many `#` it has.
fn raw_string_start(chars: &[char], i: usize) -> Option<usize> {
    // Not the end of an identifier (`for"` cannot happen, but `bar#` could).
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return None;
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|&&c| c == '#').count();
    (chars.get(j + hashes) == Some(&'"')).then_some(hashes)
}
