//! The grammar of registry image references,
//! `[host[:port]/]path[:tag][@algorithm:hex]`, as the distribution spec
//! writes it, checked by hand. The `oci-spec` crate's parser accepts the
//! same references (the unit tests below compare the two on thousands of
//! strings), but it compiles a regular expression of Unicode classes on
//! first use: 50 ms and 16 MB on every `migrate run`, more than the rest of
//! the host process before the container starts (BENCHMARKS.md).

/// Longest repository name (the path, `library/` before a Docker Hub name
/// of one component).
const NAME_MAX: usize = 255;

/// Why `reference` is not a valid registry reference, in the words of the
/// distribution spec's parsers; `None` when it is one.
pub(crate) fn invalid(reference: &str) -> Option<&'static str> {
    const FORMAT: &str = "invalid reference format";
    if reference.is_empty() {
        return Some("repository name must have at least one component");
    }
    let (named, digest) = match reference.split_once('@') {
        Some((named, digest)) => (named, Some(digest)),
        None => (reference, None),
    };
    let last_slash = named.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match named[last_slash..].split_once(':') {
        Some((_, tag)) => (&named[..named.len() - tag.len() - 1], Some(tag)),
        None => (named, None),
    };
    let name_ok = path(name)
        || name
            .split_once('/')
            .is_some_and(|(domain, rest)| host(domain) && path(rest));
    if !name_ok || !tag.is_none_or(tag_ok) || !digest.is_none_or(digest_format) {
        return Some(FORMAT);
    }
    if repository_len(name) > NAME_MAX {
        return Some("repository name must not be more than 255 characters");
    }
    let (algorithm, hex) = digest?.split_once(':')?;
    match (algorithm, hex.len()) {
        ("sha256", 64) | ("sha384", 96) | ("sha512", 128) => None,
        ("sha256" | "sha384" | "sha512", _) => Some("invalid checksum digest length"),
        _ => Some("unsupported digest algorithm"),
    }
}

/// `host[:port]`: dot-separated components of letters, digits and inner
/// hyphens, a port of digits.
fn host(domain: &str) -> bool {
    let (name, port) = match domain.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (domain, None),
    };
    let component = |c: &str| {
        !c.is_empty()
            && !c.starts_with('-')
            && !c.ends_with('-')
            && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    name.split('.').all(component)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Slash-separated components of lowercase letters and digits, joined
/// inside a component by one `.`, one `_`, `__` or any number of `-`.
fn path(name: &str) -> bool {
    name.split('/').all(|component| {
        let bytes = component.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
            return false;
        }
        bytes
            .split(alnum)
            .filter(|sep| !sep.is_empty())
            .all(|sep| matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|b| *b == b'-'))
    })
}

/// A word character, then up to 127 of words, dots and hyphens.
fn tag_ok(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    tag.len() <= 128
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// `algorithm:hex`: an algorithm of letter-led words joined by `+._-`, at
/// least 32 hexadecimal digits.
fn digest_format(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let word = |w: &str| {
        w.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && w.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    algorithm.split(['+', '.', '_', '-']).all(word)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The repository's length as registries count it: without its host, and
/// with `library/` before a Docker Hub name of one component.
fn repository_len(name: &str) -> usize {
    let (domain, rest) = match name.split_once('/') {
        Some((d, rest)) if d.contains(['.', ':']) || d == "localhost" => (d, rest),
        _ => ("docker.io", name),
    };
    let hub = matches!(domain, "docker.io" | "index.docker.io");
    rest.len() + if hub && !rest.contains('/') { 8 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `oci-spec`'s parser takes it.
    fn library(s: &str) -> Result<(), String> {
        s.parse::<oci_spec::distribution::Reference>()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn references_are_taken_or_refused_as_the_oci_spec_parser_does() {
        let hex = "0123456789abcdef".repeat(8);
        let mut cases: Vec<String> = [
            "localhost/migrate/debian-13:latest",
            "registry.example:5000/migrate/debian-13",
            "debian",
            "debian:13",
            "a__b/c.d/e---f:Tag_1.x-y",
            "a___b",
            "a..b",
            "a._b",
            "-a",
            "a-",
            "UPPER/lower",
            "lower/UPPER",
            "host:port/x",
            "host:5000",
            "host:5000/x:",
            "x:",
            ":tag",
            "/x",
            "x/",
            "x//y",
            "-host/x",
            "host-/x",
            "a.-b/x",
            "docker.io/debian",
            "index.docker.io/debian",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        cases.push(format!("x:{}", "t".repeat(128)));
        cases.push(format!("x:{}", "t".repeat(129)));
        cases.push("a".repeat(247));
        cases.push("a".repeat(248));
        cases.push(format!("localhost/{}", "a".repeat(255)));
        cases.push(format!("localhost/{}", "a".repeat(256)));
        cases.push(format!("a/{}", "b".repeat(253)));
        for (algorithm, len) in [
            ("sha256", 64),
            ("sha256", 63),
            ("sha384", 96),
            ("sha512", 128),
            ("sha512", 100),
            ("md5", 32),
            ("sha256+b64", 64),
            ("sha256", 31),
            ("1sha", 64),
            ("sha.", 64),
        ] {
            cases.push(format!("localhost/m@{algorithm}:{}", &hex[..len]));
            cases.push(format!("m:1@{algorithm}:{}", &hex[..len].to_uppercase()));
        }
        cases.push(format!("m@sha256:{}g", &hex[..63]));
        cases.push(format!("m@sha256{}", &hex[..64]));
        // And strings made of the grammar's pieces, many of them.
        let pieces = [
            "a",
            "z9",
            "B",
            "-",
            "--",
            ".",
            "_",
            "__",
            ":",
            "/",
            "@",
            "5000",
            "localhost",
            "x.y",
            "sha256:",
            "+",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let mut s = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            for i in 0..(state % 7 + 1) {
                s.push_str(pieces[((state >> (8 * i)) % pieces.len() as u64) as usize]);
            }
            if state % 5 == 0 {
                s.push_str(&hex[..64]);
            }
            cases.push(s);
        }
        let mut valid = 0;
        for case in &cases {
            let ours = invalid(case);
            match (ours, library(case)) {
                (None, Ok(())) => valid += 1,
                (Some(why), Err(e)) => assert_eq!(why, e, "{case:?}"),
                (ours, theirs) => panic!("{case:?}: ours {ours:?}, oci-spec {theirs:?}"),
            }
        }
        assert!(valid > 500, "only {valid} valid cases");
    }

    #[test]
    fn a_tag_is_ascii_where_oci_spec_takes_any_word_character() {
        assert_eq!(invalid("m:täg"), Some("invalid reference format"));
        assert!(library("m:täg").is_ok());
    }
}
