//! Debian-family package upgrade with apt, run chrooted in the root so that the
//! root's own apt and dpkg (and their maintainer scripts) do the work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::apt_sources::{source_files, suites};
use super::packages::{
    Fate, Foreign, PackageManager, Refreshed, SpaceEstimate, fate_line, parse_size,
};
use super::{RunContext, StepContext, StepKind, chroot};
use crate::core::cmd::{Background, CommandExt, ToolOutput, stderr_tail};
use crate::core::event::StepStatus;
use crate::core::kinds::Kind;
use crate::core::kinds::apt::{AptSourcesOptions, VendorFile, VendorRepo};
use repos::{Decider, Decision, Probe, ReleaseFile, Source};

mod carry;
mod held;
mod lists;
pub(crate) mod repos;

/// Scratch area for questions about the target release, inside the root's
/// `/run` (a tmpfs the agent mounts in its own namespace).
const SCRATCH: &str = "/run/migrate/apt";

/// The root's own archive cache, where `apt-get` keeps what it downloaded.
const ARCHIVES: &str = "/var/cache/apt/archives/";

/// The gate of the held `apt-get dist-upgrade`, in the scratch area.
const GATE_FILE: &str = "upgrade-go";

/// The `.deb` files in the root's archive cache: how many, how many bytes.
fn archives(root: &Path) -> Result<(usize, u64)> {
    let dir = crate::core::rootfs::resolve(root, ARCHIVES.trim_matches('/'))?;
    let mut found = (0, 0);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(found);
    };
    for e in entries.filter_map(Result::ok) {
        if e.file_name().to_string_lossy().ends_with(".deb")
            && let Ok(m) = e.metadata()
            && m.is_file()
        {
            found.0 += 1;
            found.1 += m.len();
        }
    }
    Ok(found)
}

/// Environment that keeps apt, dpkg and debconf from asking anything.
const NONINTERACTIVE: [(&str, &str); 4] = [
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("DEBCONF_NONINTERACTIVE_SEEN", "true"),
    ("APT_LISTCHANGES_FRONTEND", "none"),
    ("NEEDRESTART_MODE", "a"),
];

/// dpkg options: keep locally edited configuration files (the new version is
/// left beside them as `.dpkg-dist`), take the package's version of files
/// that were never edited.
const KEEP_LOCAL_CONFIG: [&str; 4] = [
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
];

/// Options for questions to the root's own apt: its cache files go to the
/// agent's scratch tmpfs (built once, reused by later questions). Without them
/// apt rewrites `/var/cache/apt/*.bin` of a writable root, and a check must
/// change nothing.
const QUERY_CACHE_FILES: [&str; 4] = [
    "-o",
    "Dir::Cache::pkgcache=/run/migrate/root-pkgcache.bin",
    "-o",
    "Dir::Cache::srcpkgcache=/run/migrate/root-srcpkgcache.bin",
];

/// `program ARGS` of the root's apt, asking questions only.
fn apt_query(root: &Path, program: &str, args: &[&str]) -> Command {
    let mut cmd = apt(root, program, &QUERY_CACHE_FILES);
    cmd.args(args);
    cmd
}

/// `-o KEY=DIR/PATH` for each (KEY, PATH) of `paths`.
fn dir_options(dir: &str, paths: &[(&str, &str)]) -> Vec<String> {
    paths
        .iter()
        .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={dir}/{v}")])
        .collect()
}

/// Updates the package lists and runs `apt-get dist-upgrade`.
pub(crate) struct DistUpgrade;

impl StepKind for DistUpgrade {
    fn describe(&self) -> String {
        "Upgrade all packages (apt-get update, dist-upgrade)".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let pm = ctx.run.packages()?.apt();
        // The upgrade as this run's checks resolved it, apt waiting at its
        // prompt since then with dpkg's locks ([`held`]).
        let mut held = pm.and_then(Apt::take_held);
        // Finish whatever an interrupted earlier attempt left half done
        // (nothing, if dpkg's audit finds nothing: then `dpkg --configure
        // -a` would only rewrite dpkg's status, and apt rebuild its cache
        // of it). A transaction killed mid-way can leave packages
        // half-installed, which `dpkg --configure -a` refuses ("reinstall it
        // before attempting configuration"): its failure is what the repair
        // below is for.
        let clean = dpkg_finished(ctx.root())?;
        if !clean {
            held = None;
        }
        let configured = clean
            || ctx
                .run(&mut apt(ctx.root(), "dpkg", &["--configure", "-a"]))
                .is_ok();
        // The target's lists this run's checks fetched: used as they are
        // while fresh, else revalidated by apt-get update.
        let carried = match pm {
            Some(pm) => pm.carry_lists()?,
            None => None,
        };
        if carried.as_ref().is_none_or(|c| c.stale.is_some()) {
            held = None;
        }
        match &carried {
            Some(c) if c.stale.is_none() => ctx.say(format!(
                "{} lists of the target fetched by this run's checks {} s ago copied to /var/lib/apt/lists; apt reads them and its cache of them as they are (no second apt-get update)",
                c.copied,
                c.age.as_secs()
            )),
            Some(c) => {
                ctx.say(format!(
                    "{} lists of the target fetched by this run's checks copied to /var/lib/apt/lists: apt-get update revalidates them ({})",
                    c.copied,
                    c.stale.as_deref().unwrap_or_default()
                ));
                update_lists(ctx)?;
            }
            None => update_lists(ctx)?,
        }
        let mut args = vec!["-y", "-o", "Dpkg::Use-Pty=0"];
        args.extend(KEEP_LOCAL_CONFIG);
        if !clean && (!configured || !dpkg_audit(ctx.root())?.is_empty()) {
            self.repair(ctx, &args)?;
        }
        let carried_options = carried
            .as_ref()
            .map(CarriedLists::options)
            .unwrap_or_default();
        let before = dpkg_status_stamp(ctx.root());
        if let Some(pm) = pm {
            pm.read_lists_ahead();
        }
        let first_attempt = match held {
            Some(held) => {
                ctx.say("apt-get dist-upgrade goes on as this run's checks resolved it (it waited at its prompt since, holding dpkg's locks): no second resolution");
                held.proceed(&ctx.run.sink, &ctx.step.id, &apt_progress)
            }
            None => {
                let mut first: Vec<&str> = args.clone();
                first.extend(carried_options.iter().map(String::as_str));
                first.push("dist-upgrade");
                ctx.run_with_progress(&mut apt_get_with_status(ctx.root(), &first), &apt_progress)
            }
        };
        let Err(failed) = first_attempt else {
            return Ok(StepStatus::Succeeded);
        };
        // apt refused before dpkg changed anything: lists that went stale
        // since the checks (a package no longer in the repository), or
        // dependencies an interrupted transaction left broken (a package
        // removed before the old one that depends on it was upgraded:
        // consistent to dpkg, broken to apt). Either is put right and the
        // upgrade tried once more; any other failure is the step's.
        let unchanged = before.is_some() && dpkg_status_stamp(ctx.root()) == before;
        let lists_carried = !carried_options.is_empty();
        let broken = unchanged && dependencies_broken(ctx.root())?;
        if !unchanged || !(lists_carried || broken) {
            return Err(failed.context("upgrading the packages"));
        }
        // apt's own error lines, without the command line before them.
        let failure = format!("{failed:#}");
        let why = failure
            .find("E: ")
            .map_or(failure.as_str(), |i| &failure[i..]);
        ctx.say(format!(
            "apt-get dist-upgrade stopped before changing anything ({why}); {}, then it runs once more",
            match (lists_carried, broken) {
                (true, true) => "the lists are fetched again and the broken dependencies repaired",
                (true, false) => "the lists are fetched again",
                _ => "the broken dependencies are repaired",
            }
        ));
        if lists_carried {
            update_lists(ctx)?;
        }
        if broken {
            self.repair(ctx, &args)?;
        }
        args.push("dist-upgrade");
        ctx.run_with_progress(&mut apt_get_with_status(ctx.root(), &args), &apt_progress)
            .context("upgrading the packages")?;
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        ctx.run.packages()?.simulate(ctx)
    }
}

impl DistUpgrade {
    /// Brings dpkg back from what an interrupted transaction left: packages
    /// half-installed or marked for reinstallation are installed again (their
    /// files may be half unpacked), unpacked ones configured, broken
    /// dependencies resolved by apt; then everything must be configured.
    fn repair(&self, ctx: &StepContext<'_>, args: &[&str]) -> Result<()> {
        let broken = needs_reinstall(ctx.root())?;
        if !broken.is_empty() {
            ctx.say(format!(
                "reinstalling what an interrupted transaction left half-installed: {}",
                broken.join(", ")
            ));
            let mut reinstall: Vec<&str> = args.to_vec();
            reinstall.extend(["install", "--reinstall"]);
            reinstall.extend(broken.iter().map(String::as_str));
            // apt may refuse while other packages are broken; -f install
            // below resolves those, and the reinstall is tried once more.
            if ctx
                .run_with_progress(
                    &mut apt_get_with_status(ctx.root(), &reinstall),
                    &apt_progress,
                )
                .is_err()
            {
                let mut fix: Vec<&str> = args.to_vec();
                fix.extend(["-f", "install"]);
                let _ = ctx
                    .run_with_progress(&mut apt_get_with_status(ctx.root(), &fix), &apt_progress);
                ctx.run_with_progress(
                    &mut apt_get_with_status(ctx.root(), &reinstall),
                    &apt_progress,
                )
                .context("reinstalling half-installed packages")?;
            }
        }
        // Unpacked but not configured, with dependencies `dpkg --configure
        // -a` could not satisfy: apt repairs them.
        let mut fix: Vec<&str> = args.to_vec();
        fix.extend(["-f", "install"]);
        ctx.run_with_progress(&mut apt_get_with_status(ctx.root(), &fix), &apt_progress)
            .context("repairing broken dependencies")?;
        ctx.run(&mut apt(ctx.root(), "dpkg", &["--configure", "-a"]))
            .context("finishing interrupted package configuration")?;
        Ok(())
    }
}

/// Packages dpkg says must be installed again: half-installed (`H`) or
/// with the reinstall-required flag (`R`), from `dpkg-query`'s abbreviated
/// status.
fn needs_reinstall(root: &Path) -> Result<Vec<String>> {
    let out = apt(
        root,
        "dpkg-query",
        &["-W", "-f", "${db:Status-Abbrev}\t${binary:Package}\n"],
    )
    .run_get_string()
    .context("asking dpkg which packages are half-installed")?;
    Ok(parse_needs_reinstall(&out))
}

fn parse_needs_reinstall(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let (abbrev, name) = l.split_once('\t')?;
            let mut chars = abbrev.chars();
            let (_want, status, error) = (chars.next(), chars.next(), chars.next());
            (status == Some('H') || error == Some('R')).then(|| name.trim().to_string())
        })
        .collect()
}

fn apt(root: &Path, program: &str, args: &[&str]) -> Command {
    let mut cmd = chroot(root, program);
    cmd.args(args).envs(NONINTERACTIVE);
    cmd
}

/// What `dpkg --audit` says is wrong in the root (empty: nothing).
fn dpkg_audit(root: &Path) -> Result<String> {
    let out = apt(root, "dpkg", &["--audit"]).run_unchecked()?;
    let report = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() && report.is_empty() {
        bail!("dpkg --audit failed {}", out.failure());
    }
    Ok(report)
}

/// Whether dpkg has nothing left half done: its audit finds nothing and its
/// journal holds nothing unapplied.
fn dpkg_finished(root: &Path) -> Result<bool> {
    Ok(dpkg_audit(root)?.is_empty() && !dpkg_interrupted(root))
}

/// Whether dpkg's journal (`/var/lib/dpkg/updates`) holds entries it has
/// not applied to its status yet: dpkg was killed between the two. `dpkg
/// --audit` reads the journal and may find nothing wrong, but apt refuses
/// to work ("dpkg was interrupted") until `dpkg --configure -a` applies it.
fn dpkg_interrupted(root: &Path) -> bool {
    let Ok(dir) = crate::core::rootfs::resolve(root, "var/lib/dpkg/updates") else {
        return false;
    };
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
        })
    })
}

/// `apt-get update` of the root's own lists.
fn update_lists(ctx: &StepContext<'_>) -> Result<()> {
    ctx.run(&mut apt(
        ctx.root(),
        "apt-get",
        &["-o", "APT::Update::Error-Mode=any", "update"],
    ))
    .context("updating the package lists")?;
    Ok(())
}

/// Size and modification time of dpkg's database: unchanged when no
/// package was installed, removed or configured; `None` if unreadable.
fn dpkg_status_stamp(root: &Path) -> Option<(u64, std::time::SystemTime)> {
    let path = crate::core::rootfs::resolve(root, "var/lib/dpkg/status").ok()?;
    let meta = path.symlink_metadata().ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Whether apt finds installed packages whose dependencies are not met
/// (`apt-get check`).
fn dependencies_broken(root: &Path) -> Result<bool> {
    let out = apt(root, "apt-get", &["check"]).run_unchecked()?;
    Ok(!out.status.success())
}

/// `apt-get ARGS` with its machine-readable progress (`APT::Status-Fd`) on
/// stdout. The status fd must not *be* fd 1: apt closes it in the processes
/// it starts, which would leave dpkg's maintainer scripts without a stdout
/// (base-files.postinst then fails with "echo: I/O error"). So the status
/// goes to fd 3, a duplicate of stdout made by a shell in the root.
fn apt_get_with_status(root: &Path, args: &[&str]) -> Command {
    apt_get_status_wrapped(root, STATUS_TO_STDOUT, args)
}

/// `sh -c` scripts that run apt-get with its status lines on stdout (and
/// its stderr there too, for the held upgrade, whose output is read as one
/// stream).
const STATUS_TO_STDOUT: &str = "exec \"$0\" -o APT::Status-Fd=3 \"$@\" 3>&1";
const STATUS_AND_STDERR_TO_STDOUT: &str = "exec \"$0\" -o APT::Status-Fd=3 \"$@\" 3>&1 2>&1";

/// `apt-get ARGS` in the root, run through the `sh -c` `script`.
fn apt_get_status_wrapped(root: &Path, script: &str, args: &[&str]) -> Command {
    let mut cmd = chroot(root, "/bin/sh");
    cmd.args(["-c", script, "apt-get"])
        .args(args)
        .envs(NONINTERACTIVE);
    cmd
}

/// Parses apt's `APT::Status-Fd` lines (`pmstatus:PKG:PERCENT:MESSAGE`,
/// `dlstatus:N:PERCENT:MESSAGE`, and the `pmerror`/`pmconffile` variants
/// that repeat what dpkg already printed).
pub(crate) fn apt_progress(line: &str) -> Option<(f32, String)> {
    let (kind, rest) = line.split_once(':')?;
    let prefix = match kind {
        "pmstatus" => "",
        "dlstatus" => "Downloading: ",
        "pmerror" => "Error: ",
        "pmconffile" => "Configuration file: ",
        _ => return None,
    };
    let mut parts = rest.splitn(3, ':');
    let _what = parts.next()?;
    let percent: f32 = parts.next()?.parse().ok()?;
    let message = parts.next().unwrap_or_default();
    Some((percent.clamp(0.0, 100.0), format!("{prefix}{message}")))
}

/// apt as a [`PackageManager`]: questions about the target release are asked
/// with the root's own apt, pointed at a scratch copy of its sources (switched
/// to the target suite), lists and caches on the agent's tmpfs.
pub(crate) struct Apt {
    root: PathBuf,
    from: String,
    to: String,
    /// The outcome of fetching the target's metadata, once tried.
    refreshed: Refreshed,
    /// The plan's `apt-sources` options: whose sources are the
    /// distribution's, what becomes of the others.
    options: AptSourcesOptions,
    /// Vendor maps: the plan's, then the image's.
    vendors: Vec<VendorRepo>,
    /// The root's sources, classified and decided, once done.
    sources: std::cell::OnceCell<std::result::Result<Vec<Source>, String>>,
    /// Probes made so far (each has its own scratch directory).
    probes: std::cell::Cell<usize>,
    /// Whether questions may use the root's own apt cache files (the
    /// cutover: the root is being changed), instead of scratch ones.
    root_cache: std::cell::Cell<bool>,
    /// `apt-get -V --print-uris dist-upgrade` against the target: the one
    /// resolution of the upgrade the checks share (the sizes, the
    /// packages' fates, what is left to download).
    print_uris: Background,
    /// Whether the plan's checks will ask it: then it is started in the
    /// background as soon as the target's lists are fetched (it and the
    /// checks that do not need it run at the same time).
    ahead: bool,
    /// `apt-cache policy` of the root's own lists (the origin of each
    /// package file), which builds apt's cache of them: started in the
    /// background when the sources are first listed, if the plan's
    /// third-party check will ask it, while the target's lists are fetched.
    root_policy: Background,
    /// Whether the plan has a third-party check.
    third_party: bool,
    /// When this run fetched the target's lists into the scratch area.
    fetched_at: std::cell::Cell<Option<std::time::Instant>>,
    /// Whether the resolution the checks ask for is the cutover's own
    /// `apt-get dist-upgrade`, held at its prompt ([`held`]): `migrate
    /// run` with an `apt` step and checks that ask.
    hold: bool,
    /// That `apt-get dist-upgrade`, while it waits.
    held: std::cell::RefCell<Option<held::HeldUpgrade>>,
    /// The root's lists, read while the upgrade runs, for the question
    /// after it ([`PackageManager::obsolete`]).
    lists_ahead: std::cell::RefCell<Option<lists::ReadAhead>>,
}

/// The target's lists this run's checks fetched, copied into the root's
/// lists directory for the cutover ([`Apt::carry_lists`]).
pub(crate) struct CarriedLists {
    /// How many lists were copied.
    pub(crate) copied: usize,
    /// How long ago they were fetched.
    pub(crate) age: std::time::Duration,
    /// Why they must be revalidated (`apt-get update`), if they must.
    pub(crate) stale: Option<String>,
}

impl CarriedLists {
    /// apt options that make apt read them, and apt's cache of them, where
    /// the checks left them; none when they must be revalidated.
    fn options(&self) -> Vec<String> {
        if self.stale.is_some() {
            return Vec::new();
        }
        dir_options(SCRATCH, &CARRIED)
    }
}

/// Where the checks leave the target's lists and apt's cache of them, in
/// the scratch area: what the cutover's apt reads while they are fresh.
const CARRIED: [(&str, &str); 3] = [
    ("Dir::State::Lists", "lists"),
    ("Dir::Cache::pkgcache", "cache/pkgcache.bin"),
    ("Dir::Cache::srcpkgcache", "cache/srcpkgcache.bin"),
];

/// Where the image keeps its vendor maps (`*.toml`).
fn image_vendor_dir() -> PathBuf {
    Path::new(crate::core::image::IMAGE_DATA_DIR).join("vendors")
}

/// The vendor maps in `dir` (`*.toml`, by name); a bad file is an error
/// naming it.
pub(crate) fn vendor_maps(dir: &Path) -> Result<Vec<VendorRepo>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut maps = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        maps.extend(
            VendorFile::parse(&text)
                .map_err(|e| anyhow::anyhow!("vendor map {}: {e}", f.display()))?,
        );
    }
    Ok(maps)
}

impl Apt {
    /// apt for the run's root and suites.
    pub(crate) fn new(run: &RunContext) -> Result<Self> {
        let (from, to) = suites(run)?;
        let mut options: AptSourcesOptions = match run.plan.first_of_kind(&[Kind::AptSources]) {
            Some(step) => step.options()?,
            None => AptSourcesOptions::default(),
        };
        if options.origins.is_empty()
            && let Some(step) = run.plan.first_of_kind(&[Kind::CheckThirdParty])
        {
            let o: crate::core::kinds::checks::ThirdPartyOptions = step.options()?;
            options.origins = o.origins;
        }
        let mut vendors = options.vendors.clone();
        vendors.extend(vendor_maps(&image_vendor_dir())?);
        let ahead = run
            .plan
            .first_of_kind(&[Kind::CheckThirdParty, Kind::CheckDiskSpace])
            .is_some();
        let third_party = run.plan.first_of_kind(&[Kind::CheckThirdParty]).is_some();
        let hold = ahead && run.holds_upgrade && run.plan.first_of_kind(&[Kind::Apt]).is_some();
        Ok(Self {
            root: run.root.clone(),
            from: from.to_string(),
            to: to.to_string(),
            refreshed: Refreshed::default(),
            options,
            vendors,
            sources: std::cell::OnceCell::new(),
            probes: std::cell::Cell::new(0),
            root_cache: std::cell::Cell::new(false),
            print_uris: Background::default(),
            ahead,
            root_policy: Background::default(),
            third_party,
            fetched_at: std::cell::Cell::new(None),
            hold,
            held: std::cell::RefCell::new(None),
            lists_ahead: std::cell::RefCell::new(None),
        })
    }

    /// The root's sources, each classified and decided (once per run: the
    /// check, the dry run and the cutover of one run decide alike).
    pub(crate) fn sources(&self) -> Result<&[Source]> {
        let decided = self
            .sources
            .get_or_init(|| self.decide_sources().map_err(|e| format!("{e:#}")));
        match decided {
            Ok(s) => Ok(s),
            Err(e) => bail!("{e}"),
        }
    }

    /// From now on, listing the root's sources may use the root's own apt
    /// cache files: a host's apt keeps them valid, so apt does not rebuild
    /// one from every list (about half a second). Only once the root is
    /// being changed: a check must leave even those files as they were.
    pub(crate) fn may_use_root_cache(&self) {
        self.root_cache.set(true);
    }

    fn decide_sources(&self) -> Result<Vec<Source>> {
        if self.third_party && !self.root_cache.get() {
            self.root_policy.start(Self::root_policy_cmd(&self.root));
        }
        let mut sources = repos::entries(&self.root, self.root_cache.get())?;
        let decider = Decider {
            options: &self.options,
            vendors: &self.vendors,
            from: &self.from,
            to: &self.to,
        };
        for s in &mut sources {
            decider.decide(self, s)?;
        }
        Ok(sources)
    }

    /// The target release's suite.
    pub(crate) fn target_suite(&self) -> &str {
        &self.to
    }

    /// Writes each source file of the root with the decisions applied by
    /// `write(path in the agent's view, new text)`, every file (changed or
    /// not); `note` names the migration in the comments beside disabled
    /// sources.
    pub(crate) fn apply_sources(
        &self,
        note: &str,
        mut write: impl FnMut(&Path, &str) -> Result<()>,
    ) -> Result<()> {
        let sources = self.sources()?;
        for file in source_files(&self.root)? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let shown = format!(
                "/{}",
                file.strip_prefix(&self.root).unwrap_or(&file).display()
            );
            let decisions: BTreeMap<usize, &Decision> = sources
                .iter()
                .filter(|s| s.file == shown)
                .map(|s| (s.index, &s.decision))
                .collect();
            let deb822 = file.extension().is_some_and(|e| e == "sources");
            let new = repos::rewrite(&text, deb822, &decisions, &self.from, &self.to, note);
            write(&file, &new)?;
        }
        Ok(())
    }

    /// `apt-cache policy` of the root's own lists, its cache file kept on
    /// the scratch tmpfs.
    fn root_policy_cmd(root: &Path) -> Command {
        apt_query(root, "apt-cache", &["policy"])
    }

    /// Fetches `source` changed by `decision` alone, in a scratch area of
    /// its own; its Release file if it answered.
    fn probe(&self, source: &Source, decision: &Decision) -> Result<Option<ReleaseFile>> {
        let n = self.probes.get() + 1;
        self.probes.set(n);
        let inside = format!("/run/migrate/apt-probe/{n}");
        let dir = self.root.join(inside.trim_start_matches('/'));
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "log",
        ] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let file = crate::core::rootfs::resolve(&self.root, source.file.trim_start_matches('/'))?;
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let deb822 = source.deb822();
        let Some(entry) = repos::entry_text(&text, deb822, source.index) else {
            return Ok(None);
        };
        let changed = repos::rewrite(
            &entry,
            deb822,
            &BTreeMap::from([(1, decision)]),
            &self.from,
            &self.to,
            "probe",
        );
        let name = if deb822 {
            "probe.sources"
        } else {
            "probe.list"
        };
        std::fs::write(dir.join("sources.list.d").join(name), changed)?;
        std::fs::write(dir.join("sources.list"), "")?;
        let mut cmd = apt(&self.root, "apt-get", &[]);
        cmd.args(Self::options_at(&inside)).args([
            "-q",
            "-o",
            "APT::Update::Error-Mode=any",
            "-o",
            "Acquire::Retries=0",
            "update",
        ]);
        if !cmd.run_unchecked()?.status.success() {
            return Ok(None);
        }
        let lists = dir.join("lists");
        let mut found = None;
        for e in std::fs::read_dir(&lists)?.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(prefix) = name
                .strip_suffix("InRelease")
                .or_else(|| name.strip_suffix("Release"))
                && prefix.ends_with('_')
            {
                found = repos::release_at(&self.root, &format!("{inside}/lists/{prefix}"));
                if found.is_some() {
                    break;
                }
            }
        }
        Ok(found)
    }

    fn scratch(&self) -> PathBuf {
        self.root.join(SCRATCH.trim_start_matches('/'))
    }

    /// apt options that point the root's apt at the scratch area.
    fn scratch_options() -> Vec<String> {
        Self::options_at(SCRATCH)
    }

    /// apt options that point the root's apt at the scratch area `dir` (a
    /// path in the root): lists, caches, sources, logs, no locking.
    fn options_at(dir: &str) -> Vec<String> {
        let mut options = dir_options(
            dir,
            &[
                ("Dir::State::Lists", "lists"),
                ("Dir::Cache", "cache"),
                ("Dir::Etc::SourceList", "sources.list"),
                ("Dir::Etc::SourceParts", "sources.list.d"),
                // apt's own logs (the planner's eipp.log of a simulation).
                ("Dir::Log", "log"),
            ],
        );
        for o in ["Debug::NoLocking=1", "APT::Sandbox::User=root"] {
            options.extend(["-o".to_string(), o.to_string()]);
        }
        options
    }

    /// `program` (apt-get, apt-cache) in the root, looking at the scratch area.
    fn scratch_cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = apt(&self.root, program, &[]);
        cmd.args(Self::scratch_options()).args(args);
        cmd
    }

    /// Creates the scratch area: the root's sources switched to the target
    /// suite, and its current lists as a starting point (apt then fetches only
    /// what changed).
    fn prepare_scratch(&self) -> Result<()> {
        let scratch = self.scratch();
        for dir in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "log",
            "tmp",
        ] {
            std::fs::create_dir_all(scratch.join(dir))
                .with_context(|| format!("creating {}", scratch.join(dir).display()))?;
        }
        // The sources as the cutover will leave them: disabled ones are
        // comments, so only what will be used is fetched.
        self.apply_sources("scratch copy", |file, new| {
            let target = self.scratch_copy_of(file)?;
            std::fs::write(&target, new).with_context(|| format!("writing {}", target.display()))
        })?;
        // The root's lists, for apt to ask the mirrors only what changed;
        // not those of the suites the cutover replaces (`apt-get update`
        // would only delete them: 50 MB for Debian's main list).
        let replaced = repos::replaced_lists(self.sources()?);
        let lists = repos::root_lists(&self.root)?;
        if let Ok(entries) = std::fs::read_dir(&lists) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name();
                let useless = replaced
                    .iter()
                    .any(|prefix| name.to_string_lossy().starts_with(prefix));
                if name != "lock" && !useless && e.file_type().is_ok_and(|t| t.is_file()) {
                    carry::copy_list(&e.path(), &scratch.join("lists"), &name)?;
                }
            }
        }
        Ok(())
    }

    /// `apt-get update` of the target's repositories into the scratch area.
    fn fetch_target(&self) -> Result<()> {
        self.prepare_scratch()?;
        let out = self
            .scratch_cmd(
                "apt-get",
                &["-q", "-o", "APT::Update::Error-Mode=any", "update"],
            )
            .run_unchecked()?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let errors: Vec<&str> = stderr
                .lines()
                .filter(|l| l.starts_with("E:") || l.starts_with("W:") || l.starts_with("Err:"))
                .collect();
            bail!(
                "apt-get update against the {} repositories failed: {}",
                self.to,
                if errors.is_empty() {
                    stderr_tail(&stderr)
                } else {
                    errors.join(" | ")
                }
            );
        }
        self.fetched_at.set(Some(std::time::Instant::now()));
        if self.ahead {
            // Held only with nothing left half done in dpkg (the cutover
            // would have to finish that first, under apt's lock).
            let held = if self.hold && dpkg_finished(&self.root).unwrap_or(false) {
                held::HeldUpgrade::start(self.held_cmd(), self.scratch().join(GATE_FILE)).ok()
            } else {
                None
            };
            match held {
                Some(h) => *self.held.borrow_mut() = Some(h),
                None => self.print_uris.start(self.print_uris_cmd()),
            }
        }
        Ok(())
    }

    /// The cutover's `apt-get dist-upgrade`, to be held at its prompt: the
    /// target's lists and their cache where the checks fetched them, the
    /// sources as the cutover writes them (the checks' copy), dpkg's options
    /// as the cutover's, no `-y`, the gate before dpkg, stderr joined to
    /// stdout.
    fn held_cmd(&self) -> Command {
        let mut args: Vec<String> = ["-V", "-o", "Dpkg::Use-Pty=0"]
            .into_iter()
            .chain(KEEP_LOCAL_CONFIG)
            .map(String::from)
            .collect();
        args.extend(dir_options(SCRATCH, &CARRIED));
        args.extend(dir_options(
            SCRATCH,
            &[
                ("Dir::Etc::SourceList", "sources.list"),
                ("Dir::Etc::SourceParts", "sources.list.d"),
            ],
        ));
        args.extend([
            "-o".to_string(),
            held::gate_option(&format!("{SCRATCH}/{GATE_FILE}")),
            "dist-upgrade".to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        apt_get_status_wrapped(&self.root, STATUS_AND_STDERR_TO_STDOUT, &args)
    }

    /// The one resolution of the upgrade the checks share: what the held
    /// `apt-get dist-upgrade` printed before its prompt, else `apt-get -V
    /// --print-uris dist-upgrade`'s answer.
    fn resolution(&self) -> Result<String> {
        if let Some(h) = self.held.borrow_mut().as_mut() {
            return h.plan();
        }
        self.print_uris.get(|| self.print_uris_cmd())
    }

    /// The held `apt-get dist-upgrade`, for the cutover to answer; `None`
    /// when there is none or it does not wait at its prompt (then it has
    /// ended or is told no).
    pub(crate) fn take_held(&self) -> Option<held::HeldUpgrade> {
        let mut h = self.held.borrow_mut().take()?;
        h.at_prompt().then_some(h)
    }

    /// Starts reading the root's lists for [`PackageManager::obsolete`],
    /// while the upgrade about to start runs (it changes the installed
    /// packages, not the lists; lists changed after all are read again).
    fn read_lists_ahead(&self) {
        *self.lists_ahead.borrow_mut() = Some(lists::ReadAhead::start(&self.root));
    }

    /// Tells the held `apt-get dist-upgrade`, if any, no (it ends having
    /// changed nothing and lets go of dpkg's locks).
    pub(crate) fn release_held(&self) {
        drop(self.held.borrow_mut().take());
    }

    /// The upgrade resolved against the target's lists, without carrying
    /// it out: what it installs, upgrades and removes, one package a line
    /// with its versions (`-V`), and what it would download with sizes:
    /// what the root's archive cache lacks (where the prefetch and the
    /// cutover look; `--print-uris` reads it, creating and locking
    /// nothing). Cheaper than `-s`, whose ordering of every installation
    /// took about a second more on a minimal upgrade.
    fn print_uris_cmd(&self) -> Command {
        self.scratch_cmd(
            "apt-get",
            &[
                "-o",
                &format!("Dir::Cache::archives={ARCHIVES}"),
                "-V",
                "--print-uris",
                "-y",
                "dist-upgrade",
            ],
        )
    }

    /// Where apt's target lists offer each of `names` in its candidate
    /// version, as apt's simulation names it (`Origin:Version/Archive`,
    /// e.g. `Debian:13.2/stable` or `Vendor B:trixie`).
    fn candidates_from(&self, names: &[&str]) -> Result<BTreeMap<String, String>> {
        let files = self
            .scratch_cmd("apt-cache", &["policy"])
            .run_get_string()?;
        let releases = parse_release_names(&files);
        let policy = self
            .scratch_cmd("apt-cache", &["policy"])
            .args(names)
            .run_get_string()?;
        Ok(parse_candidate_files(&policy)
            .into_iter()
            .map(|(pkg, files)| {
                let mut from: Vec<&str> = Vec::new();
                for f in &files {
                    if let Some(r) = releases.get(f)
                        && !from.contains(&r.as_str())
                    {
                        from.push(r);
                    }
                }
                (pkg, from.join(", "))
            })
            .collect())
    }

    /// Carries the target's lists this run's checks fetched into the
    /// cutover ([`carry`]): copies them into the root's lists directory in
    /// place of its old lists, and says whether the cutover's apt may read
    /// them and apt's cache of them as they are. `None` when this run
    /// fetched none.
    pub(crate) fn carry_lists(&self) -> Result<Option<CarriedLists>> {
        let Some(fetched) = self.fetched_at.get().filter(|_| self.refreshed.succeeded()) else {
            return Ok(None);
        };
        let from = self.scratch().join("lists");
        let to = repos::root_lists(&self.root)?;
        let copied = carry::mirror(&from, &to)?;
        let age = fetched.elapsed();
        let stale = if age > carry::FRESH_FOR {
            Some(format!("fetched {} minutes ago", age.as_secs() / 60))
        } else if !self.sources_as_fetched()? {
            Some("the sources changed since".to_string())
        } else {
            None
        };
        Ok(Some(CarriedLists { copied, age, stale }))
    }

    /// Whether the root's sources now say to apt what the checks' copy
    /// said when the lists were fetched.
    fn sources_as_fetched(&self) -> Result<bool> {
        let scratch = self.scratch();
        let files = source_files(&self.root)?;
        let copies = std::fs::read_dir(scratch.join("sources.list.d"))
            .map(|d| d.count())
            .unwrap_or(0)
            + usize::from(scratch.join("sources.list").is_file());
        if copies != files.len() {
            return Ok(false);
        }
        for file in files {
            let copy = self.scratch_copy_of(&file)?;
            let (Ok(now), Ok(then)) = (
                std::fs::read_to_string(&file),
                std::fs::read_to_string(&copy),
            ) else {
                return Ok(false);
            };
            if !carry::sources_alike(&now, &then) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Where the scratch area keeps its copy of the root's source file
    /// `file` (a path in the agent's view).
    fn scratch_copy_of(&self, file: &Path) -> Result<PathBuf> {
        let scratch = self.scratch();
        let parts = crate::core::rootfs::resolve(&self.root, "etc/apt/sources.list.d")?;
        let main = crate::core::rootfs::resolve(&self.root, "etc/apt/sources.list")?;
        Ok(if *file == main {
            scratch.join("sources.list")
        } else {
            let rel = file.strip_prefix(&parts).unwrap_or(file);
            scratch.join("sources.list.d").join(rel)
        })
    }

    /// Fetches the target's metadata once; later calls repeat the outcome.
    fn ensure_refreshed(&self) -> Result<()> {
        self.refreshed.ensure(|| self.fetch_target())
    }
}

impl Probe for Apt {
    fn cached_release(&self, prefix: &str) -> Option<ReleaseFile> {
        repos::release_at(&self.root, prefix)
    }

    fn signed_by_distribution(&self, release: &ReleaseFile) -> Result<bool> {
        let keyrings: Vec<&String> = self
            .options
            .keyrings
            .iter()
            .filter(|k| {
                crate::core::rootfs::resolve(&self.root, k.trim_start_matches('/'))
                    .is_ok_and(|p| p.is_file())
            })
            .collect();
        if keyrings.is_empty() {
            return Ok(true);
        }
        let path = release.path.to_string_lossy().into_owned();
        let mut cmd = chroot(&self.root, "gpgv");
        // As apt: one valid signature by a key of the keyrings is enough
        // (a Release file is often signed by several keys, some of them
        // unknown to an older keyring); a bad signature is not.
        cmd.args(["--status-fd", "1"]);
        for k in keyrings {
            cmd.arg("--keyring").arg(k);
        }
        if path.ends_with("InRelease") {
            cmd.arg(&path);
        } else {
            let signature = format!("{path}.gpg");
            let sig_in_root =
                crate::core::rootfs::resolve(&self.root, signature.trim_start_matches('/'))?;
            if !sig_in_root.is_file() {
                return Ok(false);
            }
            cmd.arg(&signature).arg(&path);
        }
        let out = cmd
            .run_unchecked()
            .context("verifying a Release file with the root's gpgv")?;
        Ok(signed_validly(&String::from_utf8_lossy(&out.stdout)))
    }

    fn answers(&self, source: &Source, decision: &Decision) -> Option<ReleaseFile> {
        self.probe(source, decision).ok().flatten()
    }
}

impl PackageManager for Apt {
    fn name(&self) -> &'static str {
        "apt"
    }

    fn apt(&self) -> Option<&Apt> {
        Some(self)
    }

    fn repositories(&self) -> Result<Vec<super::packages::RepoLine>> {
        Ok(self
            .sources()?
            .iter()
            .map(|s| super::packages::RepoLine {
                line: s.describe(&self.to),
                place: format!("{}:{} {}", s.file, s.index, s.uri()),
                third_party: s.third_party(),
                disabled: match &s.decision {
                    Decision::Disable(why) => Some(why.clone()),
                    _ => None,
                },
                inhibits: s.inhibits,
            })
            .collect())
    }

    fn database_problems(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let audit = dpkg_audit(&self.root)?;
        if !audit.is_empty() {
            problems.push(format!(
                "dpkg --audit: {}",
                audit.lines().next().unwrap_or_default()
            ));
        }
        // This run's own apt, held at its prompt, holds the locks.
        let locks: &[&str] = if self.held.borrow().is_some() {
            &[]
        } else {
            &[
                "var/lib/dpkg/lock-frontend",
                "var/lib/dpkg/lock",
                "var/lib/apt/lists/lock",
                "var/cache/apt/archives/lock",
            ]
        };
        for lock in locks {
            let path = crate::core::rootfs::resolve(&self.root, lock)?;
            if let Some(holder) = crate::core::fsutil::lock_holder(&path)? {
                problems.push(format!("/{lock} is locked by {holder}"));
            }
        }
        Ok(problems)
    }

    fn refresh_target(&self) -> Result<()> {
        self.refreshed.record(self.fetch_target())
    }

    fn estimate(&self) -> Result<SpaceEstimate> {
        self.ensure_refreshed()?;
        let out = self.resolution().context("estimating the upgrade")?;
        Ok(parse_estimate(&out))
    }

    fn installed_size(&self, packages: &[String]) -> Result<u64> {
        if packages.is_empty() {
            return Ok(0);
        }
        // Installed-Size is in KiB; unknown names print nothing.
        let out = apt(
            &self.root,
            "dpkg-query",
            &["-W", "-f", "${Installed-Size}\\n"],
        )
        .args(packages)
        .run_unchecked()?;
        Ok(super::packages::sum_sizes(
            &String::from_utf8_lossy(&out.stdout),
            1024,
        ))
    }

    fn blocking_holds(&self) -> Result<Vec<String>> {
        // Holds are dpkg selections; dpkg reads them without building apt's cache.
        let selections = apt(
            &self.root,
            "dpkg-query",
            &["-W", "-f", "${db:Status-Want} ${binary:Package}\\n"],
        )
        .run_get_string()?;
        let held: Vec<&str> = selections
            .lines()
            .filter_map(|l| l.strip_prefix("hold "))
            .collect();
        if held.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_refreshed()?;
        let text = self
            .scratch_cmd("apt-cache", &["policy"])
            .args(&held)
            .run_get_string()?;
        Ok(parse_policy_versions(&text)
            .into_iter()
            .filter(|(_, installed, candidate)| {
                candidate
                    .as_deref()
                    .is_some_and(|c| Some(c) != installed.as_deref())
            })
            .map(|(pkg, installed, candidate)| {
                format!(
                    "{pkg} (held at {}, {} has {})",
                    installed.unwrap_or_default(),
                    self.to,
                    candidate.unwrap_or_default()
                )
            })
            .collect())
    }

    fn foreign(&self, origins: &[String]) -> Result<Foreign> {
        // The root's own, current lists: what it was installed from.
        let sources = self.root_policy.get(|| Self::root_policy_cmd(&self.root))?;
        let origin_of = parse_package_files(&sources);
        if origin_of.is_empty() {
            bail!(
                "the root has no package lists (run apt-get update in it); cannot tell where packages come from"
            );
        }
        let origins = if self.options.origins.is_empty() {
            origins
        } else {
            &self.options.origins
        };
        let decided = self.sources()?;
        // A package file is the distribution's when its origin says so and
        // no source classified third-party (a vendor claiming the
        // distribution's origin) serves it: `URI SUITE/COMPONENT ...`.
        let foreign_files: Vec<String> = decided
            .iter()
            .filter(|s| s.third_party())
            .flat_map(|s| {
                s.uris.iter().flat_map(move |u| {
                    s.suites
                        .iter()
                        .map(move |suite| format!("{} {suite}/", u.trim_end_matches('/')))
                })
            })
            .collect();
        let ours_file = |file: &str, origin: &str| {
            origins.iter().any(|x| x == origin)
                && !foreign_files.iter().any(|p| file.starts_with(p.as_str()))
        };
        let repositories: Vec<String> = decided
            .iter()
            .filter(|s| s.third_party())
            .map(|s| s.describe(&self.to))
            .collect();
        let installed = apt(
            &self.root,
            "dpkg-query",
            &[
                "-W",
                "-f",
                "${db:Status-Abbrev} ${binary:Package} ${Version}\\n",
            ],
        )
        .run_get_string()?;
        let versions: BTreeMap<&str, &str> = installed
            .lines()
            .filter(|l| l.starts_with("ii"))
            .filter_map(|l| {
                let mut w = l.split_whitespace().skip(1);
                Some((w.next()?, w.next()?))
            })
            .collect();
        let names: Vec<&str> = versions.keys().copied().collect();
        let mut foreign = Vec::new();
        for chunk in names.chunks(500) {
            let text = apt_query(&self.root, "apt-cache", &["policy"])
                .args(chunk)
                .run_get_string()?;
            for p in parse_installed_sources(&text) {
                let ours = |f: &String| origin_of.get(f).is_some_and(|o| ours_file(f, o));
                // A version no list has any more (a point release replaced
                // it since the last upgrade) of a package only the
                // distribution has: the distribution's.
                let from_distribution = p.installed.iter().any(ours)
                    || (p.installed.is_empty()
                        && !p.others.is_empty()
                        && p.others.iter().all(ours));
                if !from_distribution {
                    foreign.push(p.name);
                }
            }
        }
        // What the upgrade does to each, if the target answered.
        let fates = if foreign.is_empty() {
            BTreeMap::new()
        } else {
            self.ensure_refreshed()
                .and_then(|()| self.resolution())
                .map(|out| parse_fates(&out))
                .unwrap_or_default()
        };
        let upgraded: Vec<&str> = foreign
            .iter()
            .filter(|p| matches!(fates.get(*p), Some(Fate::Upgraded(..))))
            .map(String::as_str)
            .collect();
        let from = if upgraded.is_empty() {
            BTreeMap::new()
        } else {
            self.candidates_from(&upgraded).unwrap_or_default()
        };
        let fates: BTreeMap<String, Fate> = fates
            .into_iter()
            .map(|(pkg, fate)| match fate {
                Fate::Upgraded(v, _) => {
                    let origin = from.get(&pkg).cloned().unwrap_or_default();
                    (pkg, Fate::Upgraded(v, origin))
                }
                other => (pkg, other),
            })
            .collect();
        let packages = foreign
            .into_iter()
            .map(|pkg| {
                let installed = versions.get(pkg.as_str()).copied().unwrap_or("?");
                fate_line(&pkg, installed, fates.get(&pkg), self.refreshed.succeeded())
            })
            .collect();
        Ok(Foreign {
            repositories,
            packages,
        })
    }

    fn simulate(&self, ctx: &StepContext<'_>) -> Result<()> {
        self.ensure_refreshed()?;
        // The sizes are asked while the simulation is shown.
        self.print_uris.start(self.print_uris_cmd());
        ctx.run(&mut self.scratch_cmd("apt-get", &["-s", "-o", "Dpkg::Use-Pty=0", "dist-upgrade"]))
            .context("simulating the upgrade")?;
        let e = self.estimate()?;
        ctx.say(format!(
            "would download {:.1} MB; installed size would change by {:+.1} MB",
            e.download as f64 / 1e6,
            e.installed_delta as f64 / 1e6
        ));
        Ok(())
    }

    fn prefetch(&self, ctx: &StepContext<'_>) -> Result<String> {
        self.ensure_refreshed()?;
        let before = archives(&self.root)?;
        // The checks of this run asked what the upgrade would download
        // (apt lists only what its archive cache lacks): when that is
        // nothing, a second resolution of the upgrade would find nothing
        // either.
        let nothing_left = if self.held.borrow().is_some() {
            // apt waits at its prompt with nothing left to fetch, or must
            // let go of the archive cache's lock for the download.
            let nothing =
                matches!(self.resolution(), Ok(plan) if parse_estimate(&plan).download == 0);
            if !nothing {
                self.release_held();
                ctx.say("apt-get dist-upgrade, held at its prompt since the checks, answered no to let the packages be downloaded now; the cutover resolves the upgrade again");
            }
            nothing
        } else {
            self.print_uris.asked()
                && self
                    .print_uris
                    .get(|| self.print_uris_cmd())
                    .is_ok_and(|out| uris(&out) == 0)
        };
        if nothing_left {
            return Ok(format!(
                "{ARCHIVES} holds {} packages ({:.1} MB), every one the upgrade needs: nothing to download",
                before.0,
                before.1 as f64 / 1e6
            ));
        }
        // The target's lists of the scratch area decide what is needed;
        // the packages go to the root's own archive cache, where the
        // cutover's `apt-get dist-upgrade` finds them (by name and checksum)
        // instead of downloading them.
        let mut args: Vec<String> = Self::scratch_options();
        args.extend(
            [
                "-o",
                &format!("Dir::Cache::archives={ARCHIVES}"),
                "-y",
                "-o",
                "Dpkg::Use-Pty=0",
                "--download-only",
                "dist-upgrade",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctx.run_with_progress(&mut apt_get_with_status(&self.root, &args), &apt_progress)
            .context("downloading the packages of the upgrade")?;
        let after = archives(&self.root)?;
        let new = after.0.saturating_sub(before.0);
        Ok(format!(
            "{ARCHIVES} holds {} packages ({:.1} MB), {new} of them downloaded now: the cutover installs them without downloading",
            after.0,
            after.1 as f64 / 1e6
        ))
    }

    fn obsolete(&self) -> Result<Vec<String>> {
        let installed = apt(
            &self.root,
            "dpkg-query",
            &["-W", "-f", lists::INSTALLED_FORMAT],
        )
        .run_get_string()?;
        let native = apt(&self.root, "dpkg", &["--print-architecture"]).run_get_string()?;
        let ahead = self.lists_ahead.borrow_mut().take();
        if let Some(local) = ahead.and_then(|a| a.local_packages(&installed, native.trim())) {
            return Ok(local);
        }
        if let Some(local) = lists::local_packages(&self.root, &installed, native.trim())? {
            return Ok(local);
        }
        // The scratch cache, not the root's: after a release upgrade the
        // root's cache files are of the old apt's format, so apt would
        // rebuild them anyway, and write 90 MB into the root doing so
        // (measured: no faster).
        let out = apt_query(&self.root, "apt", &["list", "--installed"]).run_get_string()?;
        Ok(parse_local_packages(&out))
    }

    fn remove_exactly(&self, ctx: &StepContext<'_>, names: &[String]) -> Result<Option<String>> {
        let simulated = apt(
            &self.root,
            "apt-get",
            &["-s", "-o", "Dir::Log=/run/migrate", "remove"],
        )
        .args(names)
        .run_get_string()
        .context("simulating the removal")?;
        let along: Vec<String> = parse_simulation(&simulated)
            .into_iter()
            .filter(|(_, fate)| *fate == Fate::Removed)
            .map(|(name, _)| name.split(':').next().unwrap_or_default().to_string())
            .filter(|name| !names.contains(name))
            .collect();
        if !along.is_empty() {
            return Ok(Some(format!(
                "removing them would also remove {}",
                along.join(", ")
            )));
        }
        let mut args = vec!["-y", "-o", "Dpkg::Use-Pty=0", "remove"];
        args.extend(names.iter().map(String::as_str));
        ctx.run_with_progress(&mut apt_get_with_status(&self.root, &args), &apt_progress)
            .context("removing the obsolete packages")?;
        Ok(None)
    }

    fn verify(&self) -> Result<Vec<String>> {
        Ok(dpkg_audit(&self.root)?
            .lines()
            .map(|l| format!("dpkg --audit: {l}"))
            .collect())
    }
}

/// How many files `apt-get --print-uris` would fetch (`'URI' NAME SIZE HASH`).
fn uris(print_uris: &str) -> usize {
    print_uris.lines().filter(|l| l.starts_with('\'')).count()
}

/// The packages `apt list --installed` marks `local` (installed, and in no
/// repository of the root's lists): `name/now 1.0 amd64 [installed,local]`.
fn parse_local_packages(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| {
            l.rsplit_once('[').is_some_and(|(_, flags)| {
                flags.trim_end_matches(']').split(',').any(|f| f == "local")
            })
        })
        .filter_map(|l| l.split_once('/').map(|(name, _)| name.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether gpgv's status lines (`--status-fd`) report a valid signature
/// and no bad one.
fn signed_validly(status: &str) -> bool {
    let tags: Vec<&str> = status
        .lines()
        .filter_map(|l| l.strip_prefix("[GNUPG:] "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    tags.contains(&"VALIDSIG") && !tags.contains(&"BADSIG")
}

/// `apt-get -s dist-upgrade`: `Inst NAME [OLD] (NEW ARCHIVES [ARCH])` and
/// `Remv NAME [OLD]` lines, by package.
fn parse_simulation(text: &str) -> BTreeMap<String, Fate> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Inst ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            let Some((_, new)) = rest.split_once(" (") else {
                continue;
            };
            let new = new.trim_end_matches(')');
            let new = new.rsplit_once(" [").map_or(new, |(n, _)| n);
            let (version, archives) = new.split_once(' ').unwrap_or((new, ""));
            out.insert(
                name.to_string(),
                Fate::Upgraded(version.to_string(), archives.to_string()),
            );
        } else if let Some(rest) = line.strip_prefix("Remv ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            out.insert(name.to_string(), Fate::Removed);
        }
    }
    out
}

/// The package names of a line of apt's lists of packages: several
/// (`  libdb5.3* libssl3`), or one with its versions under `-V`
/// (`   apt (2.6.1 => 3.0.4)`, `   libdb5.3* (5.3.28)`).
fn listed_names(line: &str) -> impl Iterator<Item = &str> {
    let line = line.split(" (").next().unwrap_or_default();
    line.split_whitespace().map(|n| n.trim_end_matches('*'))
}

/// Which list of installed packages an upgrade changes a heading of apt's
/// starts (`The following packages will be upgraded:`, `... DOWNGRADED:`,
/// `... REMOVED:`), if it is one of them.
fn changed_list(heading: &str) -> Option<&'static str> {
    [
        "will be upgraded:",
        "will be DOWNGRADED:",
        "will be REMOVED:",
    ]
    .into_iter()
    .find(|h| heading.ends_with(h))
}

/// What an upgrade does to each installed package it changes, from
/// `apt-get -V` lists: `upgraded` and `DOWNGRADED` to the version after
/// `=>` (where from is left empty: `-V` does not say), `REMOVED`.
fn parse_fates(text: &str) -> BTreeMap<String, Fate> {
    let mut out = BTreeMap::new();
    let mut section = "";
    for line in text.lines() {
        if line.starts_with("The following ") {
            section = changed_list(line).unwrap_or("");
            continue;
        }
        if !line.starts_with(' ') {
            section = "";
            continue;
        }
        let Some(name) = listed_names(line).next() else {
            continue;
        };
        let fate = match section {
            "will be REMOVED:" => Fate::Removed,
            "" => continue,
            _ => match line.split_once("=> ") {
                Some((_, new)) => Fate::Upgraded(
                    new.trim_end().trim_end_matches(')').to_string(),
                    String::new(),
                ),
                None => continue,
            },
        };
        out.insert(name.to_string(), fate);
    }
    out
}

/// `apt-cache policy` (no arguments): package file -> how apt's simulation
/// names its release (`Origin:Version/Archive`, `Origin:Archive` without a
/// version), from its `release` line.
fn parse_release_names(text: &str) -> BTreeMap<String, String> {
    package_file_releases(text)
        .into_iter()
        .map(|(file, release)| {
            let (origin, version, archive) = (
                release_field(&release, "o"),
                release_field(&release, "v"),
                release_field(&release, "a"),
            );
            let mut name = String::new();
            if !origin.is_empty() {
                name = format!("{origin}:");
            }
            if !version.is_empty() {
                name = format!("{name}{version}/");
            }
            (file, format!("{name}{archive}"))
        })
        .collect()
}

/// `apt-cache policy PKG...`: for each package, the package files its
/// candidate version is available from.
fn parse_candidate_files(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut candidate: Option<String> = None;
    let mut in_candidate = false;
    for line in text.lines() {
        let t = line.trim();
        if !line.starts_with(' ') && line.ends_with(':') {
            out.push((line.trim_end_matches(':').to_string(), Vec::new()));
            candidate = None;
            in_candidate = false;
        } else if let Some(v) = t.strip_prefix("Candidate: ") {
            candidate = Some(v.to_string());
        } else if line.starts_with(" *** ")
            || (line.starts_with("     ") && !line.starts_with("        "))
        {
            // A version of the table: ` *** 1.0 100` or `     2.0 500`.
            let version = t.trim_start_matches("*** ").split(' ').next();
            in_candidate = version.is_some() && version == candidate.as_deref();
        } else if in_candidate
            && line.starts_with("        ")
            && let (Some(last), Some((_, file))) = (out.last_mut(), t.split_once(' '))
            && !file.starts_with('/')
        {
            last.1.push(file.to_string());
        }
    }
    out
}

/// "Need to get [A/]B of archives." and "After this operation, C of
/// additional disk space will be used." (or "will be freed").
fn parse_estimate(out: &str) -> SpaceEstimate {
    let mut e = SpaceEstimate::default();
    // Inside a "The following packages will be upgraded:" (or REMOVED,
    // DOWNGRADED) list: its indented lines name installed packages.
    let mut replacing = false;
    for line in out.lines() {
        if line.starts_with("The following ") {
            replacing = changed_list(line).is_some();
            continue;
        }
        if line.starts_with(' ') {
            if replacing {
                e.replaced.extend(listed_names(line).map(str::to_string));
            }
        } else {
            replacing = false;
        }
        if let Some(rest) = line.strip_prefix("Need to get ") {
            let size = rest.trim_end_matches(" of archives.");
            // "12.0 MB/36.4 MB": still to fetch / all the archives (the
            // rest is in the archive cache already); one figure when
            // nothing is cached.
            let fetch = size.split('/').next().unwrap_or(size);
            e.download = parse_size(fetch).unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("After this operation, ") {
            let freed = rest.contains("freed");
            let size = rest
                .split(" of ")
                .next()
                .unwrap_or("")
                .split(" disk")
                .next()
                .unwrap_or("");
            let bytes = i64::try_from(parse_size(size).unwrap_or(0)).unwrap_or(i64::MAX);
            e.installed_delta = if freed { -bytes } else { bytes };
        } else if line.starts_with(' ')
            && line
                .split_whitespace()
                .any(|w| w.starts_with("linux-image-"))
        {
            e.kernel = true;
        }
    }
    e
}

/// `apt-cache policy PKG...`: (package, installed, candidate).
fn parse_policy_versions(text: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let mut out: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            out.push((line.trim_end_matches(':').to_string(), None, None));
        } else if let Some(last) = out.last_mut() {
            let t = line.trim();
            let value = |v: &str| (v != "(none)").then(|| v.to_string());
            if let Some(v) = t.strip_prefix("Installed: ") {
                last.1 = value(v);
            } else if let Some(v) = t.strip_prefix("Candidate: ") {
                last.2 = value(v);
            }
        }
    }
    out
}

/// `apt-cache policy` (no arguments): package file -> origin (`o=`), e.g.
/// `"http://host/debian bookworm/main amd64 Packages" -> "Debian"`.
fn parse_package_files(text: &str) -> BTreeMap<String, String> {
    package_file_releases(text)
        .into_iter()
        .map(|(file, release)| {
            let origin = release_field(&release, "o").to_string();
            (file, origin)
        })
        .collect()
}

/// `apt-cache policy` (no arguments): package file -> its `release` line
/// (`v=13.2,o=Debian,a=stable,...`).
fn package_file_releases(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line == "Pinned packages:" {
            break;
        }
        let t = line.trim();
        if let Some(release) = t.strip_prefix("release ") {
            if let Some(file) = current.take() {
                out.insert(file, release.to_string());
            }
        } else if let Some((prio, file)) = t.split_once(' ')
            && prio.parse::<i32>().is_ok()
            && !file.starts_with('/')
        {
            current = Some(file.to_string());
        }
    }
    out
}

/// The value of `key` in a `release` line of `apt-cache policy`, or "".
fn release_field<'a>(release: &'a str, key: &str) -> &'a str {
    release
        .split(',')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or("")
}

/// `apt-cache policy PKG...`: for each installed package, the package files
/// its installed version is available from, and those of its other versions.
fn parse_installed_sources(text: &str) -> Vec<InstalledSources> {
    let mut out: Vec<InstalledSources> = Vec::new();
    let mut in_installed = false;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            out.push(InstalledSources {
                name: line.trim_end_matches(':').to_string(),
                ..InstalledSources::default()
            });
            in_installed = false;
        } else if line.starts_with(" *** ") {
            in_installed = true;
        } else if line.starts_with("     ") && !line.starts_with("        ") {
            // Another version of the table.
            in_installed = false;
        } else if line.starts_with("        ")
            && let (Some(last), Some((_, file))) = (out.last_mut(), line.trim().split_once(' '))
            && !file.starts_with('/')
        {
            if in_installed {
                last.installed.push(file.to_string());
            } else {
                last.others.push(file.to_string());
            }
        }
    }
    out
}

/// An installed package's package files, as `apt-cache policy` lists them.
#[derive(Debug, Default, PartialEq, Eq)]
struct InstalledSources {
    name: String,
    /// Those that offer the installed version.
    installed: Vec<String>,
    /// Those that offer its other versions.
    others: Vec<String>,
}

#[cfg(test)]
mod tests;
