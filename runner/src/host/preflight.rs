//! Checks made before anything is changed: the root, its release, the image
//! and whether they fit together. Every refusal here exits with code 2 (bad
//! input) or 4 (environment) and leaves the root untouched.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::podman::{ImageDetails, Podman};
use crate::core::event::PROTOCOL_VERSION;
use crate::core::exit::{ExitCode, WithExitCode, fail};
use crate::core::image::{ImageLabels, LABEL_PROTOCOL, default_image_for};
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
    let Some(image) = podman
        .image(reference)
        .await
        .exit_code(ExitCode::Environment)?
    else {
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
/// depends on the host's configuration. Returns whether it pulled.
pub(crate) async fn find_or_pull_image(
    podman: &Podman,
    reference: &str,
    progress: impl FnMut(&str),
) -> Result<(ImageDetails, ImageLabels, bool)> {
    if podman
        .image(reference)
        .await
        .exit_code(ExitCode::Environment)?
        .is_some()
        || !pullable(reference)
    {
        let (image, labels) = inspect_image(podman, reference).await?;
        return Ok((image, labels, false));
    }
    // An archive podman cannot load is bad input; a registry that does not
    // answer is the environment.
    let code = if crate::core::image::ARCHIVE_TRANSPORTS
        .iter()
        .any(|t| reference.starts_with(t))
    {
        ExitCode::BadInput
    } else {
        ExitCode::Environment
    };
    let id = podman
        .pull(reference, progress)
        .await
        .map_err(|e| fail(code, format!("{e:#}")))?;
    match inspect_image(podman, &id).await {
        Ok((image, labels)) => Ok((image, labels, true)),
        Err(e) => {
            // Not a migration image: leave podman's storage as it was.
            let _ = podman.remove_image(&id).await;
            Err(e)
        }
    }
}

/// Whether a reference names where to pull it from.
pub(crate) fn pullable(reference: &str) -> bool {
    if reference.starts_with("docker://")
        || crate::core::image::ARCHIVE_TRANSPORTS
            .iter()
            .any(|t| reference.starts_with(t))
    {
        return true;
    }
    match reference.split_once('/') {
        Some((host, _)) => host != "localhost" && (host.contains('.') || host.contains(':')),
        None => false,
    }
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
