//! Options of `postgres`.

use serde::{Deserialize, Serialize};

use super::{KindOptions, yes};

/// One end of the copy.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Endpoint {
    /// `postgresql://user@host:port/database` (no password in it).
    #[serde(default)]
    pub(crate) url: Option<String>,
    /// Socket directory, a path in the root.
    #[serde(default)]
    pub(crate) socket: Option<String>,
    /// Host name (TCP), when not by URL or socket.
    #[serde(default)]
    pub(crate) host: Option<String>,
    /// Port.
    #[serde(default)]
    pub(crate) port: Option<u16>,
    /// Database.
    #[serde(default)]
    pub(crate) database: Option<String>,
    /// User.
    #[serde(default)]
    pub(crate) user: Option<String>,
    /// File with the password, a path in the root.
    #[serde(default)]
    pub(crate) password_file: Option<String>,
    /// Environment variable with the password (in migrate's environment).
    #[serde(default)]
    pub(crate) password_env: Option<String>,
}

impl Endpoint {
    pub(crate) fn check(&self, which: &str) -> Result<(), String> {
        match (&self.url, &self.socket, &self.host) {
            (None, None, None) => {
                return Err(format!("option `{which}`: give `url`, `socket` or `host`"));
            }
            (Some(url), _, _) if url_has_password(url) => {
                return Err(format!(
                    "option `{which}`: the URL carries a password; put it in password_file or password_env"
                ));
            }
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(format!(
                    "option `{which}`: give either `url` or `socket`/`host`, not both"
                ));
            }
            _ => {}
        }
        if self.url.is_none() && self.database.is_none() {
            return Err(format!(
                "option `{which}`: `database` is required without a `url`"
            ));
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(format!(
                "option `{which}`: give password_file or password_env, not both"
            ));
        }
        Ok(())
    }
}

/// The dump format.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Format {
    /// `pg_dump -Fc`: one file.
    #[default]
    Custom,
    /// `pg_dump -Fd`: a directory, dumped and restored by parallel jobs.
    Directory,
}

impl Format {
    /// The name pg_dump knows it by.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Custom => "custom",
            Format::Directory => "directory",
        }
    }
}

/// Options of a `postgres` step.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PostgresOptions {
    /// Where to dump from: url, or socket/host, port, database, user;
    /// password_file or password_env.
    pub(crate) source: Endpoint,
    /// Where to restore into (the same keys as source).
    pub(crate) target: Endpoint,
    /// custom (default) or directory.
    #[serde(default)]
    pub(crate) format: Format,
    /// Parallel jobs for dump and restore (directory format).
    #[serde(default)]
    pub(crate) jobs: Option<u32>,
    /// Tables whose data is not copied (pg_dump patterns).
    #[serde(default)]
    pub(crate) exclude_table_data: Vec<String>,
    /// A command run after the restore, with the target in PGHOST, PGPORT,
    /// PGDATABASE, PGUSER and PGPASSFILE.
    #[serde(default)]
    pub(crate) schema_upgrade: Vec<String>,
    /// Compare the row counts of every table afterwards (default true).
    #[serde(default = "yes")]
    pub(crate) verify: bool,
}

impl KindOptions for PostgresOptions {
    fn check(&self) -> Result<(), String> {
        self.source.check("source")?;
        self.target.check("target")?;
        if self.jobs.is_some_and(|j| j > 1) && self.format != Format::Directory {
            return Err("option `jobs`: parallel dumps need format = \"directory\"".into());
        }
        if self.schema_upgrade.first().is_some_and(|p| p.is_empty()) {
            return Err("option `schema_upgrade` must name a program".into());
        }
        Ok(())
    }
}

impl PostgresOptions {
    /// The environment variables the step reads passwords from, for
    /// `migrate` to forward to the agent.
    pub(crate) fn password_envs(&self) -> Vec<String> {
        [&self.source, &self.target]
            .iter()
            .filter_map(|e| e.password_env.clone())
            .collect()
    }
}

/// Whether a connection URL carries a password (in its user info or as a
/// `password=` parameter).
pub(crate) fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        || url.contains("password=")
}

/// How `pg_upgradecluster` moves a cluster to the new major version.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ClusterMethod {
    /// `pg_upgrade` copying the data files: fast, needs free space about the
    /// size of the cluster; the old cluster stays usable.
    #[default]
    Upgrade,
    /// `pg_upgrade` with hard links: fastest, little space; the old cluster
    /// must not be started once the new one has.
    Link,
    /// Dump and restore: slowest, needs free space about the size of the
    /// cluster.
    Dump,
}

impl ClusterMethod {
    /// The name `pg_upgradecluster --method` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ClusterMethod::Upgrade => "upgrade",
            ClusterMethod::Link => "link",
            ClusterMethod::Dump => "dump",
        }
    }
}

/// Options of `postgresql-clusters`: Debian's PostgreSQL clusters
/// (postgresql-common) moved to the new major version.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClustersOptions {
    /// upgrade (pg_upgrade, copying; default), link (pg_upgrade with hard
    /// links) or dump (dump and restore).
    #[serde(default)]
    pub(crate) method: ClusterMethod,
    /// Drop each old cluster once the new one holds every table's rows
    /// (default: keep it, stopped, on another port).
    #[serde(default)]
    pub(crate) drop_old: bool,
    /// The major version to move to (default: the newest installed in the
    /// root when the step runs).
    #[serde(default)]
    pub(crate) version: Option<u32>,
}

impl KindOptions for ClustersOptions {}
