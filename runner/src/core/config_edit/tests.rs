//! Each format: a key changed with the rest byte for byte, a key added, and
//! the refusals.

use super::*;
use serde_json::json;

fn set(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

const TOML: &str = r#"# inventory service
name = "inventory"   # shown in the UI

[storage]
# where the inventory lives
backend = "etcd"     # etcd or postgresql
url = 'http://127.0.0.1:2379'
timeout = 5

[log]
level = "info"
"#;

#[test]
fn toml_keys_change_in_place_and_the_rest_stays_byte_for_byte() {
    let out = edit(
        Format::Toml,
        TOML,
        &set(&[
            ("storage.backend", json!("postgresql")),
            ("storage.timeout", json!(10)),
        ]),
    )
    .unwrap();
    assert_eq!(
        out,
        TOML.replace(r#""etcd""#, r#""postgresql""#)
            .replace("timeout = 5", "timeout = 10")
    );
    let out = edit(
        Format::Toml,
        TOML,
        &set(&[("storage.dsn", json!("host=db"))]),
    )
    .unwrap();
    assert!(
        out.starts_with(&TOML[..TOML.find("\n[log]").unwrap()]),
        "{out}"
    );
    assert!(out.contains("dsn = \"host=db\"\n"), "{out}");
    let e = edit(Format::Toml, TOML, &set(&[("storage", json!("x"))])).unwrap_err();
    assert!(e.contains("is a table"), "{e}");
    let e = edit(Format::Toml, "a = [1\n", &set(&[("a", json!(1))])).unwrap_err();
    assert!(e.starts_with("not valid TOML") && !e.contains('\n'), "{e}");
}

const INI: &str = "; controller\ndebug=false\n\n[database]\nconnection = sqlite:////var/lib/c.db   \nretries: 3\n\n[paths]\n\tdata = /var/lib/c\n";

#[test]
fn ini_keys_keep_their_delimiter_spacing_and_quotes() {
    let out = edit(
        Format::Ini,
        INI,
        &set(&[
            ("database.connection", json!("postgresql://c@db/c")),
            ("database.retries", json!(5)),
            ("debug", json!(true)),
            ("paths.data", json!("/srv/c")),
        ]),
    )
    .unwrap();
    assert_eq!(
        out,
        "; controller\ndebug=true\n\n[database]\nconnection = postgresql://c@db/c   \nretries: 5\n\n[paths]\n\tdata = /srv/c\n"
    );
    let out = edit(
        Format::Ini,
        INI,
        &set(&[("database.pool", json!(4)), ("cache.size", json!("1G"))]),
    )
    .unwrap();
    assert_eq!(
        out,
        "; controller\ndebug=false\n\n[database]\nconnection = sqlite:////var/lib/c.db   \nretries: 3\npool = 4\n\n[paths]\n\tdata = /var/lib/c\n\n[cache]\nsize = 1G\n"
    );
    let quoted = edit(
        Format::Ini,
        "[a]\nb = \"x\"\n",
        &set(&[("a.b", json!("y z"))]),
    )
    .unwrap();
    assert_eq!(quoted, "[a]\nb = \"y z\"\n");
    assert_eq!(
        values(Format::Ini, INI)["database.connection"],
        "sqlite:////var/lib/c.db"
    );
}

fn values(format: Format, text: &str) -> BTreeMap<String, String> {
    match format {
        Format::Ini => ini::values(text).unwrap(),
        Format::Toml => toml::values(text).unwrap(),
        Format::Yaml => yaml::values(text).unwrap(),
    }
}

#[test]
fn ini_refuses_what_it_cannot_edit_faithfully() {
    let twice = "[a]\nb = 1\nb = 2\n";
    let e = edit(Format::Ini, twice, &set(&[("a.b", json!(3))])).unwrap_err();
    assert!(e.contains("given 2 times"), "{e}");
    let continued = "[a]\nb = one\n  two\nc = 1\n";
    let e = edit(Format::Ini, continued, &set(&[("a.b", json!("x"))])).unwrap_err();
    assert!(e.contains("continues on the next line"), "{e}");
    assert_eq!(
        edit(Format::Ini, continued, &set(&[("a.c", json!(2))])).unwrap(),
        "[a]\nb = one\n  two\nc = 2\n"
    );
    let e = edit(Format::Ini, "[a]\nnot a key\n", &set(&[("a.b", json!(1))])).unwrap_err();
    assert!(e.contains("line 2"), "{e}");
}

const YAML: &str = "# controller settings\ndatabase:\n  backend: etcd   # etcd or postgresql\n  url: \"http://127.0.0.1:2379\"\n  options:\n    timeout: 5\n  hosts:\n  - a\n  - b\nlog_level: 'info'\n";

#[test]
fn yaml_scalars_change_in_place_keeping_quotes_and_comments() {
    let out = edit(
        Format::Yaml,
        YAML,
        &set(&[
            ("database.backend", json!("postgresql")),
            ("database.url", json!("postgresql://c@db/c")),
            ("database.options.timeout", json!(10)),
            ("log_level", json!("debug")),
        ]),
    )
    .unwrap();
    assert_eq!(
        out,
        "# controller settings\ndatabase:\n  backend: postgresql   # etcd or postgresql\n  url: \"postgresql://c@db/c\"\n  options:\n    timeout: 10\n  hosts:\n  - a\n  - b\nlog_level: 'debug'\n"
    );
    let out = edit(
        Format::Yaml,
        YAML,
        &set(&[("database.pool", json!(4)), ("cache", json!("yes"))]),
    )
    .unwrap();
    assert_eq!(
        out,
        "# controller settings\ndatabase:\n  backend: etcd   # etcd or postgresql\n  url: \"http://127.0.0.1:2379\"\n  options:\n    timeout: 5\n  hosts:\n  - a\n  - b\n  pool: 4\nlog_level: 'info'\ncache: \"yes\"\n",
        "text that would read as a boolean is quoted"
    );
}

#[test]
fn yaml_beyond_block_mappings_of_scalars_is_refused_with_the_reason() {
    for (text, key, says) in [
        ("a: |\n  x\n", "a", "block scalar"),
        ("a: [1, 2]\n", "a", "flow collection"),
        ("a: {b: 1}\n", "a.b", "is a value, not a mapping"),
        ("base: &b x\na: *b\n", "a", "uses aliases"),
        ("base: &b x\na: 1\n", "base", "anchored, aliased or tagged"),
        ("a:\n  b: 1\n", "a", "a mapping or nothing"),
        ("a: 1\n---\nb: 2\n", "a", "several documents"),
        ("- a\n- b\n", "a", "not a mapping"),
        ("a:\n  b: 1\n", "x.y", "has no mapping x"),
    ] {
        let e = edit(Format::Yaml, text, &set(&[(key, json!("v"))])).unwrap_err();
        assert!(e.contains(says), "{text:?}: {e}");
        assert_eq!(e.lines().count(), 1);
    }
}

#[test]
fn the_format_comes_from_the_name_unless_given() {
    assert_eq!(Format::of("/etc/c/c.toml", None), Ok(Format::Toml));
    assert_eq!(Format::of("/etc/c/c.conf", None), Ok(Format::Ini));
    assert_eq!(Format::of("/etc/c/c.yml", None), Ok(Format::Yaml));
    assert_eq!(
        Format::of("/etc/c/config", Some(Format::Ini)),
        Ok(Format::Ini)
    );
    assert!(
        Format::of("/etc/c/config", None)
            .unwrap_err()
            .contains("set `format`")
    );
    assert!(check_set(&set(&[("a", json!([1]))])).is_err());
    assert!(check_set(&set(&[("a..b", json!(1))])).is_err());
    assert!(check_set(&BTreeMap::new()).is_err());
}

#[test]
fn changes_say_what_each_key_was() {
    let c = changes(
        Format::Toml,
        TOML,
        &set(&[
            ("storage.backend", json!("postgresql")),
            ("storage.dsn", json!("x")),
        ]),
    )
    .unwrap();
    assert_eq!(
        c,
        vec![
            (
                "storage.backend".into(),
                Some("etcd".into()),
                "postgresql".into()
            ),
            ("storage.dsn".into(), None, "x".into()),
        ]
    );
}

#[test]
fn edge_cases_of_each_format_keep_the_file_as_it_was() {
    // TOML: dotted keys, a key added to a new table.
    let dotted = "server.port = 80 # http\nserver.host = \"a\"\n";
    let out = edit(Format::Toml, dotted, &set(&[("server.port", json!(8080))])).unwrap();
    assert_eq!(out, "server.port = 8080 # http\nserver.host = \"a\"\n");
    let out = edit(Format::Toml, "a = 1\n", &set(&[("db.url", json!("x"))])).unwrap();
    assert!(
        out.starts_with("a = 1\n") && out.contains("[db]\nurl = \"x\"\n"),
        "{out}"
    );
    // INI: a key before any section, CRLF line endings, no final newline.
    let crlf = "top = 1\r\n[s]\r\nk = v";
    assert_eq!(
        edit(
            Format::Ini,
            crlf,
            &set(&[("top", json!(2)), ("s.k", json!("w"))])
        )
        .unwrap(),
        "top = 2\r\n[s]\r\nk = w"
    );
    assert_eq!(
        edit(Format::Ini, crlf, &set(&[("s.new", json!(3))])).unwrap(),
        "top = 1\r\n[s]\r\nk = v\r\nnew = 3\r\n"
    );
    // YAML: CRLF, quoted keys, comments between keys, an empty file.
    let yaml = "# c\r\n\"db\":\r\n  # the url\r\n  'url': x\r\n";
    assert_eq!(
        edit(Format::Yaml, yaml, &set(&[("db.url", json!("z"))])).unwrap(),
        "# c\r\n\"db\":\r\n  # the url\r\n  'url': z\r\n"
    );
    assert_eq!(
        edit(Format::Yaml, "", &set(&[("a", json!(1))])).unwrap(),
        "a: 1\n"
    );
    assert_eq!(
        edit(Format::Yaml, "a: 1", &set(&[("b", json!(true))])).unwrap(),
        "a: 1\nb: true\n"
    );
    // A value that needs quoting in YAML is quoted; the file reads back.
    let out = edit(Format::Yaml, "a: x\n", &set(&[("a", json!("b: c # d"))])).unwrap();
    assert_eq!(out, "a: \"b: c # d\"\n");
}

#[test]
fn nested_aliases_are_refused_before_they_expand() {
    // Nine levels of nine aliases: 9^9 nodes if the loader expanded them.
    let mut text = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 9].join(", ");
        text.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
    }
    text.push_str("key: value\n");
    let e = edit(Format::Yaml, &text, &set(&[("key", json!("v"))])).unwrap_err();
    assert!(e.contains("uses aliases"), "{e}");
}
