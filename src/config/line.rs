//! Control path: where a key is in the config text, for errors: the
//! validated config keeps no spans, so an error's key (`split.stable`,
//! `versions[1].weight`, `rollout.steps[0]`) is looked up in the text
//! again, parsed with spans, only when there is an error.

use toml::de::{DeTable, DeValue};

/// The 1-based line of the value at `key` in `text`; when the last parts
/// of `key` are not in the text (a key left out), the line of the deepest
/// part that is. `None` when not even the first part is (a key set by the
/// environment), or the text does not parse.
pub fn of_key(text: &str, key: &str) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    let mut table = Some(doc.get_ref());
    let mut at: Option<usize> = None;
    for part in key.split('.') {
        let (name, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let Some(value) = table.and_then(|t| {
            t.iter()
                .find(|(k, _)| k.get_ref().as_ref() == name)
                .map(|(_, v)| v)
        }) else {
            break;
        };
        at = Some(value.span().start);
        let mut value = value;
        for index in indices
            .split(']')
            .filter_map(|i| i.strip_prefix('['))
            .map(str::parse::<usize>)
        {
            let (Ok(index), DeValue::Array(items)) = (index, value.get_ref()) else {
                break;
            };
            let Some(item) = items.get(index) else {
                break;
            };
            at = Some(item.span().start);
            value = item;
        }
        table = match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    let at = at?;
    Some(text.get(..at)?.matches('\n').count() + 1)
}

/// The key (`log.access_log`, `versions[0].endpoints`) whose name or value
/// holds byte `at` of `text`, the deepest one: where a value of the wrong
/// type, or an unknown key, that the TOML parser found is. `None` when no
/// key holds it, or the text does not parse.
pub fn key_at(text: &str, at: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    in_table(doc.get_ref(), at)
}

/// [`key_at`] within `table`. A table's span may be its header alone (its
/// keys follow it), so every table is searched whatever its span.
fn in_table(table: &DeTable<'_>, at: usize) -> Option<String> {
    table.iter().find_map(|(name, value)| {
        if name.span().contains(&at) {
            return Some(name.get_ref().to_string());
        }
        in_value(value, at).map(|rest| format!("{}{rest}", name.get_ref()))
    })
}

/// The rest of the key (`.access_log`, `[0].endpoints`, or nothing for the
/// value itself) under which `value` holds `at`.
fn in_value(value: &toml::Spanned<DeValue<'_>>, at: usize) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(t) => in_table(t, at)
            .map(|key| format!(".{key}"))
            .or_else(|| value.span().contains(&at).then(String::new)),
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| in_value(item, at).map(|rest| format!("[{i}]{rest}")))
            .or_else(|| value.span().contains(&at).then(String::new)),
        _ => value.span().contains(&at).then(String::new),
    }
}

#[cfg(test)]
mod tests {
    use super::{key_at, of_key};

    #[test]
    fn finds_the_key_that_holds_a_place_in_the_text() {
        let text = "[log]\naccess_log = \"yes\"\n\n[[versions]]\nname = \"v1\"\nendpoints = \"127.0.0.1:1\"\n\n[admin.x]\ny = 1\n";
        let at = |s: &str| text.find(s).unwrap();
        assert_eq!(
            key_at(text, at("\"yes\"")).as_deref(),
            Some("log.access_log")
        );
        assert_eq!(
            key_at(text, at("\"127")).as_deref(),
            Some("versions[0].endpoints")
        );
        assert_eq!(key_at(text, at("x]")).as_deref(), Some("admin.x"));
        assert_eq!(key_at(text, at("y =")).as_deref(), Some("admin.x.y"));
        assert_eq!(key_at("[log", 1), None);
    }

    #[test]
    fn finds_the_line_of_a_key_or_of_its_deepest_part() {
        let text = "[split]\nstable = \"v9\"\n\n[[versions]]\nname = \"v1\"\nweight = 1\n\n[[versions]]\nname = \"v2\"\nweight = -1\n\n[rollout]\nsteps = [\n  10,\n  nan,\n]\n";
        assert_eq!(of_key(text, "split.stable"), Some(2));
        assert_eq!(of_key(text, "versions[1].weight"), Some(10));
        assert_eq!(of_key(text, "versions[0].name"), Some(5));
        assert_eq!(of_key(text, "rollout.steps[1]"), Some(15));
        // Left out: the deepest part that is there.
        assert!(matches!(of_key(text, "versions[1].endpoints"), Some(8..=9)));
        assert_eq!(of_key(text, "split.override_header"), Some(1));
        // Not there at all, or not TOML.
        assert_eq!(of_key(text, "aws.region"), None);
        assert_eq!(of_key("[split", "split.stable"), None);
        assert_eq!(of_key(text, "versions[7].weight"), of_key(text, "versions"));
    }
}
