//! Images from real registries: pinned by digest, verified by a signature
//! policy, promoted between channels, mirrored downstream with a sync
//! credential of its own, and carried to air-gapped sites as archives with
//! the same pin (docs/distribution.md does each of these by hand).

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::Path;
use std::process::Output;

use fixtures::registry::{Registry, SigningKey, TrustHome};
use fixtures::{Fixtures, MIGRATION_IMAGE, checked, json_lines, report, serial, show};
use serde_json::json;

const CHEAP_PLAN: &str = r#"
[[step]]
id = "hello"
kind = "command"
phase = "cutover"
command = ["true"]
"#;

/// Publishes a new migration image (the test image with a label of its
/// own, so that podman holds it under no other name) as `target`, signed
/// by `key` if given; returns the manifest digest the registry stores and
/// removes the local copy, so that a host pulls it afresh.
fn publish(
    f: &Fixtures,
    trust: &TrustHome,
    target: &str,
    key: Option<&SigningKey>,
    n: u32,
) -> String {
    let dir = trust.path(&format!("publication-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Containerfile"),
        format!(
            "FROM {MIGRATION_IMAGE}\nLABEL io.migrate.test.publication=\"{n}-{}\"\n",
            std::process::id()
        ),
    )
    .unwrap();
    let local = format!("localhost/migrate-test/publication:{n}");
    checked(
        trust
            .podman(f)
            .args(["build", "-q", "-t", &local])
            .arg(&dir),
        "podman build",
    )
    .unwrap();
    let digest_file = dir.join("digest");
    let mut push = trust.podman(f);
    push.args(["push", "-q", "--digestfile"]).arg(&digest_file);
    if let Some(key) = key {
        push.args(["--sign-by", &key.email]);
    }
    checked(push.arg(&local).arg(target), "podman push").unwrap();
    checked(trust.podman(f).args(["rmi", &local]), "podman rmi").unwrap();
    std::fs::read_to_string(&digest_file)
        .unwrap()
        .trim()
        .to_string()
}

/// `skopeo copy` from `from` to `to` (docker references), signed by `key`.
fn promote(f: &Fixtures, trust: &TrustHome, from: &str, to: &str, key: &SigningKey) {
    checked(
        trust
            .skopeo(f)
            .args(["copy", "-q", "--sign-by", &key.email])
            .arg(format!("docker://{from}"))
            .arg(format!("docker://{to}")),
        "skopeo copy (promotion)",
    )
    .unwrap();
}

fn check(f: &Fixtures, trust: &TrustHome, root: &Path, image: &str) -> Output {
    trust
        .migrate(f)
        .args(["check", "--image", image, "--root"])
        .arg(root)
        .output()
        .unwrap()
}

/// Asserts a refusal: exit 2, one line on stderr saying `says`, nothing
/// left in the root.
fn assert_refused(out: &Output, root: &Path, says: &[&str]) {
    assert_eq!(out.status.code(), Some(2), "{}", show(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains(" WARN ")).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    for s in says {
        assert!(lines[0].contains(s), "{s:?} in {stderr}");
    }
    assert!(
        !root.join("var/lib/migrate").exists() && !root.join("var/log/migrate").exists(),
        "a refusal leaves the root alone"
    );
}

#[test]
fn images_from_a_registry_are_pinned_signed_promoted_mirrored_and_archived() {
    let _serial = serial();
    let f = Fixtures::get();
    let trust = TrustHome::new(f).unwrap();
    let publisher = trust.signing_key("publisher").unwrap();
    let rogue = trust.signing_key("rogue").unwrap();
    let upstream = Registry::start(&trust, "upstream", &["publisher", "mirror"]).unwrap();
    let downstream = Registry::start(&trust, "downstream", &["syncer", "host"]).unwrap();
    trust.login(f, &upstream, "publisher").unwrap();
    // The hosts' credential for the downstream is in a file of its own,
    // named by REGISTRY_AUTH_FILE (no tool finds it otherwise).
    let host_auth = trust.path("host-auth.json");
    trust.login_to(f, &downstream, "host", &host_auth).unwrap();
    // Both registries must carry the publisher's signature; the downstream's
    // names map to the upstream's, which the signatures name.
    trust
        .policy(&json!({
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {"docker": {
                upstream.host.clone(): [{
                    "type": "signedBy", "keyType": "GPGKeys", "keyPath": publisher.public,
                }],
                downstream.host.clone(): [{
                    "type": "signedBy", "keyType": "GPGKeys", "keyPath": publisher.public,
                    "signedIdentity": {
                        "type": "remapIdentity",
                        "prefix": downstream.name("migrate"),
                        "signedPrefix": upstream.name("migrate"),
                    },
                }],
            }},
        }))
        .unwrap();
    let root = f.copy_root(&f.bookworm).unwrap();
    let repo = upstream.name("migrate/debian-13");

    // Published to the edge channel, signed: a tag pinned to its digest
    // passes, and the check names the image.
    let edge = publish(f, &trust, &format!("{repo}:edge"), Some(&publisher), 1);
    assert!(!upstream.signatures("migrate/debian-13").unwrap().is_empty());
    let out = check(f, &trust, &root.path, &format!("{repo}:edge@{edge}"));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&edge),
        "{}",
        show(&out)
    );

    // Unsigned, and signed by a key the policy does not trust: refused by
    // the pull, before any container.
    publish(f, &trust, &format!("{repo}:unsigned"), None, 2);
    let out = check(f, &trust, &root.path, &format!("{repo}:unsigned"));
    assert_refused(
        &out,
        &root.path,
        &[
            "refused by this host's signature policy",
            "no signature exists",
        ],
    );
    publish(f, &trust, &format!("{repo}:rogue"), Some(&rogue), 3);
    let out = check(f, &trust, &root.path, &format!("{repo}:rogue"));
    assert_refused(
        &out,
        &root.path,
        &["refused by this host's signature policy"],
    );

    // The edge tag moves on: the old pin is refused, naming both digests;
    // the old image by its digest alone still passes.
    let next = publish(f, &trust, &format!("{repo}:edge"), Some(&publisher), 4);
    assert_ne!(next, edge);
    let out = check(f, &trust, &root.path, &format!("{repo}:edge@{edge}"));
    assert_refused(&out, &root.path, &[&edge, &next, "the tag moved"]);
    assert!(
        !trust
            .podman(f)
            .args(["image", "exists", &format!("{repo}@{next}")])
            .status()
            .unwrap()
            .success(),
        "the refused image is not kept"
    );
    let out = check(f, &trust, &root.path, &format!("{repo}@{edge}"));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    // Promotion to stable moves the first digest without rebuilding (signed
    // for its new name); the check says what the channel resolves to.
    promote(
        f,
        &trust,
        &format!("{repo}@{edge}"),
        &format!("{repo}:stable"),
        &publisher,
    );
    let out = check(f, &trust, &root.path, &format!("{repo}:stable"));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{repo}:stable ({edge})")),
        "{}",
        show(&out)
    );

    // The downstream mirrors stable with its own credentials.
    let sync = |f: &Fixtures| {
        trust
            .skopeo(f)
            .args(["sync", "--src", "docker", "--dest", "docker"])
            .args(["--src-creds", &upstream.creds("mirror")])
            .args(["--dest-creds", &downstream.creds("syncer")])
            .arg(format!("{repo}:stable"))
            .arg(downstream.name("migrate"))
            .output()
            .unwrap()
    };
    let out = sync(f);
    assert!(out.status.success(), "{}", show(&out));
    let mirrored = downstream.name("migrate/debian-13");
    let stable_downstream = |f: &Fixtures| {
        let out = trust
            .skopeo(f)
            .args(["inspect", "--format", "{{.Digest}}", "--authfile"])
            .arg(&host_auth)
            .arg(format!("docker://{mirrored}:stable"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(stable_downstream(f), edge, "the mirror keeps the digest");

    // A revoked sync credential: the next sync fails clearly and the
    // downstream keeps what it had.
    upstream.set_users(&["publisher"]).unwrap();
    promote(
        f,
        &trust,
        &format!("{repo}@{next}"),
        &format!("{repo}:stable"),
        &publisher,
    );
    let out = sync(f);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unauthorized"),
        "{}",
        show(&out)
    );
    assert_eq!(stable_downstream(f), edge);

    // Air-gapped: the mirrored image as an archive, with the same pin.
    let archive = trust.path("debian-13.tar");
    checked(
        trust
            .skopeo(f)
            .args(["copy", "-q", "--remove-signatures", "--src-authfile"])
            .arg(&host_auth)
            .arg(format!("docker://{mirrored}@{edge}"))
            .arg(format!("oci-archive:{}", archive.display())),
        "skopeo copy to an archive",
    )
    .unwrap();
    let pinned_archive = format!("oci-archive:{}@{edge}", archive.display());
    let out = check(f, &trust, &root.path, &pinned_archive);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let out = check(
        f,
        &trust,
        &root.path,
        &format!("oci-archive:{}@{next}", archive.display()),
    );
    assert_refused(&out, &root.path, &[&next, "not the pinned"]);

    // A host migrates from the downstream's stable channel with the
    // credential REGISTRY_AUTH_FILE names: the pull shows in the JSON
    // events, the report names the promoted digest.
    let plan = trust.path("plan.toml");
    std::fs::write(&plan, CHEAP_PLAN).unwrap();
    let without = check(f, &trust, &root.path, &format!("{mirrored}:stable"));
    assert_eq!(
        without.status.code(),
        Some(4),
        "no credential: {}",
        show(&without)
    );
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("authentication required"),
        "{}",
        show(&without)
    );
    let out = trust
        .migrate(f)
        .env("REGISTRY_AUTH_FILE", &host_auth)
        .args(["run", "--output", "json", "--plan"])
        .arg(&plan)
        .args(["--image", &format!("{mirrored}:stable"), "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let events = json_lines(&out.stdout);
    assert!(
        events.iter().any(|e| e["event"] == "output"
            && e["line"]
                .as_str()
                .is_some_and(|l| l.starts_with(&format!("migrate: pulling {mirrored}:stable: ")))),
        "{}",
        show(&out)
    );
    let report = report(&root.path).unwrap();
    assert_eq!(report["image"]["reference"], format!("{mirrored}:stable"));
    assert_eq!(report["image"]["digest"], edge.as_str(), "{report:#}");
    let _ = trust
        .podman(f)
        .args(["rmi", "-f", &format!("{mirrored}:stable")])
        .output();
}
