//! Loading the YAML of kubeconfigs and the encryption config, whoever wrote
//! them. The loader copies a node for every alias (`*a`), so a few hundred
//! bytes of nested aliases grow into gigabytes, and drops nested values
//! recursively, so a deep enough nesting overflows the stack. Neither is in a
//! file imgbuild or kubectl writes: the events are read first, and aliases or
//! more than [`MAX_DEPTH`] levels are refused before anything is built.

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::{Yaml, YamlLoader};

/// Nesting the files need: a kubeconfig has 4 levels, the encryption config 7.
const MAX_DEPTH: usize = 32;

/// The first document of `text`. Errors give a position, never content.
pub(crate) fn load(text: &str) -> Result<Yaml, String> {
    let bad = |e: yaml_rust2::ScanError| format!("is not valid YAML (line {})", e.marker().line());
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        let (event, mark) = parser.next_token().map_err(bad)?;
        match event {
            Event::StreamEnd => break,
            Event::Alias(_) => {
                return Err(format!(
                    "uses a YAML alias (line {}); imgbuild reads kubeconfigs and encryption configs without aliases",
                    mark.line()
                ));
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "nests more than {MAX_DEPTH} levels deep (line {})",
                        mark.line()
                    ));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let mut docs = YamlLoader::load_from_str(text).map_err(bad)?;
    if docs.is_empty() {
        return Err("is empty".into());
    }
    Ok(docs.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_deep_nesting_are_refused_early() {
        let mut bomb =
            String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
        for (i, prev) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().enumerate() {
            let name = (b'b' + i as u8) as char;
            let refs = vec![format!("*{prev}"); 9].join(",");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let err = load(&bomb).unwrap_err();
        assert!(err.contains("alias"), "{err}");
        let deep = "- ".repeat(100_000) + "x\n";
        assert!(load(&deep).unwrap_err().contains("levels deep"));
        let flow = "[".repeat(10_000);
        assert!(load(&flow).is_err());
        assert_eq!(load("a: 1\n").unwrap()["a"].as_i64(), Some(1));
        assert!(load("").unwrap_err().contains("empty"));
    }
}
