//! Finds the line of a key path like `rules[2].prefix` in TOML text, so that problems found
//! after parsing can still point at the line to fix.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The 1-based line where `path` (or its nearest existing parent) is written, if any.
pub(super) fn line_of(text: &str, path: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut span = None;
    let mut table: Option<&DeTable> = Some(root.get_ref());
    let mut value: Option<&Spanned<DeValue>> = None;
    for segment in segments(path) {
        let next = match segment {
            Segment::Key(name) => table.and_then(|t| {
                t.iter()
                    .find(|(k, _)| k.get_ref() == name)
                    .map(|(k, v)| (k.span(), v))
            }),
            Segment::Index(i) => value
                .and_then(|v| v.get_ref().as_array())
                .and_then(|a| a.get(i))
                .map(|v| (v.span(), v)),
        };
        let Some((key_span, v)) = next else { break };
        span = Some(key_span);
        value = Some(v);
        table = v.get_ref().as_table();
    }
    let offset = span?.start;
    Some(text[..offset.min(text.len())].matches('\n').count() + 1)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        for index in rest.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::line_of;

    #[test]
    fn finds_nested_keys_and_array_items() {
        let text = "[cache]\nttl = \"5m\"\ncapacity = \"0\"\n\n[[rules]]\nbucket = \"a\"\n\n[[rules]]\nbucket = \"b\"\nprefix = \"x\"\n";
        assert_eq!(line_of(text, "cache.capacity"), Some(3));
        assert_eq!(line_of(text, "rules[1].prefix"), Some(10));
        assert_eq!(line_of(text, "rules[0].bucket"), Some(6));
        // a missing key points at its parent
        assert_eq!(line_of(text, "cache.nothing"), Some(1));
        assert_eq!(line_of(text, "nothing"), None);
    }
}
