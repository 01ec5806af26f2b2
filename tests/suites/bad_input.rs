//! Bad input: each gives one clear line on stderr, exit code 2, and changes
//! nothing in the root.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::{Path, PathBuf};

use fixtures::{BASE_IMAGE, Fixtures, MIGRATION_IMAGE, serial, show, tree_checksum};

const GOOD_PLAN: &str = r#"
[[step]]
id = "package-db"
kind = "check-package-db"
phase = "check"

[[step]]
id = "upgrade-packages"
kind = "apt"
phase = "cutover"
"#;

/// Where a case puts its input.
enum Input<'a> {
    /// A `--plan` file with this text.
    Plan(&'a str),
    /// Raw bytes for a `--plan` file.
    PlanBytes(&'a [u8]),
    /// A drop-in `ROOT/etc/migrate/plan.d/50-case.toml`.
    Dropin(&'a str),
    /// `ROOT/var/lib/migrate/state.json`.
    Journal(&'a str),
    /// Only command-line arguments.
    Args,
}

struct Case<'a> {
    name: &'a str,
    input: Input<'a>,
    args: &'a [&'a str],
    expect: &'a str,
}

#[test]
fn each_bad_input_is_one_line_exit_2_and_changes_nothing() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let plan_path = scratch.path().join("plan.toml");
    let plan_arg = plan_path.display().to_string();
    let plan = |extra: &'static str| -> String { format!("{GOOD_PLAN}{extra}") };
    let dup =
        plan("\n[[step]]\nid = \"package-db\"\nkind = \"check-package-db\"\nphase = \"check\"\n");
    let late_check =
        plan("\n[[step]]\nid = \"late\"\nkind = \"check-package-db\"\nphase = \"check\"\n");
    let cases = [
        Case {
            name: "plan syntax",
            input: Input::Plan("[[step]\nid = 1\n"),
            args: &[],
            expect: "plan.toml:1:",
        },
        Case {
            name: "unknown kind",
            input: Input::Plan("[[step]]\nid = \"x\"\nkind = \"yum\"\nphase = \"cutover\"\n"),
            args: &[],
            expect: "plan.toml:3: key `kind`: unknown step kind \"yum\"",
        },
        Case {
            name: "missing option",
            input: Input::Plan("[[step]]\nid = \"x\"\nkind = \"command\"\nphase = \"cutover\"\n"),
            args: &[],
            expect: "plan.toml:1: step \"x\": missing option `command`",
        },
        Case {
            name: "missing kind",
            input: Input::Plan("[[step]]\nid = \"x\"\nphase = \"cutover\"\n"),
            args: &[],
            expect: "missing key `kind`",
        },
        Case {
            name: "duplicate id",
            input: Input::Plan(&dup),
            args: &[],
            expect: "plan.toml:13: key `id`: duplicate step id \"package-db\"",
        },
        Case {
            name: "phases out of order",
            input: Input::Plan(&late_check),
            args: &[],
            expect: "plan.toml:15: key `phase`: step \"late\" (check) comes after step \"upgrade-packages\" (cutover)",
        },
        Case {
            name: "unknown phase",
            input: Input::Plan("[[step]]\nid = \"x\"\nkind = \"apt\"\nphase = \"soon\"\n"),
            args: &[],
            expect: "plan.toml:4: key `phase`: unknown phase \"soon\"",
        },
        Case {
            name: "kind in a phase it cannot run in",
            input: Input::Plan("[[step]]\nid = \"x\"\nkind = \"apt\"\nphase = \"check\"\n"),
            args: &[],
            expect: "a apt step cannot run in the check phase",
        },
        Case {
            name: "bad step id",
            input: Input::Plan(
                "[[step]]\nid = \"no spaces\"\nkind = \"apt\"\nphase = \"cutover\"\n",
            ),
            args: &[],
            expect: "plan.toml:2: key `id`: \"no spaces\" is not a valid step id",
        },
        Case {
            name: "unreadable plan (not UTF-8)",
            input: Input::PlanBytes(b"\xff\xfe\x00binary"),
            args: &[],
            expect: "plan.toml: not UTF-8 text",
        },
        Case {
            name: "plan file missing",
            input: Input::Args,
            args: &["--plan", "/nonexistent/plan.toml"],
            expect: "--plan /nonexistent/plan.toml: no such file",
        },
        Case {
            name: "plan is a directory",
            input: Input::Args,
            args: &["--plan", "/etc"],
            expect: "--plan /etc: is a directory",
        },
        Case {
            name: "drop-in: bad option type",
            input: Input::Dropin("[[step]]\nid = \"disk-space\"\nmargin_mb = \"lots\"\n"),
            args: &[],
            expect: "50-case.toml:3: key `margin_mb`: expected an integer, found a string",
        },
        Case {
            name: "drop-in: unknown option",
            input: Input::Dropin("[[step]]\nid = \"disk-space\"\nmargni_mb = 5\n"),
            args: &[],
            expect: "50-case.toml:3: key `margni_mb`: unknown option for a check-disk-space step",
        },
        Case {
            name: "drop-in: no id",
            input: Input::Dropin("[[step]]\nkind = \"apt\"\n"),
            args: &[],
            expect: "50-case.toml:1: a step has no `id`",
        },
        Case {
            name: "drop-in: changes a kind",
            input: Input::Dropin("[[step]]\nid = \"upgrade-packages\"\nkind = \"apt-sources\"\n"),
            args: &[],
            expect: "50-case.toml:3: key `kind`: cannot change the kind of step \"upgrade-packages\"",
        },
        Case {
            name: "drop-in: unknown top-level key",
            input: Input::Dropin("steps = 1\n"),
            args: &[],
            expect: "50-case.toml:1: unknown key `steps`",
        },
        Case {
            name: "drop-in: enabled is not a boolean",
            input: Input::Dropin("[[step]]\nid = \"disk-space\"\nenabled = \"no\"\n"),
            args: &[],
            expect: "50-case.toml:3: key `enabled`: expected a boolean, found a string",
        },
        Case {
            name: "command env of the wrong type",
            input: Input::Dropin(
                "[[step]]\nid = \"hook\"\nkind = \"command\"\nphase = \"cutover\"\ncommand = [\"true\"]\nenv = { A = 1 }\n",
            ),
            args: &[],
            expect: "options of step hook",
        },
        Case {
            name: "exit codes as strings",
            input: Input::Dropin(
                "[[step]]\nid = \"hook\"\nkind = \"command\"\nphase = \"cutover\"\ncommand = [\"true\"]\nok_exit_codes = [\"0\"]\n",
            ),
            args: &[],
            expect: "key `ok_exit_codes`: expected an array of integers",
        },
        Case {
            name: "broken state journal",
            input: Input::Journal("{\"version\": 1,"),
            args: &[],
            expect: "parsing",
        },
        Case {
            name: "image without labels",
            input: Input::Args,
            args: &["--image", BASE_IMAGE],
            expect: "is not a migration image",
        },
        Case {
            name: "image that does not exist",
            input: Input::Args,
            args: &["--image", "localhost/migrate-test/none:1"],
            expect: "does not exist",
        },
        Case {
            name: "--dry-run with check",
            input: Input::Args,
            args: &["check", "--dry-run"],
            expect: "--dry-run applies to `migrate run` only",
        },
        Case {
            name: "unknown output format",
            input: Input::Args,
            args: &["--output", "xml"],
            expect: "invalid value 'xml' for '--output",
        },
    ];
    assert!(cases.len() >= 20);
    for case in cases {
        let dropin_dir = root.join("etc/migrate/plan.d");
        let journal = root.join("var/lib/migrate/state.json");
        let mut args: Vec<String> = Vec::new();
        if !case.args.contains(&"check") {
            args.push("run".into());
        }
        if !case.args.contains(&"--image") {
            args.extend(["--image".into(), MIGRATION_IMAGE.into()]);
        }
        match &case.input {
            Input::Plan(text) => {
                std::fs::write(&plan_path, text).unwrap();
                args.extend(["--plan".into(), plan_arg.clone()]);
            }
            Input::PlanBytes(bytes) => {
                std::fs::write(&plan_path, bytes).unwrap();
                args.extend(["--plan".into(), plan_arg.clone()]);
            }
            Input::Dropin(text) => {
                std::fs::create_dir_all(&dropin_dir).unwrap();
                std::fs::write(dropin_dir.join("50-case.toml"), text).unwrap();
            }
            Input::Journal(text) => {
                std::fs::create_dir_all(journal.parent().unwrap()).unwrap();
                std::fs::write(&journal, text).unwrap();
            }
            Input::Args => {}
        }
        args.extend(case.args.iter().map(|a| a.to_string()));
        let before = tree_checksum(&root.path).unwrap();
        let out = f
            .migrate()
            .args(&args)
            .arg("--root")
            .arg(&root.path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}: {}", case.name, show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.lines().count(),
            1,
            "{}: one line: {stderr}",
            case.name
        );
        assert!(
            stderr.contains(case.expect),
            "{}: expected {:?} in {stderr}",
            case.name,
            case.expect
        );
        assert_eq!(
            tree_checksum(&root.path).unwrap(),
            before,
            "{}: the root changed",
            case.name
        );
        let _ = std::fs::remove_dir_all(root.join("etc/migrate"));
        let _ = std::fs::remove_dir_all(root.join("var/lib/migrate"));
    }
}

#[test]
fn bad_roots_are_refused_with_one_line() {
    let f = Fixtures::get();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let cases: [(PathBuf, &str); 3] = [
        (dir.path().join("nowhere"), "no such file or directory"),
        (file, "not a directory"),
        (dir.path().to_path_buf(), "has no etc/os-release"),
    ];
    for verb in ["run", "check", "sync", "status", "rollback"] {
        for (root, expect) in &cases {
            let out = f
                .migrate()
                .arg(verb)
                .arg("--root")
                .arg(root)
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(2),
                "{verb} {}: {}",
                root.display(),
                show(&out)
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(expect), "{verb}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{verb}: {stderr}");
        }
    }
}

#[test]
fn rollback_without_a_migration_is_refused_and_changes_nothing() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let before = tree_checksum(&root.path).unwrap();
    let out = f
        .migrate()
        .arg("rollback")
        .arg("--root")
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to roll back"));
    assert_eq!(tree_checksum(Path::new(&root.path)).unwrap(), before);
}
