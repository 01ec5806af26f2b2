//! What apt prints, read: estimates, origins, policy, progress.

use super::*;

#[test]
fn the_upgrade_estimate_is_read_from_apt_output() {
    let e = parse_estimate(
        "The following NEW packages will be installed:\n  gcc-14-base linux-image-6.12.0-1-amd64\nNeed to get 12.0 MB/36.4 MB of archives.\nAfter this operation, 23.2 MB of additional disk space will be used.\n",
    );
    // 12 MB still to fetch, the rest of the 36.4 MB cached already.
    assert_eq!(e.download, 12_000_000);
    assert_eq!(e.installed_delta, 23_200_000);
    assert!(e.kernel);
    let e = parse_estimate(
        "Need to get 1 kB of archives.\nAfter this operation, 2 MB disk space will be freed.\n",
    );
    assert_eq!(
        (e.download, e.installed_delta, e.kernel),
        (1000, -2_000_000, false)
    );
    assert!(e.replaced.is_empty());
}

#[test]
fn the_files_print_uris_would_fetch_are_counted() {
    let out = "Reading package lists...\nThe following packages will be upgraded:\n  base-files\nNeed to get 71.2 kB of archives.\n'http://deb.example/pool/main/b/base-files/base-files_13.8_amd64.deb' base-files_13.8_amd64.deb 71204 SHA256:ab12\n";
    assert_eq!(uris(out), 1);
    assert_eq!(
        uris("Reading package lists...\n0 upgraded, 0 newly installed.\n"),
        0
    );
}

#[test]
fn the_packages_an_upgrade_replaces_are_read_from_apt_output() {
    let e = parse_estimate(
        "Reading package lists...\nThe following packages will be REMOVED:\n  libdb5.3* libssl3\nThe following NEW packages will be installed:\n  libssl3t64\nThe following packages will be upgraded:\n  base-files bash\n  libc6\n2 upgraded, 1 newly installed, 2 to remove and 0 not upgraded.\nNeed to get 1 kB of archives.\n",
    );
    assert_eq!(
        e.replaced,
        ["libdb5.3", "libssl3", "base-files", "bash", "libc6"]
    );
}

const POLICY_PACKAGES: &str = "\
Package files:
 100 /var/lib/dpkg/status
     release a=now
 500 http://example.org/vendor bookworm/main amd64 Packages
     release o=Vendor,a=bookworm,n=bookworm,c=main,b=amd64
     origin example.org
 500 http://mirror/debian bookworm/main amd64 Packages
     release v=12.10,o=Debian,a=stable,n=bookworm,l=Debian,c=main,b=amd64
     origin mirror
Pinned packages:
";

#[test]
fn package_files_map_to_their_origin() {
    let m = parse_package_files(POLICY_PACKAGES);
    assert_eq!(
        m["http://mirror/debian bookworm/main amd64 Packages"],
        "Debian"
    );
    assert_eq!(
        m["http://example.org/vendor bookworm/main amd64 Packages"],
        "Vendor"
    );
    assert_eq!(m.len(), 2);
}

#[test]
fn installed_versions_and_their_sources_are_read_from_policy() {
    let text = "\
bash:
  Installed: 5.2.15-2+b7
  Candidate: 5.2.15-2+b7
  Version table:
 *** 5.2.15-2+b7 500
        500 http://mirror/debian bookworm/main amd64 Packages
        100 /var/lib/dpkg/status
tool:
  Installed: 1.0
  Candidate: 2.0
  Version table:
     2.0 500
        500 http://mirror/debian bookworm/main amd64 Packages
 *** 1.0 100
        100 /var/lib/dpkg/status
";
    let sources = parse_installed_sources(text);
    let debian = "http://mirror/debian bookworm/main amd64 Packages".to_string();
    assert_eq!(
        sources[0],
        InstalledSources {
            name: "bash".into(),
            installed: vec![debian.clone()],
            others: vec![],
        }
    );
    // Its installed version in no list any more, a newer one in Debian's.
    assert_eq!(
        sources[1],
        InstalledSources {
            name: "tool".into(),
            installed: vec![],
            others: vec![debian],
        }
    );
    let versions = parse_policy_versions(text);
    assert_eq!(
        versions[1],
        ("tool".to_string(), Some("1.0".into()), Some("2.0".into()))
    );
}

#[test]
fn apt_status_lines_become_progress() {
    assert_eq!(
        apt_progress("pmstatus:libc6:42.5:Unpacking libc6 (amd64)"),
        Some((42.5, "Unpacking libc6 (amd64)".into()))
    );
    assert_eq!(
        apt_progress("dlstatus:3:10:Retrieving file 3 of 30"),
        Some((10.0, "Downloading: Retrieving file 3 of 30".into()))
    );
    assert_eq!(apt_progress("Setting up libc6 ..."), None);
    assert_eq!(apt_progress("pmstatus:x:notanumber:y"), None);
}

#[test]
fn half_installed_and_reinstall_required_packages_are_found() {
    let text = "ii \tbash\niU \tlibc6:amd64\niHR\tsystemd\nrH \tlibc-bin\niFR\tudev\n";
    assert_eq!(parse_needs_reinstall(text), ["systemd", "libc-bin", "udev"]);
}

#[test]
fn obsolete_packages_are_the_ones_apt_lists_as_local() {
    let listed = "Listing...\n\
        base-files/trixie,now 13.8 amd64 [installed]\n\
        libssl3/now 3.0.15-1~deb12u1 amd64 [installed,local]\n\
        libapt-pkg6.0/now 2.6.1 amd64 [installed,auto-removable,local]\n\
        apt/trixie,now 3.0.3 amd64 [installed]\n\
        gcc-12-base/now 12.2.0-14 amd64 [installed,local]\n";
    assert_eq!(
        parse_local_packages(listed),
        ["gcc-12-base", "libapt-pkg6.0", "libssl3"]
    );
    assert!(parse_local_packages("Listing...\n").is_empty());
}

#[test]
fn one_valid_signature_verifies_a_release_file_and_a_bad_one_does_not() {
    let two_keys = "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 0123 1 8 01 1700000000 9 -\n[GNUPG:] NO_PUBKEY 0123\n[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 4567 Debian\n[GNUPG:] VALIDSIG 89AB 2026-11-01 1700000000 0 4 0 1 10 01 89AB\n";
    assert!(signed_validly(two_keys));
    assert!(!signed_validly(
        "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 0123 1 8 01 1700000000 9 -\n[GNUPG:] NO_PUBKEY 0123\n"
    ));
    assert!(!signed_validly(
        "[GNUPG:] BADSIG 4567 x\n[GNUPG:] VALIDSIG 89AB\n"
    ));
}

const PRINT_URIS_V: &str = "\
Reading package lists...
Calculating upgrade...
The following packages will be REMOVED:
   libdb5.3* (5.3.28+dfsg2-1)
   vendor-gone (1.0)
The following NEW packages will be installed:
   libdb5.3t64 (5.3.28+dfsg2-9)
The following packages have been kept back:
   vendor-a (1.0)
The following packages will be upgraded:
   apt (2.6.1 => 3.0.4)
   vendor-b (1.0 => 2.0)
The following packages will be DOWNGRADED:
   vendor-c (3.0 => 2.0)
3 upgraded, 1 newly installed, 1 downgraded, 2 to remove and 1 not upgraded.
Need to get 1 kB/2 kB of archives.
'http://deb.example/pool/main/a/apt/apt_3.0.4_amd64.deb' apt_3.0.4_amd64.deb 1000 SHA256:ab12
";

#[test]
fn one_print_uris_with_versions_gives_the_fates_and_the_replaced_packages() {
    let fates = parse_fates(PRINT_URIS_V);
    assert_eq!(fates.len(), 5, "{fates:?}");
    assert_eq!(fates["libdb5.3"], Fate::Removed);
    assert_eq!(fates["vendor-gone"], Fate::Removed);
    assert_eq!(fates["apt"], Fate::Upgraded("3.0.4".into(), String::new()));
    assert_eq!(
        fates["vendor-b"],
        Fate::Upgraded("2.0".into(), String::new())
    );
    assert_eq!(
        fates["vendor-c"],
        Fate::Upgraded("2.0".into(), String::new())
    );
    // Kept back and new packages have no fate of their own.
    assert!(!fates.contains_key("vendor-a") && !fates.contains_key("libdb5.3t64"));
    let e = parse_estimate(PRINT_URIS_V);
    assert_eq!(
        e.replaced,
        ["libdb5.3", "vendor-gone", "apt", "vendor-b", "vendor-c"]
    );
    assert_eq!(e.download, 1000);
    assert_eq!(uris(PRINT_URIS_V), 1);
}

#[test]
fn candidates_are_named_by_their_release_as_apt_simulations_name_them() {
    let files = "\
Package files:
 100 /var/lib/dpkg/status
     release a=now
 500 http://127.0.0.1:8000/vendor-b trixie/main amd64 Packages
     release o=Vendor B,a=trixie,n=trixie,c=main,b=amd64
     origin 127.0.0.1
 500 http://mirror/debian trixie/main amd64 Packages
     release v=13.2,o=Debian,a=stable,n=trixie,l=Debian,c=main,b=amd64
     origin mirror
Pinned packages:
";
    let names = parse_release_names(files);
    assert_eq!(
        names["http://127.0.0.1:8000/vendor-b trixie/main amd64 Packages"],
        "Vendor B:trixie"
    );
    assert_eq!(
        names["http://mirror/debian trixie/main amd64 Packages"],
        "Debian:13.2/stable"
    );
    let policy = "\
vendor-b:
  Installed: 1.0
  Candidate: 2.0
  Version table:
     2.0 500
        500 http://127.0.0.1:8000/vendor-b trixie/main amd64 Packages
 *** 1.0 100
        100 /var/lib/dpkg/status
bash:
  Installed: 5.2.15-2+b13
  Candidate: 5.2.37-2+b10
  Version table:
     5.2.37-2+b10 500
        500 http://mirror/debian trixie/main amd64 Packages
 *** 5.2.15-2+b13 100
        100 /var/lib/dpkg/status
";
    assert_eq!(
        parse_candidate_files(policy),
        [
            (
                "vendor-b".to_string(),
                vec!["http://127.0.0.1:8000/vendor-b trixie/main amd64 Packages".to_string()]
            ),
            (
                "bash".to_string(),
                vec!["http://mirror/debian trixie/main amd64 Packages".to_string()]
            ),
        ]
    );
}

#[test]
fn a_journal_dpkg_has_not_applied_is_an_interruption() {
    let root = tempfile::tempdir().unwrap();
    assert!(!dpkg_interrupted(root.path()), "no dpkg at all");
    let updates = root.path().join("var/lib/dpkg/updates");
    std::fs::create_dir_all(&updates).unwrap();
    std::fs::write(updates.join("tmp.i"), "").unwrap();
    assert!(!dpkg_interrupted(root.path()), "only dpkg's scratch file");
    std::fs::write(updates.join("0003"), "Package: hostname\n").unwrap();
    assert!(dpkg_interrupted(root.path()));
}
