//! Writers for the node-side config that points containerd at berth.
//!
//! - [`targets`]: which registries get an entry, and the validated mirror URL they point at.
//! - [`k3s`]: a K3s/RKE2 `registries.yaml` (the schema of rancher/wharfie `pkg/registries`).
//! - [`containerd`]: a containerd `config_path` tree of `<registry>/hosts.toml` files.
//!
//! Everything here is pure: a typed model is built from the options, then rendered to text
//! by hand so the output carries comments and a fixed key order. The same model types
//! deserialize the rendered text, which is how the tests prove the text means what we built.
//! File I/O lives in `cli::generate`.

pub mod containerd;
pub mod k3s;
pub mod targets;

pub use targets::{MirrorTls, MirrorUrl, Routing, Selection, Target};

/// Why a generator refused its options; each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(
        "mirror URL `{text}` has no scheme, and K3s/containerd would then use https; \
         write http://{text} (plain HTTP) or https://{text}"
    )]
    MirrorUrlWithoutScheme { text: String },
    #[error("mirror URL `{text}` {problem}")]
    BadMirrorUrl { text: String, problem: String },
    #[error(
        "no mirror URL: pass --mirror-url http://<mirror-host>:5000 or set `mirror_url` in the \
         config file given with --config"
    )]
    NoMirrorUrl,
    #[error("`{name}` is not a configured upstream; configured: {}", .configured.join(", "))]
    UnknownRegistry {
        name: String,
        configured: Vec<String>,
    },
    #[error("`*` is not a registry name; use --catch-all for a \"*\" entry")]
    CatchAllAsRegistry,
    #[error("rewrite `{text}`: {problem}")]
    BadRewrite { text: String, problem: String },
    #[error(
        "--rewrite names `{registry}`, which is not among the registries written ({}); \
         add --registry {registry} (or --catch-all for `*`)",
        .written.join(", ")
    )]
    RewriteForUnwrittenRegistry {
        registry: String,
        written: Vec<String>,
    },
    #[error("{0}")]
    InconsistentOptions(String),
}

/// Writes `text` as a double-quoted string that is valid YAML and valid TOML.
///
/// JSON's escapes (`\"`, `\\`, `\n`, `\t`, `\u00XX`, ...) are a subset of both formats'
/// double-quoted escapes, so serde_json does the escaping for us.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serializes")
}

/// `["a", "b"]` with each item [`quoted`]: a flow list in YAML, an array in TOML.
fn quoted_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.into_iter().map(quoted).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_escapes_for_yaml_and_toml() {
        assert_eq!(quoted("http://a:5000"), r#""http://a:5000""#);
        assert_eq!(quoted(r#"^a\d"b$"#), r#""^a\\d\"b$""#);
        assert_eq!(quoted_list(["pull", "resolve"]), r#"["pull", "resolve"]"#);
    }
}
