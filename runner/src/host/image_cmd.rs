//! `migrate image build|list|inspect`: migration images from the built-in
//! definitions (`images/<name>/` + `containerfiles/<name>.Containerfile`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::podman::{BuildRequest, Podman};
use super::preflight::require_root;
use super::render::OutputFormat;
use crate::core::exit::{ExitCode, WithExitCode, fail};
use crate::core::image::{DefinitionSource, EmbeddedImage, ImageLabels, LABEL_PROTOCOL};

/// Options of `migrate image build`.
#[derive(Clone, Debug)]
pub(crate) struct BuildOptions {
    /// Name of a built-in image definition, or a definition directory.
    pub(crate) target: String,
    /// Base image (the Containerfile's `BASE` argument).
    pub(crate) base: Option<String>,
    /// Tag of the built image.
    pub(crate) tag: Option<String>,
    /// The static `migrate-agent` binary to put in the image.
    pub(crate) agent: Option<PathBuf>,
    /// `--output`.
    pub(crate) output: OutputFormat,
}

/// Builds a migration image.
pub(crate) async fn build(opts: &BuildOptions) -> Result<()> {
    let source = definition_source(&opts.target)?;
    let def = source.definition().exit_code(ExitCode::BadInput)?;
    let agent_path = locate_agent(opts.agent.as_deref())?;
    let agent = std::fs::read(&agent_path)
        .with_context(|| format!("reading the agent {}", agent_path.display()))
        .exit_code(ExitCode::BadInput)?;
    check_static(&agent).map_err(|e| {
        fail(
            ExitCode::BadInput,
            format!("agent {}: {e:#}", agent_path.display()),
        )
    })?;
    require_root()?;
    let tag = opts.tag.clone().unwrap_or_else(|| def.default_tag.clone());
    // The plan travels in a label too: check it before it goes into an image.
    let plan = source.plan().exit_code(ExitCode::BadInput)?;
    crate::core::plan::resolve(&plan, &[]).exit_code(ExitCode::BadInput)?;
    let labels = def
        .labels(&source.name, &plan.text)
        .exit_code(ExitCode::BadInput)?;
    let mut build_args = BTreeMap::new();
    if let Some(base) = &opts.base {
        build_args.insert("BASE".to_string(), base.clone());
    }
    let context = build_context(&source, &agent).context("assembling the build context")?;

    let podman = Podman::connect().await?;
    let human = opts.output == OutputFormat::Human;
    let result = async {
        let id = podman
            .build(
                &BuildRequest {
                    context: &context,
                    containerfile: "Containerfile",
                    tag: &tag,
                    build_args: &build_args,
                    labels: &labels,
                },
                |line| {
                    if human {
                        println!("{line}");
                    }
                },
            )
            .await
            .exit_code(ExitCode::StepFailed)?;
        // The labels are the contract with `migrate run`: check they arrived.
        let built = podman
            .image(&tag)
            .await?
            .with_context(|| format!("the build reported success but {tag} does not exist"))?;
        ImageLabels::from_config(&built.config)?
            .with_context(|| format!("the built image {tag} lacks its migration labels"))?;
        Ok::<_, anyhow::Error>((id.unwrap_or_else(|| built.id.clone()), built.id))
    }
    .await;
    podman.shutdown().await;
    let (_, id) = result?;
    match opts.output {
        OutputFormat::Human => println!("built {tag} ({id}) from {}", source.origin),
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({ "image": tag, "id": id, "definition": source.name })
        ),
    }
    Ok(())
}

/// A built-in definition by name, or a definition directory (a path).
fn definition_source(target: &str) -> Result<DefinitionSource> {
    if let Some(img) = EmbeddedImage::find(target) {
        return Ok(DefinitionSource::embedded(img));
    }
    let dir = Path::new(target);
    if target.contains('/') || dir.is_dir() {
        return DefinitionSource::from_dir(dir).map_err(|e| {
            fail(
                ExitCode::BadInput,
                format!("image definition {target}: {e:#}"),
            )
        });
    }
    Err(fail(
        ExitCode::BadInput,
        format!(
            "no image definition named {target:?} (built in: {}; or give a directory with image.toml, plan.toml and a Containerfile)",
            EmbeddedImage::names().join(", ")
        ),
    ))
}

/// The agent binary: `--agent`, `$MIGRATE_AGENT`, or `migrate-agent` beside
/// this executable.
fn locate_agent(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("MIGRATE_AGENT") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let beside = exe.with_file_name("migrate-agent");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(fail(
        ExitCode::BadInput,
        format!(
            "no migrate-agent beside {}; pass --agent PATH (a static build for the image's architecture)",
            exe.display()
        ),
    ))
}

/// Refuses anything but a statically linked ELF executable: the agent runs on
/// the target release's libc, whatever that is, so it must bring none.
pub(crate) fn check_static(bytes: &[u8]) -> Result<()> {
    const PT_INTERP: u32 = 3;
    anyhow::ensure!(bytes.get(..4) == Some(b"\x7fELF"), "not an ELF executable");
    anyhow::ensure!(
        bytes.get(4) == Some(&2) && bytes.get(5) == Some(&1),
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    let truncated = || anyhow::anyhow!("truncated ELF header");
    let phoff = usize::try_from(u64_at(0x20).ok_or_else(truncated)?)?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(truncated)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(truncated)?);
    for i in 0..phnum {
        let p_type = u32_at(phoff + i * phentsize).ok_or_else(truncated)?;
        if p_type == PT_INTERP {
            anyhow::bail!(
                "dynamically linked; build it for the musl target (cargo build --release --target x86_64-unknown-linux-musl)"
            );
        }
    }
    Ok(())
}

/// The build context: `Containerfile`, `image/` (the definition) and
/// `migrate-agent`, as an uncompressed tar archive.
fn build_context(image: &DefinitionSource, agent: &[u8]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, bytes)
            .with_context(|| format!("adding {path}"))
    };
    add("Containerfile", &image.containerfile, 0o644)?;
    add("migrate-agent", agent, 0o755)?;
    for (rel, bytes) in &image.files {
        add(&format!("image/{rel}"), bytes, 0o644)?;
    }
    tar.into_inner().context("finishing the tar archive")
}

/// `migrate image list`: migration images podman has.
pub(crate) async fn list(output: OutputFormat) -> Result<()> {
    require_root()?;
    let podman = Podman::connect().await?;
    let images = podman.images_with_label(LABEL_PROTOCOL).await;
    podman.shutdown().await;
    let images = images.exit_code(ExitCode::Environment)?;
    let mut rows = Vec::new();
    for img in images {
        let labels = ImageLabels::from_config(&img.config).ok().flatten();
        rows.push(serde_json::json!({
            "names": img.names,
            "id": img.id,
            "digest": img.digest,
            "definition": labels.as_ref().map(|l| l.image.clone()),
            "target": labels.as_ref().map(|l| l.target.to_string()),
            "accepts": labels.as_ref().map(ImageLabels::accepts_list),
            "protocol": labels.as_ref().map(|l| l.protocol),
        }));
    }
    match output {
        OutputFormat::Json => println!("{}", serde_json::Value::Array(rows)),
        OutputFormat::Human => {
            println!("{:<44} {:<12} {:<16} ID", "IMAGE", "TARGET", "ACCEPTS");
            for r in rows {
                let name = r["names"][0].as_str().unwrap_or("<none>").to_string();
                let id: String = r["id"].as_str().unwrap_or("").chars().take(12).collect();
                println!(
                    "{name:<44} {:<12} {:<16} {id}",
                    r["target"].as_str().unwrap_or("?"),
                    r["accepts"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

/// `migrate image inspect REF`: what the image's labels say.
pub(crate) async fn inspect(reference: &str, output: OutputFormat) -> Result<()> {
    require_root()?;
    let podman = Podman::connect().await?;
    let found = super::preflight::inspect_image(&podman, reference).await;
    podman.shutdown().await;
    let (image, labels) = found?;
    let value = serde_json::json!({
        "reference": reference,
        "id": image.id,
        "digest": image.digest,
        "names": image.names,
        "definition": labels.image,
        "target": labels.target.to_string(),
        "accepts": labels.accepts.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "protocol": labels.protocol,
        "plan": labels.plan,
    });
    match output {
        OutputFormat::Json => println!("{value}"),
        OutputFormat::Human => {
            println!("image:      {reference}");
            println!("id:         {}", image.id);
            println!("digest:     {}", image.digest.as_deref().unwrap_or("-"));
            println!("definition: {}", labels.image);
            println!("target:     {}", labels.target);
            println!("accepts:    {}", labels.accepts_list());
            println!("protocol:   {}", labels.protocol);
            if let Some(plan) = &labels.plan {
                println!("plan:");
                for line in plan.lines() {
                    println!("  {line}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_dynamic_and_is_refused() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are built for the host's (glibc) target.
        let err = check_static(&exe).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
    }

    #[test]
    fn non_elf_files_are_refused() {
        assert!(check_static(b"#!/bin/sh\n").is_err());
        assert!(check_static(b"\x7fELF\x02\x01").is_err());
    }

    #[test]
    fn the_context_holds_containerfile_definition_and_agent() {
        let img = DefinitionSource::embedded(EmbeddedImage::find("debian-13").unwrap());
        let bytes = build_context(&img, b"agent").unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.contains(&"Containerfile".to_string()));
        assert!(names.contains(&"migrate-agent".to_string()));
        assert!(names.contains(&"image/image.toml".to_string()));
    }
}
