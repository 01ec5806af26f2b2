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

const CONFIG_EDIT_BLOCK_SCALAR: &str = r#"
[[step]]
id = "motd"
kind = "config"
phase = "cutover"
edit = "/etc/inventory/settings.yaml"
set = { motd = "welcome" }
"#;

const CONFIG_EDIT_FIFO: &str = r#"
[[step]]
id = "fifo"
kind = "config"
phase = "cutover"
edit = "/etc/inventory/fifo.conf"
set = { "main.x" = 1 }
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
    // Files the config-edit cases name: one the editor refuses, a FIFO.
    std::fs::create_dir_all(root.join("etc/inventory")).unwrap();
    std::fs::write(
        root.join("etc/inventory/settings.yaml"),
        "motd: |\n  hello\nport: 8080\n",
    )
    .unwrap();
    mkfifo(&root.join("etc/inventory/fifo.conf"));
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
            name: "config edit of YAML beyond block mappings of scalars",
            input: Input::Plan(CONFIG_EDIT_BLOCK_SCALAR),
            args: &[],
            expect: "step motd: /etc/inventory/settings.yaml: key motd holds a block scalar",
        },
        Case {
            name: "config edit of a FIFO",
            input: Input::Plan(CONFIG_EDIT_FIFO),
            args: &[],
            expect: "not a regular file",
        },
        Case {
            name: "a step whose program the image lacks",
            input: Input::Plan("[[step]]\nid = \"dup\"\nkind = \"zypper\"\nphase = \"cutover\"\n"),
            args: &[],
            expect: "step dup (zypper) runs `zypper`, which this migration image does not have; derive an image from it that installs zypper",
        },
        Case {
            name: "a command the image does not have, in check",
            input: Input::Plan(
                "[[step]]\nid = \"release\"\nkind = \"check-release\"\nphase = \"check\"\n\n[[step]]\nid = \"hook\"\nkind = \"command\"\nphase = \"cutover\"\ncommand = [\"no-such-tool\", \"--now\"]\n",
            ),
            args: &["check"],
            expect: "step hook (command) runs `no-such-tool`, which this migration image does not have",
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

/// The README's table of every path under a root the host side touches
/// (kept equal to the code's own list by a unit test): `(path, access)`.
fn root_paths() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let table = readme.split("<!-- root-paths -->").nth(1).unwrap();
    table
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (cells[0].trim_matches('`').to_string(), cells[1].to_string())
        })
        .collect()
}

/// One way a hostile root can lay out a path.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// An absolute symlink to a host path outside the root.
    SymlinkOut,
    /// A FIFO (a reader that opens it blocks).
    Fifo,
    /// The device /dev/zero (endless).
    Device,
    /// A 2 GiB file (sparse).
    Oversized,
    /// Bytes that are not UTF-8.
    NotUtf8,
    /// Terminal escape sequences and a newline where a value is shown.
    ControlCharacters,
    /// A document of migrate's own whose ids name paths out of the root.
    MaliciousIds,
}

const CHEAP_PLAN: &str = "[[step]]\nid = \"release\"\nkind = \"check-release\"\nphase = \"check\"\n\n\
    [[step]]\nid = \"noop\"\nkind = \"command\"\nphase = \"cutover\"\ncommand = [\"true\"]\n";

fn config() -> String {
    format!(
        "enabled = true\nmode = \"run\"\nimage = \"{MIGRATION_IMAGE}\"\nplan = \"/etc/migrate/plan.toml\"\n"
    )
}

/// What the host does with a path of the README's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// A directory whose `*.toml` files it reads.
    Listed,
    /// A directory it creates.
    Created,
    /// A file it reads (and maybe writes).
    Read,
    /// A file it only writes.
    Written,
}

impl Shape {
    fn of(access: &str) -> Self {
        if access.starts_with("list") {
            Self::Listed
        } else if access == "create" {
            Self::Created
        } else if access.contains("read") {
            Self::Read
        } else {
            Self::Written
        }
    }

    fn attacks(self) -> &'static [Attack] {
        match self {
            Self::Listed | Self::Read => &[
                Attack::SymlinkOut,
                Attack::Fifo,
                Attack::Device,
                Attack::Oversized,
                Attack::NotUtf8,
                Attack::ControlCharacters,
                Attack::MaliciousIds,
            ],
            Self::Created => &[Attack::SymlinkOut, Attack::Fifo],
            Self::Written => &[Attack::SymlinkOut, Attack::Fifo, Attack::Device],
        }
    }
}

/// Lays `attack` out at `rel` (for a directory the host lists, its
/// symlink replaces the directory and the rest is an entry `evil.toml` in
/// it); `templates` holds migrate's own documents.
fn lay_out(
    root: &Path,
    rel: &str,
    shape: Shape,
    attack: Attack,
    canary: &Path,
    templates: &std::collections::HashMap<String, serde_json::Value>,
) -> bool {
    let dir = matches!(shape, Shape::Listed | Shape::Created);
    let at = match (shape, attack) {
        (Shape::Listed, Attack::NotUtf8) => root
            .join(rel)
            .join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"evil\xff.toml")),
        (Shape::Listed, a) if !matches!(a, Attack::SymlinkOut) => root.join(rel).join("evil.toml"),
        _ => root.join(rel),
    };
    let _ = std::fs::remove_file(&at);
    let _ = std::fs::remove_dir_all(&at);
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    let run = |cmd: &str, args: &[&str]| {
        let out = std::process::Command::new(cmd)
            .args(args)
            .arg(&at)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {}", show(&out));
    };
    match attack {
        Attack::SymlinkOut => {
            let target = if dir {
                canary.join("dir")
            } else {
                canary.join("file")
            };
            std::os::unix::fs::symlink(target, &at).unwrap();
        }
        Attack::Fifo => run("mkfifo", &[]),
        Attack::Device => {
            let out = std::process::Command::new("mknod")
                .arg(&at)
                .args(["c", "1", "5"])
                .output()
                .unwrap();
            assert!(out.status.success(), "mknod: {}", show(&out));
        }
        Attack::Oversized => {
            std::fs::File::create(&at)
                .unwrap()
                .set_len(2 << 30)
                .unwrap();
        }
        Attack::NotUtf8 => std::fs::write(&at, b"ID=\xff\xfe\nkey = \"\xff\"\n").unwrap(),
        Attack::ControlCharacters => std::fs::write(
            &at,
            "ID=\"debian\x1b[31m\"\nVERSION_ID=\"12\x1b]0;owned\x07\"\n\x1b[2J = \"x\"\n",
        )
        .unwrap(),
        Attack::MaliciousIds => {
            let Some(template) = templates.get(rel) else {
                return false;
            };
            let evil = format!("../../../..{}/id", canary.display());
            let mut doc = template.clone();
            for key in ["run_id", "migration_id"] {
                if doc.get(key).is_some() {
                    doc[key] = serde_json::Value::String(evil.clone());
                }
            }
            std::fs::write(&at, serde_json::to_vec(&doc).unwrap()).unwrap();
        }
    }
    true
}

/// Puts the root back as the battery found it.
fn reset(root: &Path, pristine_os_release: &[u8]) {
    for dir in ["var/lib/migrate", "var/log/migrate", "etc/migrate"] {
        let p = root.join(dir);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_dir_all(&p);
    }
    for f in ["etc/os-release", "usr/lib/os-release"] {
        let _ = std::fs::remove_file(root.join(f));
    }
    std::fs::write(root.join("usr/lib/os-release"), pristine_os_release).unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    std::fs::create_dir_all(root.join("etc/migrate")).unwrap();
    std::fs::write(root.join("etc/migrate/config.toml"), config()).unwrap();
    std::fs::write(root.join("etc/migrate/plan.toml"), CHEAP_PLAN).unwrap();
}

#[test]
fn a_hostile_root_is_refused_at_every_path_the_host_touches_and_nothing_outside_moves() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let os_release = std::fs::read(root.join("usr/lib/os-release")).unwrap();
    let canary = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(canary.path().join("dir")).unwrap();
    std::fs::write(canary.path().join("file"), "canary\n").unwrap();
    std::fs::write(canary.path().join("dir/inside"), "canary\n").unwrap();
    let canary_sum = tree_checksum(canary.path()).unwrap();
    let etc_sum = tree_checksum(Path::new("/etc")).unwrap();

    let unattended = |root: &Path| {
        std::process::Command::new("timeout")
            .args(["-s", "KILL", "180"])
            .arg(f.migrate().get_program())
            .args(["--unattended", "--root"])
            .arg(root)
            .envs(
                f.migrate()
                    .get_envs()
                    .filter_map(|(k, v)| v.map(|v| (k, v))),
            )
            .output()
            .unwrap()
    };

    // A real run first: migrate's own journal, marker and report, to turn
    // into hostile ones.
    reset(&root.path, &os_release);
    let out = unattended(&root.path);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let mut templates = std::collections::HashMap::new();
    for rel in [
        "var/lib/migrate/state.json",
        "var/lib/migrate/reboot-pending",
        "var/log/migrate/report.json",
    ] {
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(rel)).unwrap()).unwrap();
        templates.insert(rel.to_string(), doc);
    }

    let paths = root_paths();
    assert!(paths.len() >= 12, "{paths:?}");
    let mut cases = 0;
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for (rel, access) in &paths {
        let shape = Shape::of(access);
        for &attack in shape.attacks() {
            reset(&root.path, &os_release);
            if !lay_out(&root.path, rel, shape, attack, canary.path(), &templates) {
                continue;
            }
            cases += 1;
            let name = format!("{rel} as {attack:?}");
            let out = unattended(&root.path);
            let code = out.status.code();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let mut wrong = Vec::new();
            // Exit 0 only where the README says the attack is harmless: a
            // symlink out of the root that is read resolves inside it; a
            // report or lock that is not migrate's is replaced.
            let replaced = rel.ends_with("/report.json") || rel.ends_with("/lock");
            let may_pass = (matches!(attack, Attack::SymlinkOut)
                && matches!(shape, Shape::Read | Shape::Listed))
                || (replaced
                    && !matches!(attack, Attack::SymlinkOut | Attack::Fifo | Attack::Device));
            if !(code == Some(2) || (may_pass && code == Some(0))) {
                wrong.push(format!("exit {code:?} (137: killed after 180 s)"));
            }
            if stderr.contains("panicked") {
                wrong.push("a panic".to_string());
            }
            if code != Some(0) && stderr.lines().count() != 1 {
                wrong.push("not one line on stderr".to_string());
            }
            if [&out.stdout, &out.stderr]
                .iter()
                .any(|s| s.contains(&0x1b) || s.contains(&0x07))
            {
                wrong.push("a control character reached the terminal".to_string());
            }
            if tree_checksum(canary.path()).unwrap() != canary_sum {
                wrong.push("something outside the root changed".to_string());
            }
            if !wrong.is_empty() {
                failures.push(format!("{name}: {}: {}", wrong.join(", "), show(&out)));
            }
            outcomes.push(format!("{name}: {code:?} {}", stderr.trim()));
        }
    }
    // The outcomes, for whoever reads the test's output.
    println!("{}", outcomes.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(cases >= 40, "{cases} cases");
    assert_eq!(
        tree_checksum(Path::new("/etc")).unwrap(),
        etc_sum,
        "the host's /etc changed"
    );
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}
