//! `postgres`: dumps a database from a source server and restores it into a
//! target, with the PostgreSQL client tools of the migration image.
//!
//! - Connections by URL (`postgresql://user@host:port/db`) or by socket
//!   directory (a path in the root), port, database and user.
//! - Passwords from a file in the root or an environment variable named in the
//!   plan (forwarded by `migrate` from its own environment); they reach the
//!   tools only through a `PGPASSFILE` on the agent's tmpfs, never a command
//!   line, and are masked in every event.
//! - Custom format, or directory format with `jobs` for parallel dump and
//!   restore; `exclude_table_data` patterns; `pg_restore --no-owner
//!   --no-privileges`; the target database is created if missing; an optional
//!   schema-upgrade command runs after the restore; then the row count of
//!   every table is compared (tables whose data was excluded must exist and be
//!   empty).
//! - The dump is kept under `var/lib/migrate/backup/<migration>/<step>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{StepContext, StepKind};
use crate::core::cmd::CommandExt;
use crate::core::event::StepStatus;
use crate::core::kinds::postgres::{Endpoint, Format, PostgresOptions};

/// Where the agent writes password files (its own tmpfs, in the container).
const SECRETS_DIR: &str = crate::agent::secrets::PRIVATE_DIR;

impl Endpoint {
    /// The database name.
    fn database(&self) -> Result<String> {
        if let Some(db) = &self.database {
            return Ok(db.clone());
        }
        let url = self.url.as_deref().unwrap_or_default();
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let db = rest.split_once('/').map(|(_, d)| d).unwrap_or("");
        let db = db.split('?').next().unwrap_or("");
        if db.is_empty() {
            bail!("the URL {url:?} names no database");
        }
        Ok(db.to_string())
    }

    /// The connection for `database` as arguments and environment; the
    /// password goes into `passfile`.
    fn connection(
        &self,
        ctx: &StepContext<'_>,
        database: &str,
        passfile: Option<&Path>,
    ) -> Result<(Vec<String>, BTreeMap<String, String>)> {
        let mut env = BTreeMap::new();
        let mut args = Vec::new();
        if let Some(url) = &self.url {
            let own = self.database()?;
            // The same server, another database (the maintenance database).
            let url = if database == own {
                url.clone()
            } else {
                replace_database(url, database)
            };
            args.push(format!("--dbname={url}"));
        } else {
            let host = match (&self.socket, &self.host) {
                (Some(dir), _) => ctx
                    .root()
                    .join(dir.trim_start_matches('/'))
                    .display()
                    .to_string(),
                (None, Some(h)) => h.clone(),
                (None, None) => unreachable!("validated"),
            };
            env.insert("PGHOST".into(), host);
            env.insert("PGDATABASE".into(), database.to_string());
        }
        if let Some(port) = self.port {
            env.insert("PGPORT".into(), port.to_string());
        }
        if let Some(user) = &self.user {
            env.insert("PGUSER".into(), user.clone());
        }
        if let Some(p) = passfile {
            env.insert("PGPASSFILE".into(), p.display().to_string());
        }
        Ok((args, env))
    }

    /// The password, from its file in the root or its environment variable.
    fn password(&self, ctx: &StepContext<'_>) -> Result<Option<String>> {
        if let Some(file) = &self.password_file {
            let path = ctx.path(file)?;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading the password file {file}"))?;
            return Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()));
        }
        if let Some(var) = &self.password_env {
            return match crate::agent::secrets::get(var) {
                Some(p) => Ok(Some(p.to_string())),
                None => {
                    bail!("the environment variable {var} (password_env) is not set for migrate")
                }
            };
        }
        Ok(None)
    }
}

/// libpq environment variables (`PGHOST`, `PGPORT`, `PGUSER`,
/// `PGDATABASE`) for a `postgresql://user@host:port/database?host=...` URL.
fn url_env(url: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, database) = main.split_once('/').unwrap_or((main, ""));
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.split(':').next().unwrap_or(u)), h),
        None => (None, authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
        _ => (hostport, None),
    };
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            env.insert(k.to_string(), percent_decode(v));
        }
    };
    put("PGHOST", host);
    put("PGPORT", port.unwrap_or(""));
    put("PGUSER", user.unwrap_or(""));
    put("PGDATABASE", database);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("host", v)) => put("PGHOST", v),
            Some(("port", v)) => put("PGPORT", v),
            Some(("user", v)) => put("PGUSER", v),
            Some(("dbname", v)) => put("PGDATABASE", v),
            _ => {}
        }
    }
    env
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn replace_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgresql", url));
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let query = tail
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{scheme}://{authority}/{database}{query}")
}

/// A `postgres` step.
pub(crate) struct PostgresStep {
    opts: PostgresOptions,
}

impl PostgresStep {
    /// From the step's options.
    pub(crate) fn new(opts: PostgresOptions) -> Self {
        Self { opts }
    }

    fn tool(
        &self,
        ctx: &StepContext<'_>,
        program: &str,
        end: &Endpoint,
        database: &str,
        passfile: Option<&Path>,
    ) -> Result<Command> {
        let (args, env) = end.connection(ctx, database, passfile)?;
        let mut cmd = Command::new(program);
        cmd.args(args).envs(env);
        Ok(cmd)
    }

    /// `psql -tA -c SQL` against `database` of `end`; the output's lines.
    fn query(
        &self,
        ctx: &StepContext<'_>,
        end: &Endpoint,
        database: &str,
        passfile: Option<&Path>,
        sql: &str,
    ) -> Result<Vec<String>> {
        let out = self
            .tool(ctx, "psql", end, database, passfile)?
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .run_get_string()?;
        Ok(out.lines().map(str::to_string).collect())
    }
}

/// Writes a password file readable only by the agent.
fn passfile(
    ctx: &StepContext<'_>,
    name: &str,
    password: Option<String>,
) -> Result<Option<PathBuf>> {
    let Some(password) = password else {
        return Ok(None);
    };
    ctx.run.sink.add_secret(&password);
    std::fs::create_dir_all(SECRETS_DIR).with_context(|| format!("creating {SECRETS_DIR}"))?;
    let path = Path::new(SECRETS_DIR).join(format!("{}-{name}.pgpass", ctx.step.id));
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    let mut opts = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("*:*:*:*:{escaped}\n").as_bytes())?;
    Ok(Some(path))
}

/// Whether `table` (`schema.name`) matches a pg_dump table pattern (`*`,
/// `?`; without a schema the pattern matches the name in any schema).
pub(crate) fn table_matches(pattern: &str, table: &str) -> bool {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    match pattern.split_once('.') {
        Some((ps, pn)) => glob_matches(ps, schema) && glob_matches(pn, name),
        None => glob_matches(pattern, name),
    }
}

/// Whether `text` matches `pattern`, whose `*` matches any run of
/// characters and `?` any one.
pub(crate) fn glob_matches(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

/// Every table of a database outside the system schemas, quoted.
pub(crate) const TABLES_SQL: &str = "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables \
     WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1";

impl StepKind for PostgresStep {
    fn tools(&self) -> Vec<String> {
        ["pg_dump", "pg_restore", "psql"].map(String::from).to_vec()
    }

    fn describe(&self) -> String {
        format!(
            "Copy PostgreSQL database {} to {} ({} format{})",
            self.opts.source.database().unwrap_or_default(),
            self.opts.target.database().unwrap_or_default(),
            self.opts.format.name(),
            self.opts
                .jobs
                .map(|j| format!(", {j} jobs"))
                .unwrap_or_default()
        )
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let (src, dst) = (&self.opts.source, &self.opts.target);
        let (src_db, dst_db) = (src.database()?, dst.database()?);
        let src_pass = passfile(ctx, "source", src.password(ctx)?)?;
        let dst_pass = passfile(ctx, "target", dst.password(ctx)?)?;
        let (src_pass, dst_pass) = (src_pass.as_deref(), dst_pass.as_deref());

        // The dump goes to the backup directory and stays until cleanup.
        let dir = ctx.backup_dir()?;
        let directory = self.opts.format == Format::Directory;
        let dump = dir.join(if directory { "dump.dir" } else { "dump.custom" });
        if dump.exists() {
            // From an interrupted attempt: dump again.
            if dump.is_dir() {
                std::fs::remove_dir_all(&dump)?;
            } else {
                std::fs::remove_file(&dump)?;
            }
        }

        let mut pg_dump = self.tool(ctx, "pg_dump", src, &src_db, src_pass)?;
        pg_dump.args(["--format", if directory { "directory" } else { "custom" }]);
        if let Some(j) = self.opts.jobs.filter(|_| directory) {
            pg_dump.arg(format!("--jobs={j}"));
        }
        for pattern in &self.opts.exclude_table_data {
            pg_dump.arg(format!("--exclude-table-data={pattern}"));
        }
        pg_dump.arg(format!("--file={}", dump.display()));
        ctx.run(&mut pg_dump)
            .context("dumping the source database")?;
        crate::core::fsutil::restrict(&dump)?;
        ctx.say(format!(
            "dumped {src_db} to /{}",
            dump.strip_prefix(&ctx.run.pristine)
                .unwrap_or(&dump)
                .display()
        ));

        let exists = self.query(
            ctx,
            dst,
            "postgres",
            dst_pass,
            &format!(
                "SELECT 1 FROM pg_database WHERE datname = '{}'",
                dst_db.replace('\'', "''")
            ),
        )?;
        if exists.iter().all(|l| l.trim().is_empty()) {
            let name = format!("\"{}\"", dst_db.replace('"', "\"\""));
            self.query(
                ctx,
                dst,
                "postgres",
                dst_pass,
                &format!("CREATE DATABASE {name}"),
            )
            .context("creating the target database")?;
            ctx.say(format!("created database {dst_db}"));
        }

        let mut pg_restore = self.tool(ctx, "pg_restore", dst, &dst_db, dst_pass)?;
        pg_restore.args(["--no-owner", "--no-privileges", "--exit-on-error"]);
        if let Some(j) = self.opts.jobs.filter(|_| directory) {
            pg_restore.arg(format!("--jobs={j}"));
        }
        if dst.url.is_none() {
            pg_restore.arg(format!("--dbname={dst_db}"));
        }
        pg_restore.arg(&dump);
        ctx.run(&mut pg_restore)
            .context("restoring into the target database")?;
        ctx.say(format!("restored into {dst_db}"));

        if let Some((program, args)) = self.opts.schema_upgrade.split_first() {
            let (_, mut env) = dst.connection(ctx, &dst_db, dst_pass)?;
            if let Some(url) = &dst.url {
                // The command gets the target as libpq environment variables.
                env.extend(url_env(url));
                env.insert("PGDATABASE".into(), dst_db.clone());
            }
            let mut cmd = Command::new(program);
            cmd.args(args).envs(env).env("MIGRATE_ROOT", ctx.root());
            ctx.run(&mut cmd).context("running the schema upgrade")?;
        }

        if self.opts.verify {
            self.verify_counts(ctx, &src_db, &dst_db, src_pass, dst_pass)?;
        }
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        ctx.say(format!("would: {}", self.describe()));
        if !self.opts.exclude_table_data.is_empty() {
            ctx.say(format!(
                "would leave out the data of tables matching {}",
                self.opts.exclude_table_data.join(", ")
            ));
        }
        Ok(())
    }
}

impl PostgresStep {
    /// Row counts equal for every table; tables whose data was excluded
    /// present and empty.
    fn verify_counts(
        &self,
        ctx: &StepContext<'_>,
        src_db: &str,
        dst_db: &str,
        src_pass: Option<&Path>,
        dst_pass: Option<&Path>,
    ) -> Result<()> {
        let (src, dst) = (&self.opts.source, &self.opts.target);
        let tables = self.query(ctx, src, src_db, src_pass, TABLES_SQL)?;
        let target_tables = self.query(ctx, dst, dst_db, dst_pass, TABLES_SQL)?;
        let mut problems = Vec::new();
        for table in tables.iter().filter(|t| !t.is_empty()) {
            let bare = table.replace('"', "");
            if !target_tables.contains(table) {
                problems.push(format!("{bare} is missing"));
                continue;
            }
            let count = |end: &Endpoint, db: &str, pass| -> Result<u64> {
                let rows =
                    self.query(ctx, end, db, pass, &format!("SELECT count(*) FROM {table}"))?;
                rows.first()
                    .and_then(|r| r.trim().parse().ok())
                    .with_context(|| format!("counting the rows of {bare}"))
            };
            let excluded = self
                .opts
                .exclude_table_data
                .iter()
                .any(|p| table_matches(p, &bare));
            let want = if excluded {
                0
            } else {
                count(src, src_db, src_pass)?
            };
            let got = count(dst, dst_db, dst_pass)?;
            if got == want {
                ctx.say(format!(
                    "{bare}: {got} rows{}",
                    if excluded { " (data excluded)" } else { "" }
                ));
            } else {
                problems.push(format!("{bare} has {got} rows, expected {want}"));
            }
        }
        if !problems.is_empty() {
            bail!("the restored database differs: {}", problems.join("; "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::kinds::postgres::url_has_password;

    #[test]
    fn table_patterns_follow_pg_dump() {
        assert!(table_matches("patch_*", "public.patch_store"));
        assert!(table_matches("public.patch_*", "public.patch_store"));
        assert!(!table_matches("other.patch_*", "public.patch_store"));
        assert!(!table_matches("patch_*", "public.machines"));
        assert!(table_matches("t?", "public.t1"));
    }

    #[test]
    fn urls_are_checked_and_rewritten() {
        assert!(url_has_password("postgresql://app:secret@db:5432/app"));
        assert!(url_has_password("postgresql://db/app?password=secret"));
        assert!(!url_has_password("postgresql://app@db:5432/app"));
        assert_eq!(
            replace_database("postgresql://app@db:5432/app?sslmode=require", "postgres"),
            "postgresql://app@db:5432/postgres?sslmode=require"
        );
        let e = Endpoint {
            url: Some("postgresql://app@db/appdb?x=1".into()),
            socket: None,
            host: None,
            port: None,
            database: None,
            user: None,
            password_file: None,
            password_env: None,
        };
        assert_eq!(e.database().unwrap(), "appdb");
    }

    #[test]
    fn urls_become_libpq_environment_variables() {
        let env = url_env("postgresql://app@127.0.0.1:5433/livepatch?sslmode=disable");
        assert_eq!(env["PGHOST"], "127.0.0.1");
        assert_eq!(env["PGPORT"], "5433");
        assert_eq!(env["PGUSER"], "app");
        assert_eq!(env["PGDATABASE"], "livepatch");
        let env = url_env("postgresql:///app?host=%2Fvar%2Frun%2Fpostgresql");
        assert_eq!(env["PGHOST"], "/var/run/postgresql");
        assert!(!env.contains_key("PGUSER"));
    }

    #[test]
    fn bad_endpoints_are_refused() {
        let end = |url: Option<&str>, socket: Option<&str>, db: Option<&str>| Endpoint {
            url: url.map(str::to_string),
            socket: socket.map(str::to_string),
            host: None,
            port: None,
            database: db.map(str::to_string),
            user: None,
            password_file: None,
            password_env: None,
        };
        assert!(end(None, None, Some("x")).check("source").is_err());
        assert!(
            end(Some("postgresql://u:p@h/d"), None, None)
                .check("source")
                .is_err()
        );
        assert!(
            end(None, Some("/run/pg"), None).check("source").is_err(),
            "needs a database"
        );
        assert!(
            end(None, Some("/run/pg"), Some("app"))
                .check("source")
                .is_ok()
        );
    }
}
