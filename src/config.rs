//! The whole configuration file: `[engine]`, `[write_behind]` (and, with the storage issue,
//! `[storage]`), loaded from TOML with `TERRARIUM_…` environment overrides.
//! `assets/config/default.toml` lists every key with its default.

use std::path::Path;

use serde::{Deserialize, Serialize};
use terrarium_engine::{ConfigError, EngineConfig, load_layered};
use terrarium_persistence::WriteBehindConfig;

/// Every setting, by section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The simulation.
    pub engine: EngineConfig,
    /// The write-behind queue between the tick and the store.
    pub write_behind: WriteBehindConfig,
}

impl Config {
    /// Environment prefix: `TERRARIUM_ENGINE__TICK_HZ=30` overrides `engine.tick_hz`.
    pub const ENV_PREFIX: &'static str = "TERRARIUM_";

    /// Parses TOML text, applies `env` overrides and validates every section.
    ///
    /// # Errors
    /// The first problem found, naming its key.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let cfg: Self = load_layered(text, env, Self::ENV_PREFIX)?;
        cfg.engine.validate()?;
        cfg.write_behind.validate().map_err(|e| match e {
            terrarium_persistence::WriteBehindError::Config { key, reason } => {
                ConfigError::Invalid { key: format!("write_behind.{key}"), reason }
            }
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
        Self::from_toml_str(&text, std::env::vars())
    }

    /// The defaults with the process environment applied (no file).
    ///
    /// # Errors
    /// As [`Config::from_toml_str`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_toml_str("", std::env::vars())
    }
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
}
