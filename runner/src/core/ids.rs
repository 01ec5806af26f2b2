//! Ids read back from a root's files (run ids, migration ids) become parts
//! of file and container names, so they are checked before use: a journal or
//! report whose id could name another path (`../x`, `a/b`) or carry control
//! characters is refused as not being migrate's.

/// The longest id accepted.
const MAX_LEN: usize = 64;

/// `Ok` for a usable id: 1 to 64 ASCII letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit.
pub(crate) fn check(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_LEN
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a valid id (1 to {MAX_LEN} letters, digits, '.', '_' or '-')",
            id.chars().take(MAX_LEN).collect::<String>()
        ))
    }
}

/// For `#[serde(deserialize_with)]` on an id field.
pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id = <String as serde::Deserialize>::deserialize(d)?;
    check(&id).map_err(serde::de::Error::custom)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_name_another_path_are_refused() {
        for good in ["20261201120944-1a2b", "manual", "m1", "a.b_c-d"] {
            assert!(check(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "a\nb",
            "x\u{1b}[31m",
            &"a".repeat(65),
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        let e = serde_json::from_str::<Wrapper>(r#"{"id": "../../etc/x"}"#).unwrap_err();
        assert!(e.to_string().contains("is not a valid id"), "{e}");
    }

    #[derive(Debug, serde::Deserialize)]
    struct Wrapper {
        #[serde(deserialize_with = "deserialize")]
        #[allow(dead_code)]
        id: String,
    }
}
