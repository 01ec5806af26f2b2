//! Embeds the image definitions (`images/<name>/` and
//! `containerfiles/<name>.Containerfile` at the top of the workspace) into the
//! `migrate` binary, so that `migrate image build NAME` works wherever the binary
//! is installed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let top = manifest
        .parent()
        .expect("runner/ lives in the workspace")
        .to_path_buf();
    let images = top.join("images");
    let containerfiles = top.join("containerfiles");
    println!("cargo:rerun-if-changed={}", images.display());
    println!("cargo:rerun-if-changed={}", containerfiles.display());

    let mut names: Vec<String> = std::fs::read_dir(&images)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();

    let mut code = String::from("/// Image definitions embedded at build time.\n");
    code.push_str("pub(crate) static EMBEDDED: &[EmbeddedImage] = &[\n");
    for name in &names {
        let containerfile = containerfiles.join(format!("{name}.Containerfile"));
        println!("cargo:rerun-if-changed={}", containerfile.display());
        assert!(
            containerfile.is_file(),
            "images/{name}/ has no containerfiles/{name}.Containerfile"
        );
        let dir = images.join(name);
        let mut files = Vec::new();
        collect(&dir, &dir, &mut files);
        files.sort();
        let _ = writeln!(
            code,
            "    EmbeddedImage {{ name: {name:?}, containerfile: include_bytes!({:?}), files: &[",
            containerfile.display().to_string()
        );
        for (rel, abs) in files {
            println!("cargo:rerun-if-changed={}", abs.display());
            let _ = writeln!(
                code,
                "        ({rel:?}, include_bytes!({:?})),",
                abs.display().to_string()
            );
        }
        code.push_str("    ] },\n");
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out.join("embedded_images.rs"), code).expect("writing embedded_images.rs");
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            collect(base, &path, out);
        } else if let Ok(rel) = path.strip_prefix(base) {
            out.push((rel.to_string_lossy().into_owned(), path));
        }
    }
}
