//! The `[store]` table resolved: disk or S3, size limit, eviction interval.

use std::path::PathBuf;

use url::Url;

use super::limits::{MAX_HISTORY, MAX_INTERVAL, check_duration};
use super::raw::{RawStore, RawStoreKind};
use super::resolve::{check_pem_certificates, parse_http_url, read_secret_file};
use super::size::RawSize;
use super::{
    ConfigError, DEFAULT_EVICT_INTERVAL, DEFAULT_LOCAL_MAX_SIZE, DEFAULT_S3_REGION, S3Config,
    StoreConfig, StoreKind,
};

impl RawStore {
    pub(super) fn resolve(self) -> Result<StoreConfig, ConfigError> {
        let max_size = self
            .max_size
            .clone()
            .map(|size| size.bytes())
            .transpose()
            .map_err(|message| ConfigError::new(key("max_size"), message))?;
        if max_size == Some(0) {
            return Err(ConfigError::new(
                key("max_size"),
                "0 would evict everything; remove the key for an unbounded cache",
            ));
        }
        let evict_interval = self.evict_interval.unwrap_or(DEFAULT_EVICT_INTERVAL);
        check_duration(&key("evict_interval"), evict_interval, MAX_INTERVAL)?;
        let pin_history = self.pin_history;
        if let Some(window) = pin_history {
            check_duration(&key("pin_history"), window, MAX_HISTORY)?;
        }
        let kind = match self.kind.unwrap_or(RawStoreKind::Disk) {
            RawStoreKind::Disk => {
                self.refuse_s3_keys()?;
                StoreKind::Disk
            }
            RawStoreKind::S3 => StoreKind::S3(Box::new(self.resolve_s3()?)),
        };
        Ok(StoreConfig {
            kind,
            max_size,
            evict_interval,
            pin_history,
        })
    }

    /// A disk store has no use for S3 keys: one set means `kind = "s3"` was forgotten.
    fn refuse_s3_keys(&self) -> Result<(), ConfigError> {
        for (field, set) in [
            ("bucket", self.bucket.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("region", self.region.is_some()),
            ("prefix", self.prefix.is_some()),
            ("virtual_hosted_style", self.virtual_hosted_style.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
            (
                "secret_access_key_file",
                self.secret_access_key_file.is_some(),
            ),
            ("allow_http", self.allow_http.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("local_max_size", self.local_max_size.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(
                    key(field),
                    "is an S3 setting; add kind = \"s3\" to [store] or remove it",
                ));
            }
        }
        Ok(())
    }

    fn resolve_s3(self) -> Result<S3Config, ConfigError> {
        let bucket = s3_bucket(self.bucket)?;
        let allow_http = self.allow_http.unwrap_or(false);
        let endpoint = self
            .endpoint
            .as_deref()
            .map(|text| s3_endpoint(text, allow_http))
            .transpose()?;
        let region = self.region.unwrap_or_else(|| DEFAULT_S3_REGION.to_string());
        if region.trim().is_empty() {
            return Err(ConfigError::new(key("region"), "must not be empty"));
        }
        let prefix = s3_prefix(self.prefix.as_deref())?;
        let secret_access_key =
            s3_secret_access_key(self.secret_access_key, self.secret_access_key_file)?;
        check_s3_key_pair(self.access_key_id.as_deref(), secret_access_key.as_deref())?;
        if let Some(path) = &self.ca_file {
            check_pem_certificates(&key("ca_file"), path)?;
        }
        let local_max_size = local_max_size(self.local_max_size.as_ref())?;
        Ok(S3Config {
            local_max_size,
            bucket,
            virtual_hosted_style: self.virtual_hosted_style.unwrap_or(endpoint.is_none()),
            endpoint,
            region,
            prefix,
            access_key_id: self.access_key_id,
            secret_access_key,
            allow_http,
            ca_file: self.ca_file,
        })
    }
}

/// The key an error names: `store.<field>`.
fn key(field: &str) -> String {
    format!("store.{field}")
}

/// Required, and a valid S3 bucket name.
fn s3_bucket(bucket: Option<String>) -> Result<String, ConfigError> {
    let bucket = bucket.filter(|b| !b.trim().is_empty()).ok_or_else(|| {
        ConfigError::new(
            key("bucket"),
            "missing; kind = \"s3\" needs a bucket, e.g. bucket = \"berth-cache\"",
        )
    })?;
    let valid_bucket = bucket.len() >= 3
        && bucket.len() <= 63
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid_bucket {
        return Err(ConfigError::new(
            key("bucket"),
            format!("`{bucket}` is not an S3 bucket name (3-63 of a-z, 0-9, '-', '.')"),
        ));
    }
    Ok(bucket)
}

/// An http(s) URL; plain http only with `allow_http = true`.
fn s3_endpoint(text: &str, allow_http: bool) -> Result<Url, ConfigError> {
    let url = parse_http_url(&key("endpoint"), text)?;
    if url.scheme() == "http" && !allow_http {
        return Err(ConfigError::new(
            key("endpoint"),
            format!("`{text}` is plain http; set allow_http = true to allow it"),
        ));
    }
    Ok(url)
}

/// Without its outer slashes; `None` when nothing is left. No empty, `.` or `..` segment.
fn s3_prefix(prefix: Option<&str>) -> Result<Option<String>, ConfigError> {
    match prefix.map(|p| p.trim_matches('/')) {
        None | Some("") => Ok(None),
        Some(p) => {
            if p.split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                return Err(ConfigError::new(
                    key("prefix"),
                    format!("`{p}` has an empty, `.` or `..` path segment"),
                ));
            }
            Ok(Some(p.to_string()))
        }
    }
}

/// Inline or from a file, not both.
fn s3_secret_access_key(
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<String>, ConfigError> {
    match (inline, file) {
        (Some(s), None) => Ok(Some(s)),
        (None, Some(path)) => read_secret_file(&key("secret_access_key_file"), &path).map(Some),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ConfigError::new(
            key("secret_access_key"),
            "set only one of secret_access_key, secret_access_key_file",
        )),
    }
}

/// Both halves of the static credentials, or neither.
fn check_s3_key_pair(
    access_key_id: Option<&str>,
    secret_access_key: Option<&str>,
) -> Result<(), ConfigError> {
    match (access_key_id, secret_access_key) {
        (Some(_), None) => Err(ConfigError::new(
            key("secret_access_key"),
            "access_key_id is set but no secret_access_key (or secret_access_key_file)",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            key("access_key_id"),
            "a secret access key is set but no access_key_id",
        )),
        _ => Ok(()),
    }
}

/// The local hot tier's size: the default when unset, `None` (off) for "0".
fn local_max_size(size: Option<&RawSize>) -> Result<Option<u64>, ConfigError> {
    match size {
        None => Ok(Some(DEFAULT_LOCAL_MAX_SIZE)),
        Some(size) => {
            let bytes = size
                .bytes()
                .map_err(|message| ConfigError::new(key("local_max_size"), message))?;
            Ok(Some(bytes).filter(|&n| n > 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::resolve::tests::assert_errors_name_the_key;
    use crate::config::{Config, StoreConfig, StoreKind};

    #[test]
    fn s3_store_settings() {
        let text = r#"
            [store]
            kind = "s3"
            bucket = "berth-cache"
            endpoint = "http://127.0.0.1:9000"
            allow_http = true
            prefix = "/mirrors/berth/"
            access_key_id = "AK"
            secret_access_key = "SK"
        "#;
        let config = Config::from_toml(text).unwrap();
        let StoreKind::S3(s3) = &config.store.kind else {
            panic!("expected s3: {:?}", config.store)
        };
        assert_eq!(s3.bucket, "berth-cache");
        assert_eq!(s3.region, "us-east-1");
        assert_eq!(s3.prefix.as_deref(), Some("mirrors/berth"));
        assert!(
            !s3.virtual_hosted_style,
            "a custom endpoint means path-style"
        );
        assert_eq!(s3.secret_access_key.as_deref(), Some("SK"));
        assert!(
            !format!("{s3:?}").contains("SK"),
            "the secret is not logged"
        );

        let aws = Config::from_toml("[store]\nkind = \"s3\"\nbucket = \"b-1\"").unwrap();
        let StoreKind::S3(aws) = aws.store.kind else {
            panic!()
        };
        assert!(aws.virtual_hosted_style && aws.endpoint.is_none() && !aws.allow_http);
        assert_eq!(aws.access_key_id, None, "from the AWS_* environment");
    }

    #[test]
    fn store_errors_name_the_key() {
        let cases = [
            ("[store]\nkind = \"tape\"", "store.kind"),
            ("[store]\nkind = \"s3\"", "store.bucket"),
            ("[store]\nbucket = \"b-1\"", "store.bucket"),
            ("[store]\nmax_size = \"lots\"", "store.max_size"),
            ("[store]\nsize = \"1GiB\"", "size"),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b-1\"\nendpoint = \"http://127.0.0.1:9000\"",
                "store.endpoint",
            ),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b-1\"\nendpoint = \"127.0.0.1:9000\"",
                "store.endpoint",
            ),
            (
                "[store]\nkind = \"s3\"\nbucket = \"Bad_Bucket\"",
                "store.bucket",
            ),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b-1\"\naccess_key_id = \"AK\"",
                "store.secret_access_key",
            ),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b-1\"\nprefix = \"a//b\"",
                "store.prefix",
            ),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b-1\"\nca_file = \"/nonexistent.pem\"",
                "store.ca_file",
            ),
        ];
        assert_errors_name_the_key(&cases);
    }

    #[test]
    fn store_table() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.store, StoreConfig::default());
        assert_eq!(config.store.kind, StoreKind::Disk);
        let config = Config::from_toml("[store]\nmax_size = \"50GiB\"").unwrap();
        assert_eq!(config.store.max_size, Some(50 << 30));
        let config = Config::from_toml(
            "[store]\nkind = \"disk\"\nmax_size = \"500MiB\"\nevict_interval = \"10s\"",
        )
        .unwrap();
        assert_eq!(config.store.max_size, Some(500 << 20));
        assert_eq!(config.store.evict_interval, Duration::from_secs(10));
        let plain = Config::from_toml("[store]\nmax_size = 4096").unwrap();
        assert_eq!(plain.store.max_size, Some(4096));
    }

    #[test]
    fn hot_tier_size() {
        let s3 = |extra: &str| {
            let config = Config::from_toml(&format!(
                "[store]\nkind = \"s3\"\nbucket = \"b-1\"\n{extra}"
            ))
            .unwrap();
            let StoreKind::S3(s3) = config.store.kind else {
                panic!("expected s3")
            };
            s3.local_max_size
        };
        assert_eq!(s3(""), Some(crate::config::DEFAULT_LOCAL_MAX_SIZE));
        assert_eq!(s3("local_max_size = \"2GiB\""), Some(2 << 30));
        assert_eq!(s3("local_max_size = \"0\""), None, "\"0\" turns it off");
        assert_errors_name_the_key(&[
            ("[store]\nlocal_max_size = \"1GiB\"", "store.local_max_size"),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b-1\"\nlocal_max_size = \"lots\"",
                "store.local_max_size",
            ),
        ]);
    }
}
