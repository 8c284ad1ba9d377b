//! The shipped example config must parse and mean exactly the built-in defaults,
//! so the documentation cannot drift from the code.

use berth::config::Config;

#[test]
fn shipped_example_equals_builtin_defaults() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/berth.toml")).unwrap();
    let example = Config::from_toml(&text).expect("config/berth.toml must parse");
    let builtin = Config::from_toml("").unwrap();
    assert_eq!(example.listen, builtin.listen);
    assert_eq!(example.data_dir, builtin.data_dir);
    assert_eq!(example.default_upstream, builtin.default_upstream);
    assert_eq!(example.manifest_memory_cache, builtin.manifest_memory_cache);
    assert_eq!(example.store, builtin.store);
    assert_eq!(example.platforms, builtin.platforms);
    assert_eq!(example.admin_token, builtin.admin_token);
    assert_eq!(example.server, builtin.server);
    assert_eq!(example.probe, builtin.probe);
    assert_eq!(
        example.upstream_patterns.patterns(),
        builtin.upstream_patterns.patterns()
    );
    let names = |c: &Config| c.upstreams.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&example), names(&builtin));
    for (name, upstream) in &builtin.upstreams {
        let documented = &example.upstreams[name];
        assert_eq!(documented.url, upstream.url, "{name}");
        assert_eq!(documented.transport, upstream.transport, "{name}");
        assert_eq!(documented.tag_ttl, upstream.tag_ttl, "{name}");
        assert_eq!(
            documented.official_images_prefix, upstream.official_images_prefix,
            "{name}"
        );
    }
}

#[test]
fn every_documented_key_is_a_real_key() {
    // Uncommenting every `# key = value` line must still parse: commented examples are real keys.
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/berth.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let pem = rcgen::generate_simple_self_signed(vec!["x".into()])
        .unwrap()
        .cert
        .pem();
    std::fs::write(&ca, pem).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "token\n").unwrap();
    let admin_token = dir.path().join("admin-token");
    std::fs::write(&admin_token, "0123456789abcdef0123\n").unwrap();
    let server = rcgen::generate_simple_self_signed(vec!["berth".into()]).unwrap();
    let (tls_crt, tls_key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&tls_crt, server.cert.pem()).unwrap();
    std::fs::write(&tls_key, server.key_pair.serialize_pem()).unwrap();
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        "node:$2y$05$abcdefghijklmnopqrstuu5yJ7Zr0ZsGpWTGvZcTVIH1L2lxFz4e2\n",
    )
    .unwrap();
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_key_line(rest) => rest.to_string(),
            _ => line.to_string(),
        })
        .map(|line| line.replace("/etc/berth/extra-ca.pem", ca.to_str().unwrap()))
        .map(|line| line.replace("/etc/berth/dockerhub-token", secret.to_str().unwrap()))
        .map(|line| line.replace("/etc/berth/admin-token", admin_token.to_str().unwrap()))
        .map(|line| line.replace("/etc/berth/tls/tls.crt", tls_crt.to_str().unwrap()))
        .map(|line| line.replace("/etc/berth/tls/tls.key", tls_key.to_str().unwrap()))
        .map(|line| line.replace("/etc/berth/tls/clients.crt", ca.to_str().unwrap()))
        .map(|line| line.replace("/etc/berth/users", users.to_str().unwrap()))
        .collect::<Vec<_>>()
        .join("\n");
    let config = Config::from_toml(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    let tls = config
        .server
        .tls
        .as_ref()
        .expect("[server] TLS keys documented");
    assert_eq!(tls.client_ca_file.as_deref(), Some(ca.as_path()));
    assert_eq!(config.server.users_file.as_deref(), Some(users.as_path()));
    assert_eq!(
        config.server.admin_listen,
        Some("127.0.0.1:5080".parse().unwrap())
    );
    assert_eq!(config.upstreams["docker.io"].transport.tcp_mss, Some(1360));
    assert!(config.upstreams["docker.io"].credentials.is_some());
    assert!(config.mirror_url.is_some());
    assert_eq!(config.store.max_size, Some(50 << 30));
    assert_eq!(config.upstream_patterns.patterns().len(), 2);
    assert!(
        config
            .admin_token
            .as_ref()
            .is_some_and(|t| t.matches("0123456789abcdef0123"))
    );
}

#[test]
fn the_documented_s3_store_table_parses() {
    // The S3 example is indented under `#   ` (it replaces [store], so it cannot be uncommented
    // in place); taken out alone it must be a valid config using every S3 key.
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/berth.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let pem = rcgen::generate_simple_self_signed(vec!["x".into()])
        .unwrap()
        .cert
        .pem();
    std::fs::write(&ca, pem).unwrap();
    let secret = dir.path().join("s3-secret");
    std::fs::write(&secret, "shhh\n").unwrap();
    // The contiguous `#   ` block that starts at `#   [store]` (other indented prose, such as
    // the inline admin_token example, is not part of it).
    let table: String = text
        .lines()
        .skip_while(|line| *line != "#   [store]")
        .take_while(|line| line.starts_with("#   "))
        .filter_map(|line| line.strip_prefix("#   "))
        .map(|line| line.replace("/etc/berth/s3-ca.pem", ca.to_str().unwrap()))
        .map(|line| line.replace("/etc/berth/s3-secret", secret.to_str().unwrap()))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(table.contains("kind = \"s3\""), "{table}");
    let config = Config::from_toml(&table).unwrap_or_else(|e| panic!("{e}\n{table}"));
    let berth::config::StoreKind::S3(s3) = config.store.kind else {
        panic!("{table}")
    };
    assert_eq!(s3.bucket, "berth-cache");
    assert_eq!(s3.prefix.as_deref(), Some("berth"));
    assert_eq!(s3.secret_access_key.as_deref(), Some("shhh"));
    assert!(s3.ca_file.is_some() && !s3.virtual_hosted_style);
}

/// `key = value` with a bare lowercase key: a commented-out setting, not prose.
fn is_key_line(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(key, _)| {
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    })
}
