//! Plan resolution and validation: every error one line naming file, line
//! and key.

use super::*;

fn src(name: &str, text: &str) -> PlanSource {
    PlanSource {
        name: name.to_string(),
        text: text.to_string(),
    }
}

const BASE: &str = r#"
description = "test plan"

[[step]]
id = "disk-space"
kind = "check-disk-space"
phase = "check"
margin_mb = 100

[[step]]
id = "switch-sources"
kind = "apt-sources"
phase = "cutover"

[[step]]
id = "upgrade-packages"
kind = "apt"
phase = "cutover"
"#;

fn err(base: &str, dropins: &[(&str, &str)]) -> String {
    let d: Vec<_> = dropins.iter().map(|(n, t)| src(n, t)).collect();
    format!("{:#}", resolve(&src("plan.toml", base), &d).unwrap_err())
}

#[test]
fn a_valid_plan_resolves_with_the_safety_backup_before_cutover() {
    let plan = resolve(&src("plan.toml", BASE), &[]).unwrap();
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "disk-space",
            "safety-backup",
            "switch-sources",
            "upgrade-packages"
        ]
    );
    assert_eq!(plan.description, "test plan");
    assert_eq!(plan.steps[0].options["margin_mb"], 100);
    assert_eq!(plan.steps[0].defined_at, "plan.toml:4");
}

#[test]
fn dropins_override_add_and_disable_steps_by_id() {
    let d1 = src(
        "10-a.toml",
        "[[step]]\nid = \"disk-space\"\nmargin_mb = 500\n\n[[step]]\nid = \"hold-check\"\nkind = \"check-held-packages\"\nphase = \"check\"\n",
    );
    let d2 = src(
        "20-b.toml",
        "[[step]]\nid = \"switch-sources\"\nenabled = false\n",
    );
    let plan = resolve(&src("plan.toml", BASE), &[d1, d2]).unwrap();
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "disk-space",
            "hold-check",
            "safety-backup",
            "upgrade-packages"
        ]
    );
    assert_eq!(plan.steps[0].options["margin_mb"], 500);
}

#[test]
fn a_disabled_safety_backup_is_not_inserted_again() {
    let d = src(
        "10-no-backup.toml",
        "[[step]]\nid = \"safety-backup\"\nkind = \"safety-backup\"\nphase = \"cutover\"\nenabled = false\n",
    );
    let plan = resolve(&src("plan.toml", BASE), &[d]).unwrap();
    assert!(
        plan.steps.iter().all(|s| s.kind != Kind::SafetyBackup),
        "{plan:?}"
    );
}

#[test]
fn the_hash_changes_with_what_runs_only() {
    let a = resolve(&src("a.toml", BASE), &[]).unwrap();
    let b = resolve(&src("b.toml", &format!("\n\n{BASE}")), &[]).unwrap();
    assert_eq!(a.hash(), b.hash());
    let c = resolve(&src("a.toml", &BASE.replace("100", "101")), &[]).unwrap();
    assert_ne!(a.hash(), c.hash());
}

#[test]
fn errors_name_file_line_and_key() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("[[step]\nid = 1", &[], "plan.toml:1:"),
        (
            &BASE.replace("margin_mb = 100", "margin_mb = \"lots\""),
            &[],
            "plan.toml:8: key `margin_mb`: expected an integer, found a string",
        ),
        (
            &BASE.replace("margin_mb = 100", "margni_mb = 100"),
            &[],
            "plan.toml:8: key `margni_mb`: unknown option",
        ),
        (
            &BASE.replace("kind = \"apt\"", "kind = \"yum\""),
            &[],
            "plan.toml:17: key `kind`: unknown step kind \"yum\"",
        ),
        (
            &BASE.replace("phase = \"check\"", "phase = \"later\""),
            &[],
            "plan.toml:7: key `phase`: unknown phase",
        ),
        (
            &BASE.replace("id = \"upgrade-packages\"", "id = \"switch-sources\""),
            &[],
            "plan.toml:16: key `id`: duplicate step id",
        ),
        (
            &BASE.replace("id = \"upgrade-packages\"", "id = \"bad id!\""),
            &[],
            "plan.toml:16: key `id`: \"bad id!\" is not a valid step id",
        ),
        (
            &BASE
                .replace("kind = \"apt\"\n", "")
                .replace("phase = \"cutover\"\n\"", ""),
            &[],
            "missing key `kind`",
        ),
        (
            &format!(
                "{BASE}\n[[step]]\nid = \"late\"\nkind = \"check-held-packages\"\nphase = \"check\"\n"
            ),
            &[],
            "plan.toml:23: key `phase`: step \"late\" (check) comes after step \"upgrade-packages\" (cutover)",
        ),
        (
            &format!("frobnicate = 1\n{BASE}"),
            &[],
            "plan.toml:1: unknown key `frobnicate`",
        ),
        (
            &BASE.replace(
                "kind = \"check-disk-space\"",
                "kind = \"check-disk-space\"\nenabled = \"no\"",
            ),
            &[],
            "plan.toml:7: key `enabled`: expected a boolean",
        ),
        (
            BASE,
            &[("10-x.toml", "[[step]]\nid = \"new\"\nkind = \"apt\"\n")],
            "10-x.toml:1: step \"new\": missing key `phase`",
        ),
        (
            BASE,
            &[(
                "10-x.toml",
                "[[step]]\nid = \"upgrade-packages\"\nkind = \"apt-sources\"\n",
            )],
            "10-x.toml:3: key `kind`: cannot change the kind",
        ),
        (
            BASE,
            &[("10-x.toml", "step = 3\n")],
            "10-x.toml:1: `step` must be an array of tables",
        ),
        (
            BASE,
            &[("10-x.toml", "[[step]]\nkind = \"apt\"\n")],
            "10-x.toml:1: a step has no `id`",
        ),
        (
            BASE,
            &[(
                "10-x.toml",
                "[[step]]\nid = \"disk-space\"\nphase = \"cutover\"\n",
            )],
            "a check-disk-space step cannot run in the cutover phase",
        ),
    ];
    for (base, dropins, expect) in cases {
        let e = err(base, dropins);
        assert!(e.contains(expect), "expected {expect:?} in {e:?}");
        assert_eq!(e.lines().count(), 1, "one line: {e:?}");
    }
}

#[test]
fn the_documented_options_of_dnf_validate_and_reach_the_step() {
    let plan = "[[step]]\nid = \"up\"\nkind = \"dnf\"\nphase = \"cutover\"\nreleasever = \"2\"\nallow_removal = [\"legacy-*\"]\nallow_erasing = true\n";
    let plan = resolve(&src("plan.toml", plan), &[]).unwrap();
    let opts: crate::core::kinds::packages::DnfOptions = plan.steps[1].options().unwrap();
    assert_eq!(opts.allow_removal, ["legacy-*"]);
}

#[test]
fn values_outside_a_closed_set_name_the_key_and_the_choices() {
    let plan = "[[step]]\nid = \"svc\"\nkind = \"service\"\nphase = \"cutover\"\naction = \"reboot\"\nunits = [\"a.service\"]\n";
    let e = err(plan, &[]);
    assert!(
        e.starts_with("plan.toml:5: key `action`: unknown variant `reboot`"),
        "{e}"
    );
    assert!(
        e.contains("`stop`") && e.contains("options of step svc"),
        "{e}"
    );
    let plan =
        "[[step]]\nid = \"z\"\nkind = \"zypper\"\nphase = \"cutover\"\nmode = \"migration\"\n";
    let e = err(plan, &[]);
    assert_eq!(
        e,
        "plan.toml:1: step \"z\": option `product` is required in migration mode"
    );
}

#[test]
fn missing_required_options_are_named() {
    let plan = "[[step]]\nid = \"run-it\"\nkind = \"command\"\nphase = \"cutover\"\n";
    let e = err(plan, &[]);
    assert!(
        e.contains("plan.toml:1: step \"run-it\": missing option `command`"),
        "{e}"
    );
}

#[test]
fn unreadable_plan_files_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let e = PlanSource::read(&dir.path().join("nope.toml")).unwrap_err();
    assert!(e.to_string().ends_with("nope.toml: no such file"), "{e}");
    let e = PlanSource::read(dir.path()).unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");
}

#[test]
fn plans_that_are_fifos_or_devices_are_refused_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("50-fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let e = PlanSource::read(&fifo).unwrap_err().to_string();
    assert!(e.ends_with("50-fifo.toml: not a regular file"), "{e}");
    let e = PlanSource::read(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "/dev/zero: not a regular file");
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; usize::try_from(PLAN_LIMIT).unwrap() + 1]).unwrap();
    let e = PlanSource::read(&big).unwrap_err().to_string();
    assert!(e.contains("larger than"), "{e}");
}

#[test]
fn verify_copy_names_an_rsync_step_before_it() {
    let copy = "[[step]]\nid = \"final-copy\"\nkind = \"rsync\"\nphase = \"cutover\"\nsource = \"/srv/a/\"\ndestination = \"/srv/b/\"\n\n";
    let verify = "[[step]]\nid = \"verify\"\nkind = \"verify-copy\"\nphase = \"cutover\"\nof = \"final-copy\"\n\n";
    let plan = resolve(&src("plan.toml", &format!("{copy}{verify}")), &[]).unwrap();
    assert_eq!(plan.steps.last().map(|s| s.id.as_str()), Some("verify"));
    let e = err(verify, &[]);
    assert!(
        e.contains("key `of`: step \"verify\" names no rsync step before it (\"final-copy\")"),
        "{e}"
    );
    let e = err(&format!("{verify}{copy}"), &[]);
    assert!(e.contains("names no rsync step before it"), "{e}");
}

/// Every shipped recipe (`examples/*/plan.toml`) is a valid plan: a change to
/// a step kind cannot break one silently.
#[test]
fn every_recipe_plan_is_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let plan = entry.unwrap().path().join("plan.toml");
        if !plan.is_file() {
            continue;
        }
        let source = PlanSource::read(&plan).unwrap();
        let resolved = resolve(&source, &[]);
        assert!(
            resolved.is_ok(),
            "{}: {:#}",
            plan.display(),
            resolved.unwrap_err()
        );
        let readme = plan.with_file_name("README.md");
        assert!(readme.is_file(), "{} has no README.md", plan.display());
        checked += 1;
    }
    assert!(checked >= 1, "no recipe found under {}", examples.display());
}

#[test]
fn health_checks_come_from_the_plan_and_its_drop_ins_and_do_not_change_its_identity() {
    let base = format!("{BASE}\n[health]\ngrace_seconds = 30\nunits = [\"nginx.service\"]\n");
    let plain = resolve(&src("plan.toml", BASE), &[]).unwrap();
    let plan = resolve(
        &src("plan.toml", &base),
        &[src(
            "90-health.toml",
            "[health]\ngrace_seconds = 90\nports = [\"127.0.0.1:80\"]\ncommands = [[\"true\"]]\n",
        )],
    )
    .unwrap();
    assert_eq!(plan.health.units, ["nginx.service"]);
    assert_eq!(plan.health.ports, ["127.0.0.1:80"]);
    assert_eq!(plan.health.commands, [vec!["true".to_string()]]);
    assert_eq!(plan.health.grace_seconds, Some(90));
    assert_eq!(plan.hash(), plain.hash());
    // What the agent and the reboot marker get back is the same plan.
    let json = serde_json::to_string(&plan).unwrap();
    assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);

    let e = err(
        BASE,
        &[("90-health.toml", "[health]\nports = [\"localhost\"]\n")],
    );
    assert_eq!(
        e,
        "90-health.toml:1: [health]: key `ports`: \"localhost\" is not HOST:PORT (e.g. \"127.0.0.1:80\")"
    );
    let e = err(
        BASE,
        &[("90-health.toml", "[health]\nunit = [\"a.service\"]\n")],
    );
    assert!(
        e.starts_with("90-health.toml:1: [health]: unknown field `unit`"),
        "{e}"
    );
    let e = err(BASE, &[("90-health.toml", "health = 3\n")]);
    assert_eq!(e, "90-health.toml:1: `health` must be a table ([health])");
}

const APPS: &str = r#"
description = "two applications"

[[step]]
id = "start-wiki"
kind = "command"
phase = "sync"
app = "wiki"
command = ["true"]

[[step]]
id = "start-shop"
kind = "command"
phase = "sync"
app = "shop"
command = ["true"]

[[step]]
id = "stop-wiki"
kind = "service"
phase = "cutover"
app = "wiki"
action = "stop"
units = ["wiki.service"]

[[step]]
id = "step-back-wiki"
kind = "command"
phase = "rollback"
app = "wiki"
command = ["true"]
"#;

#[test]
fn steps_belong_to_applications_and_runs_name_one() {
    use crate::core::event::Verb;
    let plan = resolve(&src("plan.toml", APPS), &[]).unwrap();
    assert_eq!(plan.apps(), ["shop", "wiki"]);
    let wiki: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| Plan::in_scope(s, Some("wiki")))
        .map(|s| s.id.as_str())
        .collect();
    // The inserted safety backup is the root's: every application's run has it.
    assert_eq!(
        wiki,
        ["start-wiki", "safety-backup", "stop-wiki", "step-back-wiki"]
    );
    assert_eq!(plan.check_app(Verb::Run, Some("wiki")), Ok(()));
    assert_eq!(plan.check_app(Verb::Check, None), Ok(()));
    for verb in [Verb::Sync, Verb::Run, Verb::DryRun, Verb::StepBack] {
        assert_eq!(
            plan.check_app(verb, None).unwrap_err(),
            "this plan moves applications one at a time (shop, wiki): name one with --app"
        );
    }
    assert_eq!(
        plan.check_app(Verb::Sync, Some("blog")).unwrap_err(),
        "--app blog: the plan has no application \"blog\" (it has: shop, wiki)"
    );
    let plain = resolve(&src("plan.toml", BASE), &[]).unwrap();
    assert!(plain.apps().is_empty());
    assert!(
        plain
            .check_app(Verb::Run, Some("wiki"))
            .unwrap_err()
            .contains("has no applications")
    );
}

#[test]
fn application_names_and_rollback_steps_are_checked() {
    let e = err(&APPS.replace("app = \"shop\"", "app = \"Shop Floor\""), &[]);
    assert!(
        e.starts_with("plan.toml:15: key `app`: \"Shop Floor\" is no application name"),
        "{e}"
    );
    let e = err(&APPS.replace("app = \"shop\"", "app = 7"), &[]);
    assert_eq!(
        e,
        "plan.toml:15: key `app`: expected a string, found an integer"
    );
    let e = err(
        &APPS.replace(
            "phase = \"rollback\"\napp = \"wiki\"\n",
            "phase = \"rollback\"\n",
        ),
        &[],
    );
    assert!(
        e.contains("step \"step-back-wiki\": a rollback step belongs to an application"),
        "{e}"
    );
    let e = err(
        &format!(
            "{APPS}\n[[step]]\nid = \"x\"\nkind = \"apt\"\nphase = \"rollback\"\napp = \"wiki\"\n"
        ),
        &[],
    );
    assert!(
        e.contains("apt step cannot run in the rollback phase"),
        "{e}"
    );
}

#[test]
fn a_plan_without_applications_keeps_its_hash() {
    // The hash of plans written before applications existed.
    let plan = resolve(&src("plan.toml", BASE), &[]).unwrap();
    let with_app = resolve(
        &src(
            "plan.toml",
            &BASE.replace("phase = \"check\"\n", "phase = \"check\"\napp = \"a\"\n"),
        ),
        &[],
    )
    .unwrap();
    assert_ne!(plan.hash(), with_app.hash());
    let canonical: Vec<_> = plan
        .steps
        .iter()
        .map(|s| (&s.id, &s.kind, s.phase, &s.description, &s.options))
        .collect();
    let old = format!(
        "sha256:{:x}",
        Sha256::digest(serde_json::to_vec(&canonical).unwrap())
    );
    assert_eq!(plan.hash(), old);
}
