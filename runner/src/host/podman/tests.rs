//! The adapter's own logic: archive references, API versions, limits,
//! output lines, the container's creation options.

use super::*;

#[test]
fn archive_references_name_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m:1.tar");
    std::fs::write(&file, "").unwrap();
    let at = |r: String| archive_path(&r).map(|p| p.display().to_string());
    let shown = file.display().to_string();
    assert_eq!(at(format!("oci-archive:{shown}")), Some(shown.clone()));
    assert_eq!(
        at(format!("docker-archive:{shown}:migrate/x:1")),
        Some(shown.clone())
    );
    assert_eq!(
        at("oci-archive:/nonexistent/m.tar:latest".into()),
        Some("/nonexistent/m.tar:latest".into()),
        "a missing file is named as given"
    );
    assert_eq!(at("quay.example/m:1".into()), None);
    assert_eq!(at("docker://quay.example/m:1".into()), None);
}

#[test]
fn libpod_api_versions_are_parsed() {
    assert_eq!(parse_api_version("4.3.1").unwrap().to_string(), "4.3.1");
    assert_eq!(parse_api_version("5.2.0").unwrap().major(), 5);
    assert!(parse_api_version("").is_none());
}

#[test]
fn limits_are_clamped_to_what_the_service_can_grant() {
    let mut limits = vec![
        Rlimit {
            name: "nproc".into(),
            soft: 96365,
            hard: 96365,
        },
        Rlimit {
            name: "nofile".into(),
            soft: 1024,
            hard: 4096,
        },
        Rlimit {
            name: "core".into(),
            soft: 0,
            hard: u64::MAX,
        },
    ];
    let service = HashMap::from([
        ("nproc".to_string(), (32768, 32768)),
        ("nofile".to_string(), (1024, 1_048_576)),
    ]);
    clamp_limits(&mut limits, &service);
    assert_eq!((limits[0].soft, limits[0].hard), (32768, 32768));
    assert_eq!((limits[1].soft, limits[1].hard), (1024, 4096));
    assert_eq!((limits[2].soft, limits[2].hard), (0, u64::MAX));
}

#[test]
fn lines_are_reassembled_across_chunks_per_stream() {
    let mut s = LineSplitter::default();
    let mut got = Vec::new();
    let mut out = |st: OutputStream, l: &str| got.push((st, l.to_string()));
    s.push(OutputStream::Stdout, b"hel", &mut out);
    s.push(OutputStream::Stderr, b"err1\nerr", &mut out);
    s.push(OutputStream::Stdout, b"lo\nwor", &mut out);
    s.flush(&mut out);
    assert_eq!(
        got,
        vec![
            (OutputStream::Stderr, "err1".to_string()),
            (OutputStream::Stdout, "hello".to_string()),
            (OutputStream::Stdout, "wor".to_string()),
            (OutputStream::Stderr, "err".to_string()),
        ]
    );
}

#[test]
fn the_container_is_privileged_with_host_namespaces_and_our_limits() {
    let spec = ContainerSpec {
        name: "migrate-x".into(),
        image: "img".into(),
        command: vec!["run".into()],
        env: BTreeMap::new(),
        labels: BTreeMap::from([("io.migrate.run-id".into(), "x".into())]),
        binds: vec![Bind {
            source: PathBuf::from("/srv/root"),
            destination: "/system-root".into(),
            read_only: false,
        }],
        rlimits: vec![Rlimit {
            name: "nofile".into(),
            soft: 1024,
            hard: 4096,
        }],
        host_pid: true,
    };
    let json: serde_json::Value =
        serde_json::from_slice(&create_opts(&spec).serialize_vec().unwrap()).unwrap();
    assert_eq!(json["privileged"], true);
    assert_eq!(json["netns"]["nsmode"], "host");
    assert_eq!(json["pidns"]["nsmode"], "host");
    assert_eq!(json["mounts"][0]["destination"], "/system-root");
    assert_eq!(json["mounts"][0]["options"][0], "rbind");
    assert_eq!(json["r_limits"][0]["type"], "nofile");
    assert_eq!(json["r_limits"][0]["soft"], 1024);
    assert_eq!(json["labels"]["io.migrate.run-id"], "x");
    let own = ContainerSpec {
        host_pid: false,
        ..spec
    };
    let json: serde_json::Value =
        serde_json::from_slice(&create_opts(&own).serialize_vec().unwrap()).unwrap();
    assert_eq!(json["pidns"]["nsmode"], "private");
    assert_eq!(json["netns"]["nsmode"], "host");
}
