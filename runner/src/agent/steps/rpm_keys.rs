//! Repository signing keys for zypper: only the keys already in the root's
//! rpm database and those the plan names by fingerprint are trusted (zypper
//! runs without `--gpg-auto-import-keys`, so a repository signed by any
//! other key is refused, as a bad mirror bringing its own key must be).
//!
//! A named key is checked against its fingerprint (gpg, in the image), then
//! imported with `rpm --import`: for questions about the target (checks,
//! dry runs, the download pass) into a throwaway layer over the root's rpm
//! database, so that the root stays unchanged; into the root itself just
//! before packages are installed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::core::cmd::CommandExt;
use crate::core::image::IMAGE_DATA_DIR;
use crate::core::kinds::packages::TrustedKey;

/// Scratch space of the keys, in the container.
const SCRATCH: &str = "/run/migrate-keys";

/// Where the throwaway layer is mounted, while it is.
static LAYER: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The key file of `key` in the image.
fn key_file(key: &TrustedKey) -> PathBuf {
    let path = Path::new(&key.file);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(IMAGE_DATA_DIR).join(path)
    }
}

/// The primary-key fingerprints in gpg's `--with-colons` listing.
pub(crate) fn primary_fingerprints(listing: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut after_pub = false;
    for line in listing.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.first() {
            Some(&"pub") => after_pub = true,
            Some(&"fpr") if after_pub => {
                if let Some(f) = fields.get(9) {
                    out.push(f.to_ascii_uppercase());
                }
                after_pub = false;
            }
            _ => {}
        }
    }
    out
}

/// The key files of `keys`, each checked to hold exactly the key its
/// fingerprint names.
fn verified(keys: &[TrustedKey]) -> Result<Vec<(String, PathBuf)>> {
    let home = Path::new(SCRATCH).join("gnupg");
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    keys.iter()
        .map(|key| {
            let want = key.normalized();
            let file = key_file(key);
            if !file.is_file() {
                bail!(
                    "trusted key {want}: {} is not a file in the migration image",
                    file.display()
                );
            }
            let listing = std::process::Command::new("gpg")
                .arg("--homedir")
                .arg(&home)
                .args(["--batch", "--no-tty", "--with-colons"])
                .args(["--import-options", "show-only", "--import"])
                .arg(&file)
                .run_get_string()
                .with_context(|| format!("reading the key {}", file.display()))?;
            let found = primary_fingerprints(&listing);
            if found != [want.clone()] {
                bail!(
                    "trusted key {want}: {} holds {}",
                    file.display(),
                    if found.is_empty() {
                        "no key".to_string()
                    } else {
                        format!("the key(s) {}", found.join(", "))
                    }
                );
            }
            Ok((want, file))
        })
        .collect()
}

/// The root's rpm database directory.
fn database_dir(root: &Path) -> Result<PathBuf> {
    for rel in super::packages::RPM_DB_DIRS {
        let dir = crate::core::rootfs::resolve(root, rel)?;
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    bail!("{} has no rpm database", root.display())
}

fn import(root: &Path, files: &[(String, PathBuf)]) -> Result<()> {
    for (fpr, file) in files {
        super::rpm::rpm(root, &["--import"])
            .arg(file)
            .run_captured()
            .with_context(|| format!("importing the trusted key {fpr}"))?;
    }
    Ok(())
}

/// Makes the plan's keys trusted for questions about the target without
/// changing the root: imported into a layer over its rpm database that
/// disappears with the agent. Once per agent.
pub(crate) fn trust_for_questions(root: &Path, keys: &[TrustedKey]) -> Result<()> {
    let mut layer = LAYER.lock().unwrap_or_else(|p| p.into_inner());
    if keys.is_empty() || layer.is_some() {
        return Ok(());
    }
    let files = verified(keys)?;
    let db = database_dir(root)?;
    // The layer's writable half on a tmpfs of its own (overlayfs takes no
    // upper directory on the container's own overlay root).
    let tmp = Path::new(SCRATCH).join("layer");
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    crate::agent::mounts::tmpfs(&tmp, MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=0700")?;
    let (upper, work) = (tmp.join("upper"), tmp.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        db.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &db,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .with_context(|| format!("mounting a throwaway layer over {}", db.display()))?;
    *layer = Some(db);
    import(root, &files)
}

/// Imports the plan's keys into the root's rpm database (after removing the
/// throwaway layer, if there is one). Returns the fingerprints imported.
pub(crate) fn trust_in_root(root: &Path, keys: &[TrustedKey]) -> Result<Vec<String>> {
    let mut layer = LAYER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(db) = layer.take() {
        umount2(&db, MntFlags::MNT_DETACH)
            .with_context(|| format!("removing the layer over {}", db.display()))?;
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let files = verified(keys)?;
    import(root, &files)?;
    Ok(files.into_iter().map(|(f, _)| f).collect())
}

/// For a failure that looks like an untrusted signing key, a hint to add
/// to its message (` (...)`); else nothing.
pub(crate) fn hint(detail: &str) -> String {
    if detail.contains("Signature verification failed")
        || detail.contains("Unknown key")
        || detail.contains("is not trusted")
    {
        " (a repository is signed by a key that is neither in the root's rpm database nor named in the step's `trusted_keys` (fingerprint and key file))".to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_fingerprints_only() {
        let listing = "pub:-:255:22:B80F6E971DDBDC90:1:::::scSC:::::ed25519:::0:\n\
             fpr:::::::::7D2D8F7277CA851C915EB18AB80F6E971DDBDC90:\n\
             uid:-::::1::X::TestOS <r@t.invalid>::::::::::0:\n\
             sub:-:255:18:0011223344556677:1::::::e:::::cv25519::\n\
             fpr:::::::::00112233445566778899AABBCCDDEEFF00112233:\n";
        assert_eq!(
            primary_fingerprints(listing),
            ["7D2D8F7277CA851C915EB18AB80F6E971DDBDC90"]
        );
    }

    #[test]
    fn an_untrusted_key_failure_gets_a_hint() {
        assert!(hint("Signature verification failed for repomd.xml").contains("trusted_keys"));
        assert!(hint("Problem: nothing provides libfoo").is_empty());
    }
}
