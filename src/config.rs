//! The whole configuration file: `[engine]`, `[write_behind]`, `[storage]` and `[server]`, loaded from TOML
//! with `TERRARIUM_…` environment overrides. `assets/config/default.toml` lists every key with
//! its default.

use std::path::Path;

use serde::{Deserialize, Serialize};
use terrarium_engine::{ConfigError, EngineConfig, load_layered};
use terrarium_persistence::{StorageConfig, StorageConfigError, WriteBehindConfig};

pub use crate::server_config::{ServerConfig, parse_cidr};

/// Every setting, by section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The simulation.
    pub engine: EngineConfig,
    /// The write-behind queue between the tick and the store.
    pub write_behind: WriteBehindConfig,
    /// Where state is stored, and the caches, retries and breaker in front of it.
    pub storage: StorageConfig,
    /// The game server (the `terrarium-server` crate).
    pub server: ServerConfig,
}

impl Config {
    /// Environment prefix: `TERRARIUM_ENGINE__TICK_HZ=30` overrides `engine.tick_hz`.
    pub const ENV_PREFIX: &'static str = "TERRARIUM_";

    /// Variables under this prefix belong to the test suite (`TERRARIUM_TEST_PG_URL`, …), not
    /// to the configuration: [`Config::load`] and [`Config::from_env`] ignore them.
    pub const TEST_ENV_PREFIX: &'static str = "TERRARIUM_TEST_";

    /// Parses TOML text, applies `env` overrides and validates every section.
    ///
    /// # Errors
    /// The first problem found, naming its key.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let cfg: Self = load_layered(text, env, Self::ENV_PREFIX)?;
        cfg.engine.validate().map_err(|e| in_section("engine", e))?;
        cfg.server.validate()?;
        cfg.storage.validate().map_err(|e| match e {
            StorageConfigError::OutOfRange(e) => ConfigError::OutOfRange(e),
            StorageConfigError::Invalid { key, reason } => ConfigError::Invalid { key, reason },
            other => ConfigError::Invalid { key: "storage".into(), reason: other.to_string() },
        })?;
        cfg.write_behind.validate().map_err(|e| match e {
            terrarium_persistence::WriteBehindError::OutOfRange(e) => ConfigError::OutOfRange(e),
            other => ConfigError::Invalid { key: "write_behind".into(), reason: other.to_string() },
        })?;
        Ok(cfg)
    }

    /// Reads a file and applies the process environment.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when the file can't be read, otherwise as [`Config::from_toml_str`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Invalid { key: path.display().to_string(), reason: e.to_string() })?;
        Self::from_toml_str(&text, config_env(std::env::vars()))
    }

    /// The defaults with the process environment applied (no file).
    ///
    /// # Errors
    /// As [`Config::from_toml_str`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_toml_str("", config_env(std::env::vars()))
    }
}

/// Environment variables without the test suite's.
/// Names a key of `[section]` by its whole path (`engine.tick_hz`, not `tick_hz`).
fn in_section(section: &str, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::OutOfRange(e) => ConfigError::OutOfRange(e.under(section)),
        ConfigError::Invalid { key, reason } => {
            ConfigError::Invalid { key: format!("{section}.{key}"), reason }
        }
        other => other,
    }
}

fn config_env(vars: impl IntoIterator<Item = (String, String)>) -> impl Iterator<Item = (String, String)> {
    vars.into_iter().filter(|(k, _)| !k.starts_with(Config::TEST_ENV_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_file_equals_the_built_in_defaults() {
        let text = include_str!("../assets/config/default.toml");
        assert_eq!(Config::from_toml_str(text, []).unwrap(), Config::default());
    }

    #[test]
    fn env_override_by_section() {
        let cfg =
            Config::from_toml_str("", [("TERRARIUM_ENGINE__SEED".to_string(), "99".to_string())]).unwrap();
        assert_eq!(cfg.engine.seed, 99);
        let err = Config::from_toml_str("[engine.batching.positions]\nmax_items = 0\nmax_age_ms = 500\n", [])
            .unwrap_err();
        assert!(err.to_string().contains("batching.positions.max_items"), "{err}");
        let err =
            Config::from_toml_str("[write_behind]\nretry_min_ms = 10\nretry_max_ms = 5\n", []).unwrap_err();
        assert!(err.to_string().contains("write_behind.retry_max_ms"), "{err}");
        let cfg = Config::from_toml_str(
            "",
            [("TERRARIUM_WRITE_BEHIND__OUTBOX_PATH".to_string(), "/var/lib/terrarium/outbox".to_string())],
        )
        .unwrap();
        assert_eq!(cfg.write_behind.outbox_path.unwrap().to_str(), Some("/var/lib/terrarium/outbox"));
    }

    /// A bad value from the environment names its variable, not a TOML line the user never
    /// wrote; a bad file names the key; engine keys are named by their whole path; the message
    /// does not repeat its source.
    #[test]
    fn errors_name_the_variable_or_the_whole_key() {
        let env = [("TERRARIUM_ENGINE__TICK_HZ".to_string(), "abc".to_string())];
        let err = Config::from_toml_str("[engine]\nseed = 1\n", env).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Env { var, .. } if var == "TERRARIUM_ENGINE__TICK_HZ"),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"abc\""), "{err}");
        // The file is wrong on its own: its error, whatever the environment says.
        let env = [("TERRARIUM_ENGINE__SEED".to_string(), "2".to_string())];
        let err = Config::from_toml_str("[engine]\ntick_hz = \"fast\"\n", env).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        assert!(err.to_string().starts_with("config: line 2, column 11 (`tick_hz = \"fast\"`): "), "{err}");
        assert!(err.to_string().contains("invalid type"), "{err}");
        assert!(std::error::Error::source(&err).is_none(), "printed once, not again as a source");
        // A malformed line that may hold a secret is quoted without its value.
        let err =
            Config::from_toml_str("[storage.postgres]\nurl = postgres://u:hunter2@db/x\n", []).unwrap_err();
        assert!(err.to_string().contains("`url = …`") && !err.to_string().contains("hunter2"), "{err}");
        let err = Config::from_toml_str("[engine]\ntick_hz = 0\n", []).unwrap_err();
        assert!(err.to_string().contains("engine.tick_hz = 0"), "{err}");
    }

    #[test]
    fn server_section_from_file_and_environment() {
        let env = [("TERRARIUM_SERVER__API_KEY".to_string(), "k3y-from-the-environment".to_string())];
        let cfg = Config::from_toml_str("[server]\nport = 9000\nws_hz = 5\n", env).unwrap();
        assert_eq!((cfg.server.port, cfg.server.ws_hz), (9000, 5));
        assert_eq!(cfg.server.api_key, "k3y-from-the-environment");
        let err = Config::from_toml_str("[server]\nmax_connections = 10\nmax_connections_per_ip = 11\n", [])
            .unwrap_err();
        assert!(err.to_string().contains("server.max_connections_per_ip"), "{err}");
        let err = Config::from_toml_str("[server]\nbind = \"localhost\"\n", []).unwrap_err();
        assert!(err.to_string().contains("server.bind"), "{err}");
        let err = Config::from_toml_str("[server]\nws_cell_blocks = 0.0\n", []).unwrap_err();
        assert!(err.to_string().contains("server.ws_cell_blocks"), "{err}");
    }

    #[test]
    fn the_test_suites_variables_are_not_configuration() {
        let env = vec![
            ("TERRARIUM_TEST_PG_URL".to_string(), "postgres://x".to_string()),
            ("TERRARIUM_ENGINE__SEED".to_string(), "5".to_string()),
        ];
        assert!(Config::from_toml_str("", env.clone()).is_err(), "an unknown top-level key");
        assert_eq!(Config::from_toml_str("", config_env(env)).unwrap().engine.seed, 5);
    }

    #[test]
    fn storage_section_from_file_and_environment() {
        let env = [
            ("TERRARIUM_STORAGE__BACKEND".to_string(), "postgres".to_string()),
            ("TERRARIUM_STORAGE__POSTGRES__URL".to_string(), "postgres://u@127.0.0.1:5432/db".to_string()),
            ("TERRARIUM_STORAGE__REDIS__HOT_TTL_S".to_string(), "30".to_string()),
        ];
        let cfg = Config::from_toml_str("[storage.l1]\ncapacity = 10\n", env).unwrap();
        assert_eq!(cfg.storage.backend, terrarium_persistence::BackendKind::Postgres);
        assert_eq!(cfg.storage.postgres.url, "postgres://u@127.0.0.1:5432/db");
        assert_eq!((cfg.storage.redis.hot_ttl_s, cfg.storage.l1.capacity), (30, 10));
        let err = Config::from_toml_str("[storage.retry]\nmax_attempts = 0\n", []).unwrap_err();
        assert!(err.to_string().contains("storage.retry.max_attempts"), "{err}");
        let err = Config::from_toml_str("[storage.postgres]\nschema = \"x y\"\n", []).unwrap_err();
        assert!(err.to_string().contains("storage.postgres.schema"), "{err}");
        assert!(Config::from_toml_str("[storage]\nbakend = \"memory\"\n", []).is_err(), "unknown key");
    }
}
