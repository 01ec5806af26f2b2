//! Checks made before anything is changed: the root, its release, the image
//! and whether they fit together. Every refusal here exits with code 2 (bad
//! input) or 4 (environment) and leaves the root untouched.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::podman::{ImageDetails, Podman};
use crate::core::config_edit;
use crate::core::event::PROTOCOL_VERSION;
use crate::core::exit::{ExitCode, WithExitCode, fail};
use crate::core::image::{
    ARCHIVE_TRANSPORTS, ImageLabels, LABEL_PROTOCOL, default_image_for, split_pin, tag_of,
};
use crate::core::kinds::Kind;
use crate::core::kinds::config::ConfigOptions;
use crate::core::plan::Plan;
use crate::core::release::OsRelease;

/// Refuses to go on unless running as root (exit 4).
pub(crate) fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(fail(
            ExitCode::Environment,
            "migrate must run as root (it starts privileged containers and changes system files)",
        ));
    }
    Ok(())
}

/// The root directory, made absolute, and its os-release.
pub(crate) fn inspect_root(root: &Path) -> Result<(PathBuf, OsRelease)> {
    let meta = std::fs::metadata(root).map_err(|e| {
        fail(
            ExitCode::BadInput,
            format!("--root {}: {}", root.display(), io_reason(&e)),
        )
    })?;
    if !meta.is_dir() {
        return Err(fail(
            ExitCode::BadInput,
            format!("--root {}: not a directory", root.display()),
        ));
    }
    let root = std::fs::canonicalize(root).map_err(|e| {
        fail(
            ExitCode::BadInput,
            format!("--root {}: {e}", root.display()),
        )
    })?;
    let os = OsRelease::read_from_root(&root).exit_code(ExitCode::BadInput)?;
    for path in crate::core::root_paths::RootPath::CREATED {
        crate::core::rootfs::confined::check_directory(&root, path.rel())
            .exit_code(ExitCode::BadInput)?;
    }
    for path in crate::core::root_paths::RootPath::WRITTEN {
        crate::core::rootfs::confined::check_writable(&root, path.rel())
            .exit_code(ExitCode::BadInput)?;
    }
    Ok((root, os))
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The image to use: `--image`, else the default of the built-in image
/// definition that accepts the root's release.
pub(crate) fn image_reference(given: Option<&str>, source: &OsRelease) -> Result<String> {
    if let Some(r) = given {
        return Ok(r.to_string());
    }
    match default_image_for(source) {
        Some((_, def)) => Ok(def.default_tag),
        None => Err(fail(
            ExitCode::BadInput,
            format!(
                "no built-in migration image upgrades {} ({}); pass --image",
                source.release(),
                source.pretty_name()
            ),
        )),
    }
}

/// Looks the image up and reads its labels; refuses an image that is missing
/// or is not a migration image.
pub(crate) async fn inspect_image(
    podman: &Podman,
    reference: &str,
) -> Result<(ImageDetails, ImageLabels)> {
    let image = podman
        .image(reference)
        .await
        .exit_code(ExitCode::Environment)?;
    migration_image(reference, image)
}

/// An image podman has under `reference` (`None`: none), with its labels;
/// refuses one that is missing or is not a migration image.
fn migration_image(
    reference: &str,
    image: Option<ImageDetails>,
) -> Result<(ImageDetails, ImageLabels)> {
    let Some(image) = image else {
        return Err(fail(
            ExitCode::BadInput,
            format!(
                "image {reference} does not exist; build one with `migrate image build NAME --tag {reference}`"
            ),
        ));
    };
    let labels = ImageLabels::from_config(&image.config)
        .map_err(|e| {
            fail(
                ExitCode::BadInput,
                format!("image {reference} has broken migration labels: {e:#}"),
            )
        })?
        .ok_or_else(|| {
            fail(
                ExitCode::BadInput,
                format!(
                    "image {reference} is not a migration image (it has no {LABEL_PROTOCOL} label)"
                ),
            )
        })?;
    Ok((image, labels))
}

/// Like [`inspect_image`], but an image podman does not have is pulled when
/// its reference says from where: a registry host (`quay.example/x:1`) or a
/// transport (`docker://`, `oci-archive:`, `docker-archive:`; see
/// [`Podman::pull`]). Short names are never pulled: which registry they resolve to
/// depends on the host's configuration. A reference pinned by digest
/// (`NAME[:TAG]@sha256:...`, see [`split_pin`]) gets the image with that
/// digest or none: a tag is asked of the registry every time and must still
/// resolve to the pin, an archive must hold it. Returns whether it pulled.
pub(crate) async fn find_or_pull_image(
    podman: &Podman,
    reference: &str,
    progress: impl FnMut(&str),
) -> Result<(ImageDetails, ImageLabels, bool)> {
    let (unpinned, pin) = split_pin(reference);
    let archive = is_archive(reference);
    // What to fetch: a pinned tag or archive by what names it (the pin is
    // checked after), anything else as given.
    let fetch = match pin {
        Some(_) if archive || tag_of(unpinned).is_some() => unpinned,
        _ => reference,
    };
    let local = if fetch == reference {
        podman
            .image(reference)
            .await
            .exit_code(ExitCode::Environment)?
    } else {
        None
    };
    if local.is_some() || !pullable(reference) {
        let (image, labels) = if fetch == reference {
            migration_image(reference, local)?
        } else {
            inspect_image(podman, reference).await?
        };
        return Ok((image, labels, false));
    }
    // What the name was before (listing every image to compare can take
    // minutes where podman holds many).
    let before = podman.image(fetch).await.ok().flatten().map(|i| i.id);
    let id = pull(podman, fetch, progress).await?;
    let pulled = before.as_deref() != Some(id.as_str());
    let checked = match pin {
        Some(pin) => check_pin(podman, reference, fetch, &id, pin).await,
        None => Ok(()),
    }
    .and(inspect_image(podman, &id).await);
    match checked {
        Ok((mut image, labels)) => {
            image.digest = resolved_digest(&image, reference);
            Ok((image, labels, pulled))
        }
        Err(e) => {
            // Not the pinned image, or not a migration image: leave
            // podman's storage as it was (podman keeps an image that
            // other names still use).
            if pulled {
                let _ = podman.remove_image(&id).await;
            }
            Err(e)
        }
    }
}

/// Pulls or loads `reference` for [`find_or_pull_image`], the failure said
/// in one line with its exit code: an archive podman cannot load, or an
/// image the host's signature policy rejects, is bad input (2); a registry
/// that does not answer is the environment (4).
async fn pull(podman: &Podman, reference: &str, progress: impl FnMut(&str)) -> Result<String> {
    podman.pull(reference, progress).await.map_err(|e| {
        let text = format!("{e:#}").replace('\n', " ");
        if let Some(reason) = signature_rejection(&text) {
            fail(
                ExitCode::BadInput,
                format!(
                    "image {reference} is refused by this host's signature policy (containers-policy.json): {reason}"
                ),
            )
        } else if is_archive(reference) {
            fail(ExitCode::BadInput, text)
        } else {
            fail(ExitCode::Environment, text)
        }
    })
}

/// The reason in a pull error that the signature policy rejected the image
/// (containers/image says `Source image rejected: REASON`).
pub(crate) fn signature_rejection(error: &str) -> Option<&str> {
    const REJECTED: &str = "Source image rejected: ";
    error
        .find(REJECTED)
        .map(|at| error[at + REJECTED.len()..].trim())
}

/// Refuses the image `id` fetched by `fetched` unless it is the one `pin`
/// names: exit 2 with both digests.
async fn check_pin(
    podman: &Podman,
    reference: &str,
    fetched: &str,
    id: &str,
    pin: &str,
) -> Result<()> {
    let image = podman
        .image(id)
        .await
        .exit_code(ExitCode::Environment)?
        .ok_or_else(|| {
            fail(
                ExitCode::Environment,
                format!("pulling {fetched}: podman lost image {id}"),
            )
        })?;
    if has_digest(&image, pin) {
        return Ok(());
    }
    // Where podman holds the image by several manifests (pushed from this
    // machine in another format), it cannot say which one the tag named.
    let candidates = repository_digests(&image, fetched);
    let found = match candidates.as_slice() {
        [] => image
            .digest
            .clone()
            .unwrap_or_else(|| "an image without a digest".into()),
        [only] => only.to_string(),
        several => format!("one of {}", several.join(", ")),
    };
    Err(fail(
        ExitCode::BadInput,
        if is_archive(reference) {
            format!("{fetched} holds {found}, not the pinned {pin}; refusing {reference}")
        } else {
            format!(
                "{fetched} now resolves to {found}, not the pinned {pin}: the tag moved; check the new image and pin its digest, or name the image by its digest alone"
            )
        },
    ))
}

/// Whether podman fetched `image` by manifest digest `digest`.
pub(crate) fn has_digest(image: &ImageDetails, digest: &str) -> bool {
    image.digest.as_deref() == Some(digest)
        || image
            .repo_digests
            .iter()
            .any(|r| r.rsplit_once('@').is_some_and(|(_, d)| d == digest))
}

/// The manifest digest `reference` resolved to: its pin; else the digest
/// podman fetched the image by from the reference's repository (an image
/// keeps one per repository and manifest it came by); else the image's own.
pub(crate) fn resolved_digest(image: &ImageDetails, reference: &str) -> Option<String> {
    let (unpinned, pin) = split_pin(reference);
    if let Some(pin) = pin {
        return Some(pin.to_string());
    }
    match repository_digests(image, unpinned).as_slice() {
        [only] => Some(only.to_string()),
        _ => image.digest.clone(),
    }
}

/// The digests podman records for `image` in the repository `reference`
/// names.
fn repository_digests<'a>(image: &'a ImageDetails, reference: &str) -> Vec<&'a str> {
    let name = split_pin(reference).0;
    let name = name.strip_prefix("docker://").unwrap_or(name);
    let repository = match tag_of(name) {
        Some(tag) => &name[..name.len() - tag.len() - 1],
        None => name,
    };
    image
        .repo_digests
        .iter()
        .filter_map(|r| r.rsplit_once('@'))
        .filter(|(repo, _)| *repo == repository)
        .map(|(_, digest)| digest)
        .collect()
}

fn is_archive(reference: &str) -> bool {
    ARCHIVE_TRANSPORTS.iter().any(|t| reference.starts_with(t))
}

/// Whether a reference names where to pull it from.
pub(crate) fn pullable(reference: &str) -> bool {
    if reference.starts_with("docker://") || is_archive(reference) {
        return true;
    }
    match reference.split_once('/') {
        Some((host, _)) => host != "localhost" && (host.contains('.') || host.contains(':')),
        None => false,
    }
}

/// Tries every in-place configuration edit of `plan` on the file as the
/// root holds it now, and refuses (exit 2) a file that cannot be edited
/// faithfully, before anything changes. A file the root does not have yet
/// (an earlier step may install it) is left to the step.
pub(crate) fn check_config_edits(plan: &Plan, root: &Path) -> Result<()> {
    for step in plan.steps.iter().filter(|s| s.kind == Kind::Config) {
        let opts: ConfigOptions =
            serde_json::from_value(serde_json::Value::Object(step.options.clone()))
                .exit_code(ExitCode::BadInput)?;
        let Some((file, format, set)) = opts.edit() else {
            continue;
        };
        let refuse = |e: String| fail(ExitCode::BadInput, format!("step {}: {e}", step.id));
        // Read as every root path of the host side is: inside the root,
        // regular files only, bounded, never blocking.
        let bytes = crate::core::rootfs::confined::read(
            root,
            file.trim_start_matches('/'),
            config_edit::MAX_SIZE,
        )
        .map_err(|e| refuse(format!("{e:#}")))?;
        if let Some(bytes) = bytes {
            let text = String::from_utf8(bytes)
                .map_err(|_| refuse(format!("{file} is not UTF-8 text")))?;
            config_edit::edit(format, &text, set).map_err(|e| refuse(format!("{file}: {e}")))?;
        }
    }
    Ok(())
}

/// Refuses an image whose agent speaks another event protocol.
pub(crate) fn check_protocol(labels: &ImageLabels, reference: &str) -> Result<()> {
    if labels.protocol != PROTOCOL_VERSION {
        return Err(fail(
            ExitCode::BadInput,
            format!(
                "image {reference} has agent protocol {}, this migrate speaks {PROTOCOL_VERSION}: rebuild it with `migrate image build {}`",
                labels.protocol, labels.image
            ),
        ));
    }
    Ok(())
}

/// Refuses an image whose agent speaks another protocol, a root that already
/// is the target release, or a root the image does not accept.
pub(crate) fn check_compatible(
    labels: &ImageLabels,
    reference: &str,
    source: &OsRelease,
) -> Result<()> {
    check_protocol(labels, reference)?;
    let release = source.release();
    if release == labels.target {
        return Err(fail(
            ExitCode::BadInput,
            format!(
                "the root already is {} ({}), the release image {reference} upgrades to; nothing to do",
                release,
                source.pretty_name()
            ),
        ));
    }
    if !labels.accepts(source) {
        return Err(fail(
            ExitCode::BadInput,
            format!(
                "the root is {} ({}); image {reference} upgrades only {} to {}",
                release,
                source.pretty_name(),
                labels.accepts_list(),
                labels.target
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::exit::exit_code_of;

    #[test]
    fn the_digest_a_reference_resolved_to_is_its_pin_else_the_repository_s() {
        let d = |c: &str| format!("sha256:{}", c.repeat(64));
        let image = ImageDetails {
            id: "0123".into(),
            digest: Some(d("0")),
            names: vec!["reg.example:5000/m/debian-13:stable".into()],
            repo_digests: vec![
                format!("reg.example:5000/m/debian-13@{}", d("1")),
                format!("localhost/built/debian-13@{}", d("0")),
            ],
            config: oci_spec::image::Config::default(),
        };
        assert_eq!(
            resolved_digest(&image, "reg.example:5000/m/debian-13:stable"),
            Some(d("1")),
            "the one digest of the repository it came from"
        );
        let pinned = format!("reg.example:5000/m/debian-13:stable@{}", d("2"));
        assert_eq!(resolved_digest(&image, &pinned), Some(d("2")));
        assert_eq!(resolved_digest(&image, "other.example/m:1"), Some(d("0")));
        assert!(has_digest(&image, &d("1")) && has_digest(&image, &d("0")));
        assert!(!has_digest(&image, &d("2")));
    }

    #[test]
    fn a_signature_rejection_is_told_apart_from_a_registry_failure() {
        assert_eq!(
            signature_rejection(
                "pulling reg.example/m:1: Source image rejected: A signature was required, but no signature exists"
            ),
            Some("A signature was required, but no signature exists")
        );
        assert_eq!(
            signature_rejection("pulling reg.example/m:1: connection refused"),
            None
        );
    }

    fn labels() -> ImageLabels {
        ImageLabels {
            image: "debian-13".into(),
            target: "debian:13".parse().unwrap(),
            accepts: vec!["debian:12".parse().unwrap()],
            protocol: PROTOCOL_VERSION,
            plan: None,
        }
    }

    fn os(id: &str, version: &str) -> OsRelease {
        OsRelease::parse(&format!("ID={id}\nVERSION_ID={version}\n"))
    }

    #[test]
    fn an_accepted_source_passes() {
        check_compatible(&labels(), "img", &os("debian", "12")).unwrap();
    }

    #[test]
    fn mismatches_are_bad_input_with_a_reason() {
        for (source, expect) in [
            (os("debian", "11"), "upgrades only debian:12"),
            (os("ubuntu", "24.04"), "the root is ubuntu:24.04"),
            (os("debian", "13"), "already is debian:13"),
        ] {
            let err = check_compatible(&labels(), "img", &source).unwrap_err();
            assert_eq!(exit_code_of(&err), ExitCode::BadInput);
            assert!(err.to_string().contains(expect), "{err}");
        }
        let mut other = labels();
        other.protocol = PROTOCOL_VERSION + 1;
        let err = check_compatible(&other, "img", &os("debian", "12")).unwrap_err();
        assert!(err.to_string().contains("agent protocol"), "{err}");
    }

    #[test]
    fn bad_roots_are_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        for (root, expect) in [
            (dir.path().join("missing"), "no such file or directory"),
            (file, "not a directory"),
            (dir.path().to_path_buf(), "has no etc/os-release"),
        ] {
            let err = inspect_root(&root).unwrap_err();
            assert_eq!(exit_code_of(&err), ExitCode::BadInput, "{err}");
            assert!(err.to_string().contains(expect), "{err}");
        }
    }

    #[test]
    fn only_references_that_say_where_from_are_pulled() {
        for r in [
            "quay.example/migrate/debian-13:1",
            "registry.example:5000/m:1",
            "oci-archive:/srv/images/m.tar",
            "docker-archive:/tmp/m.tar",
            "docker://quay.example/m",
        ] {
            assert!(pullable(r), "{r}");
        }
        for r in [
            "localhost/migrate/debian-13:latest",
            "debian-13",
            "migrate/debian-13:1",
            "sha256:0123",
        ] {
            assert!(!pullable(r), "{r}");
        }
    }

    #[test]
    fn the_default_image_follows_the_source_release() {
        assert_eq!(
            image_reference(None, &os("debian", "12")).unwrap(),
            "localhost/migrate/debian-13:latest"
        );
        assert_eq!(
            image_reference(Some("x"), &os("debian", "12")).unwrap(),
            "x"
        );
        assert!(image_reference(None, &os("arch", "")).is_err());
    }
}
