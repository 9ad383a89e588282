//! `${VAR}` interpolation as compose does it: `$VAR`, `${VAR}`, `${VAR:-default}` /
//! `${VAR-default}`, `${VAR:?error}` / `${VAR?error}`, `${VAR:+replacement}` /
//! `${VAR+replacement}` (nested in the default and replacement words), and `$$` for a literal
//! `$`. Applied to every string value of a file's YAML tree (never to keys).

use std::collections::BTreeSet;
use yaml_serde::Value;

/// Why a string cannot be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    /// `${VAR?msg}` / `${VAR:?msg}` with VAR unset (or empty).
    #[error("required variable {var} is missing a value: {message}")]
    Required {
        /// The variable.
        var: String,
        /// The message the file gives.
        message: String,
    },
    /// A `${` without its `}`, or a name that is not a variable name.
    #[error("invalid interpolation format in {text:?}: write ${{NAME}}, ${{NAME:-default}} or $$ for a literal $")]
    Syntax {
        /// The whole string.
        text: String,
    },
}

/// Interpolates one string; `lookup` answers a variable's value (`None`: unset). Unset
/// variables without a default become empty and are added to `unset`.
pub fn interpolate_str(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut BTreeSet<String>,
) -> Result<String, InterpolateError> {
    let syntax = || InterpolateError::Syntax {
        text: s.to_string(),
    };
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(syntax)?;
            out.push_str(&braced(&body[..end], lookup, unset).map_err(|e| match e {
                InterpolateError::Syntax { .. } => syntax(),
                other @ InterpolateError::Required { .. } => other,
            })?);
            rest = &body[end + 1..];
        } else {
            let n = name_len(after);
            if n == 0 {
                // A lone `$` (e.g. at the end, or before a space) stays as it is.
                out.push('$');
                rest = after;
                continue;
            }
            out.push_str(&value_of(&after[..n], lookup, unset));
            rest = &after[n..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Interpolates every string value of a tree in place; errors are returned with the dotted
/// path of the value (`services.web.image`).
pub fn interpolate_tree(
    v: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut BTreeSet<String>,
) -> Result<(), (String, InterpolateError)> {
    walk(v, &mut Vec::new(), lookup, unset)
}

fn walk(
    v: &mut Value,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut BTreeSet<String>,
) -> Result<(), (String, InterpolateError)> {
    match v {
        Value::String(s) => {
            *s = interpolate_str(s, lookup, unset).map_err(|e| (path.join("."), e))?;
        }
        Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                path.push(i.to_string());
                walk(item, path, lookup, unset)?;
                path.pop();
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                path.push(crate::model::key_text(k));
                walk(item, path, lookup, unset)?;
                path.pop();
            }
        }
        Value::Tagged(t) => walk(&mut t.value, path, lookup, unset)?,
        _ => {}
    }
    Ok(())
}

/// Length of the variable name at the start of `s` (letters, digits, `_`; not starting with a
/// digit).
fn name_len(s: &str) -> usize {
    let n = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    if s.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        0
    } else {
        n
    }
}

/// Index of the `}` closing a `${`, counting nested `${…}`.
fn closing_brace(body: &str) -> Option<usize> {
    let b = body.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn value_of(
    name: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut BTreeSet<String>,
) -> String {
    lookup(name).unwrap_or_else(|| {
        unset.insert(name.to_string());
        String::new()
    })
}

/// The value of `${body}`.
fn braced(
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut BTreeSet<String>,
) -> Result<String, InterpolateError> {
    let n = name_len(body);
    let bad = || InterpolateError::Syntax {
        text: body.to_string(),
    };
    if n == 0 {
        return Err(bad());
    }
    let (name, op) = body.split_at(n);
    if op.is_empty() {
        return Ok(value_of(name, lookup, unset));
    }
    let (colon, op) = match op.strip_prefix(':') {
        Some(o) => (true, o),
        None => (false, op),
    };
    let mut chars = op.chars();
    let kind = chars.next().ok_or_else(bad)?;
    let word = chars.as_str();
    let value = lookup(name);
    // With `:`, an empty value counts as unset.
    let present = value.as_deref().is_some_and(|v| !colon || !v.is_empty());
    match kind {
        '-' if present => Ok(value.unwrap_or_default()),
        '-' => interpolate_str(word, lookup, unset),
        '?' if present => Ok(value.unwrap_or_default()),
        '?' => Err(InterpolateError::Required {
            var: name.to_string(),
            message: interpolate_str(word, lookup, unset)?,
        }),
        '+' if present => interpolate_str(word, lookup, unset),
        '+' => Ok(String::new()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(s: &str, vars: &[(&str, &str)]) -> Result<(String, BTreeSet<String>), InterpolateError> {
        let env: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut unset = BTreeSet::new();
        let out = interpolate_str(s, &|k| env.get(k).cloned(), &mut unset)?;
        Ok((out, unset))
    }

    #[test]
    fn plain_braced_and_escaped() {
        let vars = [("TAG", "v1"), ("EMPTY", "")];
        assert_eq!(run("img:${TAG}", &vars).unwrap().0, "img:v1");
        assert_eq!(run("img:$TAG-x", &vars).unwrap().0, "img:v1-x");
        assert_eq!(run("cost $$5 and $", &vars).unwrap().0, "cost $5 and $");
        let (out, unset) = run("a${NOPE}b", &vars).unwrap();
        assert_eq!(out, "ab");
        assert!(unset.contains("NOPE"));
    }

    #[test]
    fn defaults_and_replacements() {
        let vars = [("SET", "x"), ("EMPTY", "")];
        assert_eq!(run("${NOPE:-d}", &vars).unwrap().0, "d");
        assert_eq!(run("${EMPTY:-d}", &vars).unwrap().0, "d");
        assert_eq!(run("${EMPTY-d}", &vars).unwrap().0, "");
        assert_eq!(run("${SET:-d}", &vars).unwrap().0, "x");
        assert_eq!(run("${NOPE:-${SET}-y}", &vars).unwrap().0, "x-y");
        assert_eq!(run("${SET:+on}", &vars).unwrap().0, "on");
        assert_eq!(run("${EMPTY:+on}", &vars).unwrap().0, "");
        assert_eq!(run("${EMPTY+on}", &vars).unwrap().0, "on");
    }

    #[test]
    fn required_and_syntax_errors() {
        let e = run("${DB_URL?set DB_URL in .env}", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "required variable DB_URL is missing a value: set DB_URL in .env"
        );
        assert!(run("${EMPTY:?no}", &[("EMPTY", "")]).is_err());
        assert_eq!(run("${EMPTY?no}", &[("EMPTY", "")]).unwrap().0, "");
        assert!(matches!(
            run("${OPEN", &[]).unwrap_err(),
            InterpolateError::Syntax { .. }
        ));
        assert!(matches!(
            run("${1X}", &[]).unwrap_err(),
            InterpolateError::Syntax { .. }
        ));
    }

    #[test]
    fn tree_paths_in_errors() {
        let mut v: Value =
            yaml_serde::from_str("services:\n  web:\n    image: ${IMG:?say which}\n").unwrap();
        let mut unset = BTreeSet::new();
        let (path, _) = interpolate_tree(&mut v, &|_| None, &mut unset).unwrap_err();
        assert_eq!(path, "services.web.image");
    }
}
